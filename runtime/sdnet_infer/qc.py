"""Quality control of every prediction: anatomical validity and SDNet's own out-of-distribution scores.

Per slice of a predicted volume (the slices the model saw; a 4-D cine frame by frame):

``anatomy``
    "valid", "invalid" or "empty", by the 7 thesis checks (``sdnet_infer.validity.SEVEN_CHECKS``)
    on the labels as written (the input's own grid and in-plane voxel size); ``failed`` names
    the checks that failed. A slice without foreground is "empty", not a failure of anatomy.
``heart_area_mm2``
    The area of LV and MYO in the slice, in mm².
``reconstruction_error``
    The mean absolute error between the preprocessed slice (intensities in [-1, 1]) and SDNet's
    reconstruction of it from its own factors, ``decode(anatomy, z mean)``: the decoder was
    trained to reproduce training images, so an image unlike them comes back different.
``z_distance``
    The Mahalanobis distance of the slice's modality factor (z mean) from the distribution of
    z over the training slices (their mean and covariance, with a small ridge).

Slices that hold no image (constant after preprocessing) are listed with ``image`` false and
left out of the out-of-distribution statistics.

Per volume (``volume_statistics``): the median reconstruction error and z distance over its
slices, the largest LV+MYO area of a slice, and the share of the slices with foreground that
are invalid; and, from the input image itself, the blood-pool contrast
(``blood_pool_contrast``): how much brighter the predicted LV is than the predicted MYO. The volume's status is "review" when any of them is on the wrong side of its
threshold, and "ok" otherwise; ``reasons`` lists each check that failed with its value and
threshold. A volume in which no slice holds LV or MYO is always for review. So is a volume whose header
looks as if it has lost its voxel size (``header_review``; ``geometry.lost_voxel_size``), or
whose axes run near a diagonal between two world axes (``geometry.orientation_boundary``).

The thresholds are calibrated on the ED and ES frames of a trained run's validation patients
(``calibrate``; the reading of a run's data is ``sdnet_tf.apps.quality``), each from the values seen
there (``RULES``):

================================  ===================================================
reconstruction error (median)     review above 1.5 x the largest validation volume's
z distance (median)               review above 1.5 x the largest validation volume's
share of invalid slices           review above the largest validation volume's + 0.25
largest LV+MYO slice area (mm²)   review below 0.25 x the smallest validation volume's
blood-pool contrast               review below 0.5 x the smallest validation volume's
================================  ===================================================

The calibration (thresholds, what they were made from, the training z statistics) is stored in
an export's sidecar as ``qc`` and in a run directory as ``qc-calibration.json``. Without one
(an export made before quality control, or a run whose data are not available) a volume gets
the validity of its slices and is for review only when no LV or MYO is predicted at all.

numpy and scipy only.
"""

import math
from typing import NamedTuple

import numpy as np

from sdnet_infer.labels import BACKGROUND, LV, MYO
from sdnet_infer.validity import SEVEN_CHECKS, check_slice

QC_FILE = "qc.json"
FORMAT = "sdnet-qc"
VERSION = 1
STATUSES = ("ok", "review")
# added to the diagonal of the training z covariance, relative to its mean variance, so the
# Mahalanobis distance stays defined when a z dimension barely varies over the training slices
RIDGE = 1e-3


class Rule(NamedTuple):
    """How a volume statistic's threshold is made from its values on the validation volumes."""

    review: str
    """"above" or "below": the side of the threshold a volume is for review on."""
    factor: float
    """The threshold is ``factor * base + offset``; the base is the largest validation value
    for "above", the smallest for "below"."""
    offset: float
    text: str


RULES = {
    "reconstruction_error": Rule("above", 1.5, 0.0, "review above 1.5 x the largest validation volume's median "
                                                    "reconstruction error (mean absolute error, [-1, 1] intensities)"),
    "z_distance": Rule("above", 1.5, 0.0, "review above 1.5 x the largest validation volume's median Mahalanobis "
                                          "distance of z from the training slices' z distribution"),
    "invalid_share": Rule("above", 1.0, 0.25, "review above the largest validation volume's share of anatomically "
                                              "invalid slices (of those with foreground) + 0.25"),
    "heart_area_mm2": Rule("below", 0.25, 0.0, "review below 0.25 x the smallest validation volume's largest LV+MYO "
                                               "area of a slice (mm^2); no LV or MYO at all is always for review"),
    "blood_pool_contrast": Rule("below", 0.5, 0.0, "review below 0.5 x the smallest validation volume's blood-pool "
                                                   "contrast (median LV minus median MYO intensity, over the 5-95th "
                                                   "percentile range of the volume)"),
}
OOD_CHECKS = ("reconstruction_error", "z_distance")


def _round(value, digits=6):
    """``value`` as a float rounded to ``digits`` significant digits; None for None or NaN."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{float(value):.{digits}g}")


def reconstruction_errors(images, reconstructions):
    """Per-slice mean absolute error.

    Args:
        images: (N, H, W) or (N, H, W, 1) preprocessed slices, intensities in [-1, 1].
        reconstructions: the decoder's images of the same shape (a trailing channel of 1 may
            differ between the two).

    Returns:
        (N,) float64, in the intensity units of the preprocessed image.
    """
    a = np.asarray(images, np.float64)
    b = np.asarray(reconstructions, np.float64)
    a = a[..., 0] if a.ndim == 4 else a
    b = b[..., 0] if b.ndim == 4 else b
    if a.shape != b.shape:
        raise ValueError(f"images {a.shape} and reconstructions {b.shape} differ in shape")
    return np.abs(a - b).reshape(len(a), -1).mean(axis=1)


def latent_statistics(z, ridge=RIDGE):
    """The training distribution of the modality factor, as stored in a calibration.

    Args:
        z: (N, nz) z means of the training slices, N > nz.
        ridge: added to the covariance's diagonal, relative to its mean variance.

    Returns:
        ``{"mean": [nz], "covariance": [[nz] * nz], "ridge": absolute value added, "slices": N}``.

    Raises:
        ValueError: ``z`` is not 2-D, has no more rows than columns, or is not finite.
    """
    z = np.asarray(z, np.float64)
    if z.ndim != 2 or len(z) <= z.shape[1]:
        raise ValueError(f"z statistics need (N, nz) with N > nz, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("z holds NaN or infinite values")
    covariance = np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1])
    absolute = ridge * max(float(np.mean(np.diag(covariance))), 1e-12)
    return {"mean": [float(v) for v in z.mean(axis=0)], "covariance": [[float(v) for v in row] for row in covariance],
            "ridge": absolute, "slices": int(len(z))}


def mahalanobis(z, latent):
    """Distance of each row of ``z`` (N, nz) from ``latent`` (``latent_statistics``) -> (N,)."""
    z = np.asarray(z, np.float64)
    mean = np.asarray(latent["mean"], np.float64)
    covariance = np.asarray(latent["covariance"], np.float64) + latent["ridge"] * np.eye(len(mean))
    if z.ndim != 2 or z.shape[1] != len(mean):
        raise ValueError(f"z has shape {z.shape}; the calibration's z has {len(mean)} dimensions")
    d = z - mean
    return np.sqrt(np.einsum("ni,ni->n", d, np.linalg.solve(covariance, d.T).T))


def blood_pool_contrast(image, labels):
    """How much brighter the predicted LV cavity is than the predicted myocardium in the image.

    In the cine (bright-blood SSFP) images SDNet is trained on, blood is bright and muscle dark;
    labels painted onto an image region without that contrast (the heart cut away and filled,
    an image of something else) have none. A check of the image against its labels, which the
    reconstruction error cannot make when the model reconstructs the painted region well.

    Args:
        image: the input volume, (H, W, S) or (H, W, S, T), any intensity unit.
        labels: the predicted ACDC labels of the same shape.

    Returns:
        ``(median(image[LV]) - median(image[MYO])) / (p95 - p5)`` of the whole volume, a float;
        None when the labels hold no LV or no MYO or the image is constant.

    Raises:
        ValueError: ``image`` and ``labels`` differ in shape.
    """
    image, labels = np.asarray(image, np.float32), np.asarray(labels)
    if image.shape != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} differ in shape")
    lv, myo = labels == LV, labels == MYO
    low, high = np.percentile(image, [5, 95])
    if not lv.any() or not myo.any() or high <= low:
        return None
    return _round(float((np.median(image[lv]) - np.median(image[myo])) / (high - low)))


def volume_statistics(rows):
    """One volume's statistics from its per-slice rows (``QualityControl.score_slices``).

    Returns a dict: ``slices``, ``image_slices``, ``empty_slices``, ``invalid_slices``,
    ``invalid_share`` (of the slices with foreground; 0.0 without any), ``heart_area_mm2`` (the
    largest of a slice), and the medians over image slices of ``reconstruction_error`` and
    ``z_distance`` (None where not measured).
    """
    images = [r for r in rows if r["image"]]
    labelled = [r for r in rows if r["anatomy"] != "empty"]
    invalid = sum(r["anatomy"] == "invalid" for r in labelled)

    def median(key):
        values = [r[key] for r in images if r.get(key) is not None]
        return _round(float(np.median(values))) if values else None

    return {"slices": len(rows), "image_slices": len(images), "empty_slices": len(rows) - len(labelled),
            "invalid_slices": int(invalid), "invalid_share": _round(invalid / len(labelled)) if labelled else 0.0,
            "heart_area_mm2": _round(max((r["heart_area_mm2"] for r in rows), default=0.0)),
            "reconstruction_error": median("reconstruction_error"), "z_distance": median("z_distance")}


def judge(statistics, thresholds=None):
    """``(status, reasons)`` of one volume's statistics against ``thresholds`` ({check: value}).

    Each reason is ``{"check", "value", "threshold"}``; a check without a threshold or a value
    is not applied, except that a volume without any LV or MYO is always for review (its reason
    has the threshold 0.0 when none was calibrated).
    """
    thresholds = thresholds or {}
    reasons = []
    for check, rule in RULES.items():
        value, limit = statistics.get(check), thresholds.get(check)
        if check == "heart_area_mm2" and value is not None and value <= 0.0:
            reasons.append({"check": check, "value": value, "threshold": 0.0 if limit is None else limit})
            continue
        if value is None or limit is None:
            continue
        if (value > limit) if rule.review == "above" else (value < limit):
            reasons.append({"check": check, "value": value, "threshold": limit})
    return ("review" if reasons else "ok"), reasons


def describe(reason):
    """One phrase for a reason of ``judge``: the check, its value and its threshold."""
    check, value, limit = reason["check"], reason["value"], reason["threshold"]
    if check == "qc_failed":
        return f"quality control failed ({reason['error']})"
    if check == "lost_voxel_size":  # header_review's reason; its warning names the file and says why
        return "voxel size 1 x 1 x 1 mm, probably lost from the header (see the warning)"
    if check == "orientation_boundary":  # header_review's reason, likewise
        return "an axis near the diagonal between two world axes: the presentation to the network is a toss-up"
    if check == "heart_area_mm2":
        if value <= 0.0:
            return "no LV or MYO predicted in any slice"
        return f"largest LV+MYO area {value:.0f} mm^2 below {limit:.0f} mm^2"
    if check == "invalid_share":
        return f"{value:.0%} of the slices with a heart anatomically invalid, above {limit:.0%}"
    if check == "blood_pool_contrast":
        return f"blood-pool contrast {value:.3g} below {limit:.3g}"
    name = {"reconstruction_error": "reconstruction error", "z_distance": "z distance"}[check]
    return f"{name} {value:.3g} above {limit:.3g}"


def calibrate(volumes, latent=None, patients=None):
    """Thresholds from the statistics of the validation volumes (``RULES``).

    Args:
        volumes: ``volume_statistics`` of each validation volume (ED and ES frames).
        latent: ``latent_statistics`` of the training slices' z, or None (no z distance).
        patients: the validation patients' numbers, recorded.

    Returns:
        The calibration as stored in a sidecar's ``qc`` entry: ``calibrated`` (True),
        ``version``, ``thresholds`` ({check: value}), ``rules`` ({check: how it was made}),
        ``validation`` (``volumes``, ``slices``, ``patients`` and each check's observed
        ``[smallest, largest]``) and ``latent`` (or None).

    Raises:
        ValueError: no volumes.
    """
    if not volumes:
        raise ValueError("no validation volumes to calibrate the quality control on")
    thresholds, observed = {}, {}
    for check, rule in RULES.items():
        values = [v[check] for v in volumes if v.get(check) is not None]
        if not values:
            continue
        observed[check] = [_round(min(values)), _round(max(values))]
        base = max(values) if rule.review == "above" else min(values)
        thresholds[check] = _round(rule.factor * base + rule.offset)
    return {"calibrated": True, "version": VERSION, "thresholds": thresholds,
            "rules": {check: RULES[check].text for check in thresholds},
            "validation": {"volumes": len(volumes), "slices": int(sum(v["image_slices"] for v in volumes)),
                           "patients": list(patients or []), "observed": observed},
            "latent": latent}


def partial_model_skip(channels):
    """The line saying why a model of fewer structures than SDNet's three (``channels``, e.g.
    ["MYO"] for the MICCAI 2018 precursor) gets no quality control, or None for a full model:
    the anatomical checks need LV, MYO and RV."""
    from sdnet_infer.labels import SDNET_CHANNELS

    if len(channels) >= len(SDNET_CHANNELS):
        return None
    return (f"quality control: skipped, the model segments {', '.join(channels)} only and the anatomical "
            "checks need LV, MYO and RV")


def uncalibrated(reason):
    """The ``qc`` entry of an export that could not be calibrated, saying why."""
    return {"calibrated": False, "reason": str(reason)}


def header_review(result, geometry):
    """``result`` (``assess``) put up for review when the volume's header looks as if it has
    lost its voxel size (``geometry.lost_voxel_size``, a ``VolumeGeometry``): the reason
    ``lost_voxel_size`` with the reader's warning, because the segmentation was made at a voxel
    size that is probably wrong however plausible it looks; likewise ``orientation_boundary``
    (``geometry.orientation_boundary``), an axis near the diagonal between two world axes,
    where the slices' presentation to the network is decided by a few degrees. Otherwise
    ``result`` as it is."""
    reasons = [{"check": check, "value": None, "threshold": None, "warning": warning}
               for check, warning in (("lost_voxel_size", geometry.lost_voxel_size),
                                      ("orientation_boundary", geometry.orientation_boundary))
               if warning]
    if not reasons:
        return result
    return {**result, "status": "review", "reasons": [*result["reasons"], *reasons]}


class QualityControl:
    """Score predicted volumes (``assess``) and collect the report written as ``qc.json``.

    Args:
        model: an object with ``decompose(images)`` -> (anatomy, z mean, z log-variance) and
            ``decode(anatomy, z)`` -> images, e.g. ``SDNetRuntime``; None (or one whose
            ``decompose`` is None) measures validity and the heart's area only.
        calibration: a ``calibrate`` result (a sidecar's ``qc`` entry), an ``uncalibrated``
            one, or None.
        note: one line saying why out-of-distribution scores are missing; made from
            ``calibration`` when not given.
    """

    def __init__(self, model=None, calibration=None, note=None):
        calibration = calibration or {}
        self.calibrated = bool(calibration.get("calibrated"))
        self.thresholds = dict(calibration.get("thresholds") or {}) if self.calibrated else {}
        self.rules = {check: RULES[check].text for check in self.thresholds}
        self.latent = calibration.get("latent") if self.calibrated else None
        decomposes = model is not None and getattr(model, "decompose", None) is not None
        self.model = model if decomposes and self.calibrated else None
        if note is None and self.model is None:
            if not calibration:
                note = "no quality-control calibration (an export made before it): validity only; " \
                       "export again for out-of-distribution scores"
            elif not self.calibrated:
                note = f"no quality-control calibration ({calibration.get('reason')}): validity only"
            else:
                note = "a model without decomposition: validity and heart area only, no out-of-distribution scores"
        self.note = note
        self.volumes = []

    def score_slices(self, slices, labels, spacing, frame=None):
        """Per-slice rows of one frame.

        Args:
            slices: (S, size, size) preprocessed slices in [-1, 1], as the model saw them.
            labels: (H, W, S) uint8 predicted labels, in the training orientation.
            spacing: in-plane voxel size (dy, dx) of ``labels`` in mm.
            frame: the cine frame index, recorded in each row when given.

        Returns:
            One dict per slice: ``slice`` (and ``frame``), ``image``, ``anatomy``, ``failed``,
            ``heart_area_mm2``, ``reconstruction_error`` and ``z_distance`` (None when not
            measured).

        Raises:
            ValueError: ``slices`` and ``labels`` disagree on the number of slices.
        """
        slices = np.asarray(slices, np.float32)
        labels = np.asarray(labels)
        if slices.ndim != 3 or labels.ndim != 3 or labels.shape[-1] != len(slices):
            raise ValueError(f"slices {slices.shape} (S, size, size) and labels {labels.shape} (H, W, S) do not match")
        holds = np.ptp(slices.reshape(len(slices), -1), axis=1) > 0  # (S,)
        errors, distances = [None] * len(slices), [None] * len(slices)
        if self.model is not None and holds.any():
            images = slices[holds][..., None]  # (N, size, size, 1)
            anatomy, mean, _ = self.model.decompose(images)
            measured = reconstruction_errors(images, self.model.decode(anatomy, mean))
            near = mahalanobis(mean, self.latent) if self.latent else [None] * len(measured)
            for k, e, d in zip(np.flatnonzero(holds), measured, near):
                errors[k], distances[k] = _round(e), _round(d)
        pixel_mm2 = float(spacing[0]) * float(spacing[1])
        rows = []
        for k in range(len(slices)):
            found = check_slice(labels[..., k], spacing[:2], SEVEN_CHECKS)
            failed = [name for name, bad in found.items() if bad]
            empty = not (labels[..., k] != BACKGROUND).any()
            row = {} if frame is None else {"frame": int(frame)}
            row.update(slice=k, image=bool(holds[k]), anatomy="empty" if empty else ("invalid" if failed else "valid"),
                       failed=failed,
                       heart_area_mm2=_round(float(np.isin(labels[..., k], (LV, MYO)).sum()) * pixel_mm2),
                       reconstruction_error=errors[k], z_distance=distances[k])
            rows.append(row)
        return rows

    def assess(self, slices, labels, spacing, image=None):
        """Quality control of one predicted volume.

        Args:
            slices: the preprocessed slices the model saw: (S, size, size) for a frame,
                (T, S, size, size) for a cine (``predict_volume(..., keep_slices=True)``).
            labels: the predicted labels in the training orientation, (H, W, S) or (H, W, S, T).
            spacing: in-plane voxel size (dy, dx) in mm.
            image: the input volume the labels were predicted from, of their shape, for the
                blood-pool contrast (``blood_pool_contrast``); None leaves it unmeasured.

        Returns:
            ``{"status": "ok" | "review", "reasons": [...], "statistics": {...}, "slices": [...]}``
            (``judge``, ``volume_statistics``, ``score_slices``).
        """
        slices = np.asarray(slices)
        labels = np.asarray(labels)
        if slices.ndim == 3:
            rows = self.score_slices(slices, labels, spacing)
        elif slices.ndim == 4 and labels.ndim == 4 and labels.shape[-1] == len(slices):
            rows = [row for t in range(len(slices)) for row in self.score_slices(slices[t], labels[..., t], spacing, t)]
        else:
            raise ValueError(f"slices {slices.shape} and labels {labels.shape}: expected a frame (S, size, size) "
                             "with (H, W, S) labels or a cine (T, S, size, size) with (H, W, S, T) labels")
        statistics = volume_statistics(rows)
        statistics["blood_pool_contrast"] = None if image is None else blood_pool_contrast(image, labels)
        status, reasons = judge(statistics, self.thresholds)
        return {"status": status, "reasons": reasons, "statistics": statistics, "slices": rows}

    def assess_or_flag(self, slices, labels, spacing, source="volume", image=None):
        """``assess``; a volume whose assessment fails (the decomposition or decoder raised) is
        for review with the reason ``qc_failed`` and the error, so its labels still count."""
        try:
            return self.assess(slices, labels, spacing, image=image)
        except Exception as error:  # a failing check must not lose a written prediction
            reason = {"check": "qc_failed", "value": None, "threshold": None,
                      "error": f"{source}: {type(error).__name__}: {error}"}
            return {"status": "review", "reasons": [reason], "statistics": None, "slices": []}

    def add(self, record, result):
        """Keep ``result`` (``assess``) for the report, with the record's input and output, and
        set the record's ``qc`` (status) and ``qc_reasons`` (the checks that failed)."""
        record["qc"] = result["status"]
        record["qc_reasons"] = [reason["check"] for reason in result["reasons"]]
        self.volumes.append({"input": record["input"], "output": record["output"], **result})

    def report(self):
        """The content of ``qc.json``: format, whether calibrated, the note, the thresholds and
        their rules, and each assessed volume."""
        return {"format": FORMAT, "version": VERSION, "calibrated": self.calibrated,
                "out_of_distribution": self.model is not None, "note": self.note, "thresholds": self.thresholds,
                "rules": self.rules, "volumes": self.volumes}
