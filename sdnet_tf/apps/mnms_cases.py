"""The M&Ms cases of a run trained on an M&Ms-layout cohort (``sdnet-tf train mnms``): where their
predictions go, how one patient's ED and ES frames are segmented and written and its reference
read, and the per-vendor table. ``sdnet_tf.apps.evaluation.evaluate_mnms_run`` scores them.

Each ``<code>_sa.nii.gz`` (4-D, H x W x slices x time) is read by the one geometry reader into
the training orientation, its ``<code>_sa_gt.nii.gz`` is read on the image's grid (refused
otherwise) with M&Ms' labels mapped to ACDC's, the frames at the CSV's ED and ES time indices
are preprocessed, segmented and restored onto the grid exactly as ``sdnet-tf predict`` does,
and the prediction is written as ``<root>/<code>/<code>_sa_pred.nii.gz``: 4-D like the
references, ED and ES labelled, every other time point 0, in M&Ms' label values (1 LV, 2 MYO,
3 RV), with the image's affine and header.
"""

from pathlib import Path

import numpy as np

from sdnet_infer.io import DataError, labels_in_convention, read_labels, read_volume, save_labels
from sdnet_infer.predict import SUFFIX as PRED_SUFFIX
from sdnet_infer.predict import predict_volume

STRUCTURES = ("LV", "MYO", "RV")  # the per-vendor table's order (M&Ms' label order)
VENDOR_COLUMNS = (["Vendor", "Role", "Patients", "Cases"] + [f"Dice {c}" for c in STRUCTURES] + ["Dice mean"]
                  + [f"HD95 {c}" for c in STRUCTURES] + ["HD95 mean", "SliceDice", "ValidP pred (%)"])
PHASES = ("ED", "ES")
IMAGE_KIND = "cine image (H x W x slices x time)"


def prediction_path(pred_root, code):
    """Where ``evaluate_mnms_run`` writes patient ``code``'s prediction: ``<root>/<code>/<code>_sa_pred.nii.gz``."""
    return Path(pred_root) / code / f"{code}_sa{PRED_SUFFIX}.nii.gz"


def _phase_times(patient, count):
    """``{"ED": index, "ES": index}``, checked against the file's ``count`` time points."""
    times = {"ED": patient.ed, "ES": patient.es}
    for name, index in times.items():
        if not 0 <= index < count:
            raise DataError(f"{patient.image}: {name} is time index {index} (0-based, from {patient.csv}), "
                            f"outside the file's {count} time points 0-{count - 1}")
    return times


def read_reference(patient, orientation, like=None):
    """The 4-D reference of an M&Ms patient: ``(Volume (H, W, S, T) uint8 in ACDC's values, {"ED":
    time index, "ES": time index})``, read into ``orientation``.

    Raises:
        DataError: naming the file: the patient has no labels file, it cannot be read or is not
            4-D, it is not on ``like``'s grid (when given), an ED or ES index outside its time
            points, no labels at ED or ES.
    """
    from sdnet_tf.data.mnms import LABEL_MAP

    if not patient.labelled:
        raise DataError(f"{patient.image}: no {patient.code}_sa_gt file beside it, so nothing to score against")
    reference = read_labels(patient.gt, like=like, label_map=LABEL_MAP, orientation=orientation, ndim=(4,))
    times = _phase_times(patient, reference.data.shape[-1])
    for name, index in times.items():
        if not reference.data[..., index].any():
            raise DataError(f"{patient.gt}: no labels at {name}, time index {index} (0-based, from {patient.csv}); "
                            "M&Ms labels ED and ES only")
    return reference, times


def predict_patient(patient, probabilities, size, spacing, orientation, out_path, counts=None):
    """Segment the ED and ES frames of one M&Ms patient and write them in M&Ms' label values.

    Args:
        patient: an ``sdnet_tf.data.mnms.Patient`` with labels.
        probabilities: preprocessed slices (N, size, size, 1) -> foreground probabilities.
        size, spacing: the model's input size (pixels) and in-plane mm per pixel.
        orientation: the run's training orientation.
        out_path: the 4-D prediction to write (``prediction_path``).
        counts: the LV-volume head's count list of ``evaluation.run_probabilities``, or None.

    Returns:
        ``(frames, reference, times)``: ``{phase: (labels (H, W, S) uint8 in ACDC's values, the
        head's counts or None)}`` for ED and ES (the file holds them at their time indices, 0
        elsewhere, on the image's stored grid), the 4-D reference (a ``Volume`` in ACDC's
        values) and ``{phase: time index}``.

    Raises:
        DataError: naming the file: an unreadable or non-4-D image, labels off its grid or
            without labels at ED or ES, an ED or ES outside the file's time points.
        OSError: ``out_path`` cannot be written.
    """
    volume = read_volume(patient.image, ndim=(4,), kind=IMAGE_KIND, orientation=orientation)
    reference, times = read_reference(patient, orientation, like=volume.geometry)  # on the image's grid, labelled at ED, ES
    labels = np.zeros(volume.data.shape, np.uint8)
    out = {}
    for phase, index in times.items():
        if counts is not None:
            counts.clear()
        labels[..., index] = predict_volume(volume.data[..., index], volume.zooms[:2], probabilities, size, spacing,
                                            source=f"{patient.image} time {index}")
        out[phase] = (labels[..., index], list(counts) if counts is not None else None)
    save_labels(labels_in_convention(labels, "mnms"), volume.image, out_path, volume.geometry)
    return out, reference, times


def vendor_rows(per_vendor):
    """The rows of ``vendors.csv`` (``VENDOR_COLUMNS``): the means of ``vendor_summary``'s entries."""
    rows = []
    for vendor, entry in per_vendor.items():
        row = {"Vendor": vendor, "Role": entry["role"], "Patients": entry["patients"], "Cases": entry["cases"]}
        for metric in ("Dice", "HD95"):
            for key in (*STRUCTURES, "mean"):
                row[f"{metric} {key}"] = entry[metric][key]["mean"] if metric in entry else None
        row["SliceDice"] = entry["SliceDice"]["mean"] if "SliceDice" in entry else None
        row["ValidP pred (%)"] = entry["validity_percent"]["ValidP pred"] if "validity_percent" in entry else None
        rows.append(row)
    return rows


def vendor_table(per_vendor):
    """``summary["per_vendor"]`` as a small text table: role, patients, mean 3-D Dice per
    structure and over them, mean HD95 over the structures (mm); "-" where there is none."""
    def number(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    header = f"{'vendor':<8}{'role':<12}{'patients':>9}{'Dice LV':>9}{'MYO':>7}{'RV':>7}{'mean':>7}{'HD95 mm':>9}"
    lines = [header]
    for row in vendor_rows(per_vendor):
        lines.append(f"{row['Vendor']:<8}{row['Role']:<12}{row['Patients']:>9}{number(row['Dice LV'], 3):>9}"
                     f"{number(row['Dice MYO'], 3):>7}{number(row['Dice RV'], 3):>7}{number(row['Dice mean'], 3):>7}"
                     f"{number(row['HD95 mean'], 1):>9}")
    return "\n".join(lines)
