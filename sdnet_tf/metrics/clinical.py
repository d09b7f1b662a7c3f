"""Clinical indices of one patient's ED/ES segmentations, and their agreement over patients.

Volumes are in ml, ejection fractions in percent, the myocardial mass in grams: the ED
myocardium volume times a density of 1.05 g/ml, the usual convention of the ACDC challenge.
"""

import numpy as np

from sdnet_tf.metrics.overlap import CLASSES, check_labels, volume_ml

MYO_DENSITY = 1.05  # g/ml
CLINICAL_INDICES = ("LV_EDV", "LV_ESV", "LV_EF", "RV_EDV", "RV_ESV", "RV_EF", "MYO_mass")
LOA_FACTOR = 1.96  # Bland-Altman: 95 % of the differences of a normal distribution


def ejection_fraction(edv, esv):
    """``100 (EDV - ESV) / EDV`` in percent; NaN when EDV is 0."""
    if edv == 0:
        return float("nan")
    return 100.0 * (edv - esv) / edv


def clinical_indices(ed, es, zooms):
    """LV and RV volumes and ejection fractions, and the myocardial mass, of one patient.

    Args:
        ed: end-diastolic (H, W, S) label volume.
        es: end-systolic (H, W, S) label volume (the same acquisition, so the same ``zooms``).
        zooms: voxel size (dx, dy, dz) in mm.

    Returns:
        A dict with the keys of ``CLINICAL_INDICES``: "LV_EDV", "LV_ESV", "RV_EDV", "RV_ESV" in
        ml, "LV_EF" and "RV_EF" in percent (NaN when the EDV is 0), and "MYO_mass" in g
        (``MYO_DENSITY`` times the ED myocardium volume).

    Raises:
        ValueError: if a volume holds a value that is not a label, or ``zooms`` does not have one
            positive size per axis.
    """
    ed, es = check_labels(ed, "ed"), check_labels(es, "es")
    indices = {}
    for structure in ("LV", "RV"):
        label = CLASSES[structure]
        edv, esv = volume_ml(ed == label, zooms), volume_ml(es == label, zooms)
        indices[f"{structure}_EDV"] = edv
        indices[f"{structure}_ESV"] = esv
        indices[f"{structure}_EF"] = ejection_fraction(edv, esv)
    indices["MYO_mass"] = MYO_DENSITY * volume_ml(ed == CLASSES["MYO"], zooms)
    return indices


def agreement(predicted, reference):
    """Agreement of one clinical index between predictions and references over patients.

    Pairs where either value is NaN (or infinite) are dropped first.

    Args:
        predicted: 1-D sequence of the index from predicted segmentations, one per patient.
        reference: 1-D sequence of the same index from the reference segmentations.

    Returns:
        A dict: "correlation" (Pearson r; NaN with fewer than 2 pairs or when either side has no
        variance), "bias" (mean of predicted - reference), "std" (sample standard deviation of
        the differences, ddof=1; NaN with fewer than 2 pairs), "loa_low" and "loa_high" (the
        Bland-Altman limits of agreement, bias -/+ 1.96 std), "mae" (mean absolute difference)
        and "n" (the number of pairs kept). Means of no pairs are NaN.

    Raises:
        ValueError: if the inputs are not 1-D of the same length.
    """
    predicted, reference = np.asarray(predicted, np.float64), np.asarray(reference, np.float64)
    if predicted.ndim != 1 or predicted.shape != reference.shape:
        raise ValueError(f"predicted and reference must be 1-D of the same length, got shapes {predicted.shape} "
                         f"and {reference.shape}")
    keep = np.isfinite(predicted) & np.isfinite(reference)
    predicted, reference = predicted[keep], reference[keep]
    n = int(keep.sum())
    nan = float("nan")
    differences = predicted - reference
    bias = float(differences.mean()) if n else nan
    mae = float(np.abs(differences).mean()) if n else nan
    std = float(differences.std(ddof=1)) if n >= 2 else nan
    correlation = nan
    # constancy is tested on the values: centring equal values can leave rounding noise that
    # would turn r into a meaningless +-1
    if n >= 2 and np.ptp(predicted) > 0 and np.ptp(reference) > 0:
        x, y = predicted - predicted.mean(), reference - reference.mean()
        correlation = float(np.sum(x * y) / np.sqrt(np.sum(x * x) * np.sum(y * y)))
    return {"correlation": correlation, "bias": bias, "std": std, "loa_low": bias - LOA_FACTOR * std,
            "loa_high": bias + LOA_FACTOR * std, "mae": mae, "n": n}
