"""Overlap and volume metrics of label volumes, and the ACDC challenge's per-volume CSV row.

Label volumes are (H, W, S) arrays (S = slices) with 0 background, 1 RV cavity, 2 myocardium
and 3 LV cavity; ``zooms`` is the NIfTI header's voxel size (dx, dy, dz) in mm, through-plane
included.
"""

import numpy as np

from sdnet_infer.labels import CLASSES, LABELS  # {"LV": 3, "RV": 1, "MYO": 2}, the official ACDC order
SLICE_DICE_SMOOTH = 0.1

# The official challenge CSV ("Volume X" is the predicted volume, "Err X(ml)" predicted minus
# reference, as in the official evaluation script by Zotti).
ACDC_COLUMNS = ["Name", "Dice LV", "Volume LV", "Err LV(ml)", "Dice RV", "Volume RV", "Err RV(ml)", "Dice MYO",
                "Volume MYO", "Err MYO(ml)"]


def check_shapes(pred, ref):
    """Both arrays as numpy arrays, after checking that their shapes agree.

    Raises:
        ValueError: if the shapes differ.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref must have the same shape, got pred {pred.shape} and ref {ref.shape}")
    return pred, ref


def check_labels(labels, name="labels"):
    """``labels`` as a numpy array, after checking it holds only the ACDC labels 0-3.

    Float arrays (``nibabel``'s ``get_fdata``) are accepted as long as every value is one of
    the labels.

    Raises:
        ValueError: if a value is not 0, 1, 2 or 3.
    """
    labels = np.asarray(labels)
    if not np.isin(labels, LABELS).all():
        found = np.unique(labels[~np.isin(labels, LABELS)])[:5].tolist()
        raise ValueError(f"{name} must hold only the labels {LABELS}, found {found}")
    return labels


def check_zooms(zooms, ndim):
    """``zooms`` as a float64 array, after checking it has one positive spacing per axis.

    Raises:
        ValueError: if the number of spacings is not ``ndim`` or a spacing is not positive.
    """
    zooms = np.asarray(zooms, np.float64).ravel()
    if zooms.size != ndim or not np.all(zooms > 0):
        raise ValueError(f"zooms must be {ndim} positive voxel sizes in mm (one per axis), got {zooms.tolist()}")
    return zooms


def dice(pred, ref, empty=float("nan")):
    """3-D Dice ``2 |P & R| / (|P| + |R|)`` of two boolean masks (nonzero counts as True).

    Args:
        pred: predicted mask, any shape.
        ref: reference mask, the shape of ``pred``.
        empty: the value when both masks are empty. NaN by default, so that such a structure is
            left out of means taken with ``np.nanmean`` instead of counting as perfect or as 0.

    Returns:
        The Dice coefficient as a float; 0.0 when exactly one mask is empty.

    Raises:
        ValueError: if the shapes differ.
    """
    pred, ref = check_shapes(pred, ref)
    pred, ref = pred.astype(bool), ref.astype(bool)
    total = np.count_nonzero(pred) + np.count_nonzero(ref)
    if total == 0:
        return float(empty)
    return 2.0 * np.count_nonzero(pred & ref) / total


def volume_ml(mask, zooms):
    """Volume of a boolean mask in ml: voxel count * prod(zooms) / 1000 (zooms in mm).

    Raises:
        ValueError: if ``zooms`` does not have one positive spacing per axis of ``mask``.
    """
    mask = np.asarray(mask)
    zooms = check_zooms(zooms, mask.ndim)
    return np.count_nonzero(mask) * float(np.prod(zooms)) / 1000.0


def acdc_row(name, pred, ref, zooms):
    """One row of the official ACDC results CSV, keys in ``ACDC_COLUMNS`` order.

    Per structure (LV, RV, MYO): the 3-D Dice (NaN when the structure is absent from both
    volumes, see ``dice``; the official script, through medpy, writes 0 there), the predicted
    volume in ml, and the predicted minus the reference volume in ml.

    Args:
        name: the row's name (the official script writes the prediction's file name).
        pred: predicted (H, W, S) label volume.
        ref: reference (H, W, S) label volume.
        zooms: voxel size (dx, dy, dz) in mm.

    Raises:
        ValueError: on a shape mismatch, a value that is not a label, or bad zooms.
    """
    pred, ref = check_shapes(pred, ref)
    pred, ref = check_labels(pred, "pred"), check_labels(ref, "ref")
    row = {"Name": name}
    for structure, label in CLASSES.items():
        pred_mask, ref_mask = pred == label, ref == label
        predicted = volume_ml(pred_mask, zooms)
        row[f"Dice {structure}"] = dice(pred_mask, ref_mask)
        row[f"Volume {structure}"] = predicted
        row[f"Err {structure}(ml)"] = predicted - volume_ml(ref_mask, zooms)
    return row


def slice_dice(pred, ref):
    """The SDNet paper's per-slice Dice of two (H, W, S) label volumes.

    Args:
        pred: predicted (H, W, S) label volume.
        ref: reference (H, W, S) label volume.

    Returns:
        A dict of (S,) float64 arrays. "pooled": the Dice of the one-hot maps of the three
        foreground classes, pooled over height, width and the three channels together and
        smoothed by 0.1, ``(2 sum(p m) + 0.1) / (sum(p) + sum(m) + 0.1)``, as the training loss
        computes it (so a slice empty in both scores 1). "LV", "RV", "MYO": the exact binary
        Dice of each class, where a slice empty in both scores 1.0, as the original evaluation
        does.

    Raises:
        ValueError: if the volumes are not 3-D of the same shape or hold a value that is not a
            label.
    """
    pred, ref = check_shapes(pred, ref)
    if pred.ndim != 3:
        raise ValueError(f"slice_dice expects (H, W, S) label volumes, got shape {pred.shape}")
    pred, ref = check_labels(pred, "pred"), check_labels(ref, "ref")
    axes = (0, 1)
    # With hard labels the one-hot product is 1 exactly where both carry the same foreground
    # label, and each map sums to its foreground voxel count.
    inter = np.sum((pred == ref) & (pred != 0), axis=axes)
    total = np.sum(pred != 0, axis=axes) + np.sum(ref != 0, axis=axes)
    scores = {"pooled": (2.0 * inter + SLICE_DICE_SMOOTH) / (total + SLICE_DICE_SMOOTH)}
    for structure, label in CLASSES.items():
        pred_mask, ref_mask = pred == label, ref == label
        inter = np.sum(pred_mask & ref_mask, axis=axes)
        total = np.sum(pred_mask, axis=axes) + np.sum(ref_mask, axis=axes)
        # maximum(total, 1) only avoids 0/0 on the slices that np.where sets to 1 anyway
        scores[structure] = np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))
    return scores


def slice_dice_summary(pred, ref):
    """Means over the slices of ``slice_dice``: one patient-volume's figures.

    The SDNet paper then averages per patient, the slices of the patient's ED and ES volumes
    together, and reports the mean over patients.

    Returns:
        A dict with keys "pooled", "LV", "RV", "MYO", each a float.
    """
    return {key: float(np.mean(values)) for key, values in slice_dice(pred, ref).items()}
