"""Metrics of shape priors and of the masks they reconstruct or generate (numpy / scipy / scikit-learn).

Label maps are (N, H, W) arrays of N slices with the ACDC labels 0 background, 1 RV cavity,
2 myocardium (MYO) and 3 LV cavity; ``spacing`` is the in-plane pixel size in mm, (row, col),
either one pair for every slice or an (N, 2) array of one pair per slice.

* :func:`reconstruction_dice`: per-class Dice of reconstructions, averaged over slices.
* :func:`valid_fraction`: share of anatomically valid slices (:mod:`sdnet_tf.metrics.validity`)
  and how often each check failed.
* :func:`shape_descriptors`: a fixed vector of interpretable per-slice shape measures in mm
  (columns named in :data:`DESCRIPTORS`).
* :func:`frechet_distance` and :func:`frechet_shape_distance`: the Frechet distance between
  two sets of features, and between the standardised shape descriptors of real and generated
  masks.
* :func:`pathology_cv`: cross-validated accuracy of a tree ensemble predicting the ACDC
  pathology group from patient features (ACNN's evaluation of its codes).
* :func:`pool_codes`: a fixed-size per-slice summary of a prior's codes, to build such features.

Frechet shape distance instead of FRDS
--------------------------------------
The NVAE thesis measures the realism of generated masks with FRDS, the Frechet distance between
512-d embeddings of a ResNet-18 trained with SimCLR on masks. This project uses the Frechet
distance between :data:`DESCRIPTORS` vectors instead, for these reasons:

* nothing to train: FRDS needs its own contrastive network, whose training (augmentations,
  temperature, epochs, seed) changes the number, so values are only comparable between runs
  that share one embedding network; the descriptors are fixed functions of the mask;
* deterministic: the same masks give the same distance on any machine, without weights to
  ship with the results;
* interpretable: every column is a named measure in mm (or a count, flag or ratio), so a large
  distance can be traced to, say, too small an RV or too many MYO components by comparing the
  columns' means;
* comparable in scale: both sets are standardised by the real set's mean and standard
  deviation, so no column dominates because of its unit; a shift of the mean by one real
  standard deviation in every column alone adds D (the number of columns) to the distance.

It is not FRDS, and its values cannot be compared with the thesis' FRDS numbers.
"""

import math
import warnings

import numpy as np
from scipy import linalg, ndimage
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold

from sdnet_infer.labels import STRUCTURES
from sdnet_tf.metrics.overlap import check_labels, check_shapes, dice
from sdnet_tf.metrics.validity import SEVEN_CHECKS, check_slice, circularity, convex_hull_mask, perimeter

_MEASURES = ("present", "area_mm2", "perimeter_mm", "circularity", "components", "solidity")
DESCRIPTORS = tuple(f"{name.lower()}_{measure}" for name in STRUCTURES for measure in _MEASURES) + (
    "lv_rv_centroid_distance_mm", "myo_thickness_mm")
"""Names of the :func:`shape_descriptors` columns, in order (20 columns).

Per structure, for RV, MYO and LV in that order (``<s>`` is ``rv``, ``myo`` or ``lv``):

``<s>_present``
    1.0 when the structure has a pixel, else 0.0. When it is 0 every other column of the
    structure is 0.
``<s>_area_mm2``
    Pixel count times the pixel area (row spacing x column spacing), mm^2.
``<s>_perimeter_mm``
    Boundary length of the structure as it is (a MYO ring counts its inner and outer
    contours), by :func:`sdnet_tf.metrics.validity.perimeter` (scikit-image's 4-neighbourhood
    estimator) in pixels, times ``sqrt(row spacing x column spacing)``: exact for square
    pixels (ACDC's in-plane spacing is isotropic), an approximation otherwise.
``<s>_circularity``
    ``4 pi A / P**2`` of the structure with its holes filled, by
    :func:`sdnet_tf.metrics.validity.circularity` (so for a MYO ring, of the epicardial
    outline): about 1 for a disc, lower for elongated or ragged shapes; 0 when undefined (a
    structure without a measurable perimeter, such as a single pixel).
``<s>_components``
    Number of 8-connected components.
``<s>_solidity``
    Pixel count over the pixel count of its convex hull
    (:func:`sdnet_tf.metrics.validity.convex_hull_mask`), in (0, 1]: 1 for a convex shape, lower
    for a crescent (RV) or a ring (MYO: the wall's share of the epicardial hull).

Then, for the slice:

``lv_rv_centroid_distance_mm``
    Distance in mm between the LV and RV centroids; 0 when either is absent.
``myo_thickness_mm``
    Mean myocardial wall thickness, ``2 A / P`` with A the MYO area and P its perimeter (both
    in mm, as above): the MYO area divided by the mean of its endocardial and epicardial
    contour lengths. Exact for an annulus (``pi (R^2 - r^2) / (pi (R + r)) = R - r``) and for a
    long strip of any width; a few per cent low on digitised rings (3.8 pixels for a ring of
    radii 8 and 12), as the pixel perimeter of the inner contour runs along the ring's
    boundary pixels, outside the cavity. It needs no closed ring: a basal
    C-shaped wall gives its width. 0 when the MYO is absent or has no measurable perimeter.

Chosen over a distance-transform estimate (twice the mean distance to the wall's boundary
along its medial axis) because it needs no skeleton, has a closed form to test against, and
is defined for open or fragmented walls too.
"""

_SQUARE = np.ones((3, 3), bool)  # 8-connectivity


def _label_stack(labels, name="labels"):
    """(N, H, W) label maps; one (H, W) map is one slice."""
    labels = check_labels(labels, name)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W) label maps (or one (H, W) map), got shape {labels.shape}")
    return labels


def _spacings(spacing, count):
    """(count, 2) float64 pixel sizes from one (row, col) pair or one pair per slice."""
    spacing = np.asarray(spacing, np.float64)
    if spacing.shape == (2,):
        spacing = np.broadcast_to(spacing, (count, 2))
    if spacing.shape != (count, 2) or not np.all(spacing > 0):
        raise ValueError(f"spacing must be a positive (row, col) pixel size in mm or one per slice, "
                         f"shape ({count}, 2); got {spacing.tolist()}")
    return spacing


def reconstruction_dice(pred, ref):
    """Per-class Dice of predicted (e.g. reconstructed) label maps, averaged over slices.

    Args:
        pred: (N, H, W) predicted label maps.
        ref: (N, H, W) reference label maps.

    Returns:
        Dict "RV", "MYO", "LV": the mean over slices of each slice's Dice of that class
        (:func:`sdnet_tf.metrics.overlap.dice`; a slice where both maps lack the class is left
        out, a class absent from every slice gives NaN); "mean": the mean of the class means
        that are not NaN.

    Raises:
        ValueError: on a shape mismatch or a value that is not a label.
    """
    pred, ref = check_shapes(pred, ref)
    pred, ref = _label_stack(pred, "pred"), _label_stack(ref, "ref")
    scores = {}
    for name, label in STRUCTURES.items():
        values = np.array([dice(p == label, r == label) for p, r in zip(pred, ref)], np.float64)
        values = values[~np.isnan(values)]
        scores[name] = float(values.mean()) if values.size else math.nan
    defined = [value for value in scores.values() if not math.isnan(value)]
    scores["mean"] = float(np.mean(defined)) if defined else math.nan
    return scores


def valid_fraction(labels, spacing, checks=SEVEN_CHECKS):
    """Share of anatomically valid slices and the number of slices failing each check.

    Args:
        labels: (N, H, W) label maps.
        spacing: (row, col) pixel size in mm, or (N, 2); only concavity checks use it.
        checks: check names (:data:`sdnet_tf.metrics.validity.SEVEN_CHECKS` by default).

    Returns:
        Dict "valid": fraction of slices passing every check
        (:func:`sdnet_tf.metrics.validity.is_valid`; 1.0 when there is no slice), "count": N,
        "failures": dict check name -> number of slices failing it, in the order of
        ``checks``. A slice may fail several checks.
    """
    labels = _label_stack(labels)
    spacing = _spacings(spacing, len(labels))
    checks = tuple(checks)
    failures = dict.fromkeys(checks, 0)
    valid = 0
    for slice_labels, pixel in zip(labels, spacing):
        found = check_slice(slice_labels, tuple(pixel), checks)
        valid += not any(found.values())
        for name, failed in found.items():
            failures[name] += int(failed)
    count = len(labels)
    return {"valid": valid / count if count else 1.0, "count": count, "failures": failures}


def _crop(mask):
    """The mask cropped to its bounding box plus a one-pixel background margin."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.pad(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], 1)


def _structure_measures(mask, pixel):
    """The :data:`_MEASURES` of one binary structure (zeros when it is empty)."""
    if not mask.any():
        return [0.0] * len(_MEASURES)
    mask = _crop(mask)
    area_px = float(np.count_nonzero(mask))
    length = perimeter(mask) * math.sqrt(pixel[0] * pixel[1])
    roundness = circularity(mask)
    components = ndimage.label(mask, _SQUARE)[1]
    solidity = area_px / np.count_nonzero(convex_hull_mask(mask))
    return [1.0, area_px * pixel[0] * pixel[1], length, 0.0 if math.isnan(roundness) else roundness,
            float(components), solidity]


def _slice_descriptors(labels, pixel):
    row = []
    for label in STRUCTURES.values():
        row += _structure_measures(labels == label, pixel)
    lv, rv = labels == STRUCTURES["LV"], labels == STRUCTURES["RV"]
    distance = 0.0
    if lv.any() and rv.any():
        offset = (np.array(ndimage.center_of_mass(lv)) - np.array(ndimage.center_of_mass(rv))) * pixel
        distance = float(np.hypot(*offset))
    myo = row[len(_MEASURES):2 * len(_MEASURES)]
    area, length = myo[1], myo[2]
    thickness = 2.0 * area / length if length > 0 else 0.0
    return row + [distance, thickness]


def shape_descriptors(labels, spacing):
    """Interpretable per-slice shape descriptors, the columns of :data:`DESCRIPTORS`.

    Args:
        labels: (N, H, W) label maps.
        spacing: (row, col) pixel size in mm, or (N, 2).

    Returns:
        (N, len(DESCRIPTORS)) float64 array. A structure absent from a slice has 0 in all its
        columns, its ``*_present`` flag included.

    Raises:
        ValueError: for values that are not labels or bad spacing.
    """
    labels = _label_stack(labels)
    spacing = _spacings(spacing, len(labels))
    rows = [_slice_descriptors(slice_labels, pixel) for slice_labels, pixel in zip(labels, spacing)]
    return np.array(rows, np.float64).reshape(len(labels), len(DESCRIPTORS))


def _features(values, name):
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or values.shape[0] < 2:
        raise ValueError(f"{name} must be an (N, D) feature array with N >= 2, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} holds non-finite values")
    return values


def _sqrtm(matrix):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # a singular product; checked below
        return linalg.sqrtm(matrix)


def frechet_distance(a, b, eps=1e-6):
    """Frechet distance between Gaussians fitted to two feature sets (as FID computes it).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr(sqrtm(S_a S_b))`` in float64, with the sample
    means and the (N - 1)-normalised sample covariances. The real part of the matrix square
    root is used. If the square root is not finite (a singular product), ``eps * I`` is added
    to both covariances and the whole distance is computed from the regularised ones.

    Args:
        a: (N_a, D) features.
        b: (N_b, D) features, same D.
        eps: diagonal added to both covariances when needed.

    Returns:
        The distance, a float (0 for identical sets, up to rounding).

    Raises:
        ValueError: for arrays that are not 2-D with at least two rows, differ in D, or hold
            non-finite values.
    """
    a, b = _features(a, "a"), _features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same number of features, got {a.shape[1]} and {b.shape[1]}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root = _sqrtm(cov_a @ cov_b)
    if not np.all(np.isfinite(root)):
        offset = eps * np.eye(cov_a.shape[0])
        cov_a, cov_b = cov_a + offset, cov_b + offset
        root = _sqrtm(cov_a @ cov_b)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(np.real(root)))


def frechet_shape_distance(real, generated, spacing, generated_spacing=None):
    """Frechet distance between the standardised shape descriptors of two sets of label maps.

    Both sets' :func:`shape_descriptors` are standardised by the real set's per-column mean
    and standard deviation (a constant column is only centred: its deviation counts as 1), then
    compared with :func:`frechet_distance`. See the module docstring for why this replaces FRDS.

    Args:
        real: (N_r, H, W) reference label maps, e.g. expert masks; N_r >= 2.
        generated: (N_g, H', W') label maps, e.g. samples of a prior; N_g >= 2.
        spacing: pixel size of ``real`` in mm, (row, col) or (N_r, 2).
        generated_spacing: pixel size of ``generated``; ``spacing`` when None (then a single
            (row, col) pair is required).

    Returns:
        The distance, a float.
    """
    if generated_spacing is None:
        if np.shape(spacing) != (2,):
            raise ValueError("give generated_spacing when spacing holds one pair per real slice")
        generated_spacing = spacing
    return frechet_distance(*standardise(shape_descriptors(real, spacing),
                                         shape_descriptors(generated, generated_spacing)))


def standardise(real, other):
    """``(real, other)`` descriptor arrays minus ``real``'s per-column mean, over its standard
    deviation (a constant column is only centred: its deviation counts as 1), as
    :func:`frechet_shape_distance` compares them."""
    mean, std = real.mean(axis=0), real.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (real - mean) / std, (other - mean) / std


def pathology_cv(features, groups, folds=10, seed=0, trees=500):
    """Cross-validated accuracy of a random forest predicting the pathology group.

    ACNN classifies the five ACDC groups (NOR, MINF, DCM, HCM, RV) from the codes of the ED
    and ES masks with an ensemble of decision trees and 10-fold cross-validation. Here the
    ensemble is scikit-learn's ``RandomForestClassifier``: bagged trees, each split chosen as
    the best among a random subset of the features. It is the usual reading of "an ensemble of
    decision trees", needs no scaling of features of mixed units (codes, mm, counts), copes
    with more features than patients (100 ACDC patients), and with a fixed ``random_state`` is
    deterministic. Extra trees (random split thresholds) would fit the description as well;
    random forest is used as the better-known baseline.

    Args:
        features: (P, D) features, one row per patient.
        groups: (P,) group labels (strings or integers).
        folds: number of stratified folds (10); at most the size of the smallest group.
        seed: seed of the fold shuffle and of the forest.
        trees: number of trees (500).

    Returns:
        Dict "mean" and "std" (population standard deviation) of the fold accuracies,
        "folds": the per-fold accuracies (list of floats), "chance": the share of the most
        common group (the accuracy of always predicting it).

    Raises:
        ValueError: if the shapes disagree or a group has fewer than ``folds`` members.
    """
    features = np.asarray(features, np.float64)
    groups = np.asarray(groups)
    if features.ndim != 2 or groups.shape != (features.shape[0],):
        raise ValueError(f"features must be (P, D) and groups (P,), got {features.shape} and {groups.shape}")
    names, counts = np.unique(groups, return_counts=True)
    if counts.min() < folds:
        raise ValueError(f"every group needs at least folds={folds} members; "
                         f"{names[counts.argmin()]!r} has {counts.min()}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = []
    for train, test in splitter.split(features, groups):
        forest = RandomForestClassifier(n_estimators=trees, random_state=seed)
        forest.fit(features[train], groups[train])
        scores.append(float(np.mean(forest.predict(features[test]) == groups[test])))
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "folds": scores,
            "chance": float(counts.max() / counts.sum())}


def pool_codes(codes):
    """A fixed-size per-slice summary of a prior's codes.

    Each code is averaged over its spatial axes (all but the first and the last) and the
    results are concatenated along the channels: the NVAE's seven (N, h, w, 20) group means
    give (N, 140); the ACNN's single (N, 64) code is kept as it is.

    Args:
        codes: a list of arrays (N, ..., C_i), channels last, the same N for all (a single
            array is taken as a one-element list).

    Returns:
        (N, sum of C_i) float64 array.
    """
    if not isinstance(codes, (list, tuple)):
        codes = [codes]
    if not codes:
        raise ValueError("pool_codes needs at least one code array")
    pooled = []
    for code in codes:
        code = np.asarray(code, np.float64)
        if code.ndim < 2:
            raise ValueError(f"each code must be (N, ..., C), got shape {code.shape}")
        pooled.append(code.mean(axis=tuple(range(1, code.ndim - 1))) if code.ndim > 2 else code)
    sizes = {code.shape[0] for code in pooled}
    if len(sizes) > 1:
        raise ValueError(f"codes must share their first (slice) axis, got sizes {sorted(sizes)}")
    return np.concatenate(pooled, axis=1)
