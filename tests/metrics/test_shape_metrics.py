"""Shape metrics: reconstruction Dice, valid fraction, shape descriptors, Frechet distances,
pathology cross-validation and code pooling, on hand-made masks and synthetic features."""

import math

import numpy as np
import pytest

from sdnet_tf.metrics.shape import (DESCRIPTORS, frechet_distance, frechet_shape_distance, pathology_cv,
                                    pool_codes, reconstruction_dice, shape_descriptors, valid_fraction)
from sdnet_tf.metrics.validity import SEVEN_CHECKS

SIZE = 64
ROWS, COLS = np.mgrid[:SIZE, :SIZE]
COLUMN = {name: i for i, name in enumerate(DESCRIPTORS)}


def disc(centre, radius):
    return np.hypot(ROWS - centre[0], COLS - centre[1]) < radius


def heart(centre=(32, 38), lv_radius=8, wall=4, rv_radius=15, rv_offset=11):
    """LV disc inside a MYO ring, and an RV crescent (a disc left of the ring) against the septum."""
    from_lv = np.hypot(ROWS - centre[0], COLS - centre[1])
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[disc((centre[0], centre[1] - rv_offset), rv_radius) & (from_lv >= lv_radius + wall)] = 1
    labels[from_lv < lv_radius + wall] = 2
    labels[from_lv < lv_radius] = 3
    return labels


def column(values, name):
    return values[:, COLUMN[name]]


# ------------------------------------------------------------------ reconstruction Dice
def test_reconstruction_dice_golden():
    ref = np.zeros((2, 8, 8), np.uint8)
    pred = np.zeros_like(ref)
    # slice 0: LV half overlapping (Dice 1/2), MYO equal (1), RV half found (2 * 2 / (2 + 4) = 2/3)
    ref[0, 0:2, 0:2] = 3
    pred[0, 0:2, 1:3] = 3
    ref[0, 4:6, 4:6] = pred[0, 4:6, 4:6] = 2
    ref[0, 6:8, 0:2] = 1
    pred[0, 6, 0:2] = 1
    # slice 1: LV equal (1), a MYO only predicted (0), no RV in either (left out, not 0 or 1)
    ref[1, 2:4, 2:4] = pred[1, 2:4, 2:4] = 3
    pred[1, 6:8, 6:8] = 2
    scores = reconstruction_dice(pred, ref)
    assert scores["RV"] == pytest.approx(2 / 3)
    assert scores["MYO"] == pytest.approx(0.5)
    assert scores["LV"] == pytest.approx(0.75)
    assert scores["mean"] == pytest.approx((2 / 3 + 0.5 + 0.75) / 3)
    # a class absent from every slice is NaN and left out of the mean
    no_rv = reconstruction_dice(np.where(pred == 1, 0, pred), np.where(ref == 1, 0, ref))
    assert math.isnan(no_rv["RV"]) and no_rv["mean"] == pytest.approx((0.5 + 0.75) / 2)


def test_reconstruction_dice_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_dice(np.zeros((2, 8, 8)), np.zeros((2, 8, 9)))
    with pytest.raises(ValueError, match="labels"):
        reconstruction_dice(np.full((1, 4, 4), 5), np.zeros((1, 4, 4)))


# ------------------------------------------------------------------ validity
def test_valid_fraction_counts_failures():
    holed = heart()
    holed[32, 38] = 0  # background inside the LV: a hole, and the LV touches background
    stray = heart()
    stray[2:6, 56:60] = 2  # a second MYO piece
    labels = np.stack([heart(), holed, stray, np.zeros((SIZE, SIZE), np.uint8)])
    result = valid_fraction(labels, (1.5, 1.5))
    assert result["count"] == 4 and result["valid"] == pytest.approx(0.5)
    assert list(result["failures"]) == list(SEVEN_CHECKS)
    expected = dict.fromkeys(SEVEN_CHECKS, 0)
    expected.update(holes=1, frontier_between_lv_and_background=1, disconnectivity_in_myo=1)
    assert result["failures"] == expected
    # one spacing per slice is accepted; a wrong number of them is not
    assert valid_fraction(labels, np.full((4, 2), 1.2))["valid"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="spacing"):
        valid_fraction(labels, np.ones((3, 2)))


# ------------------------------------------------------------------ descriptors
def test_descriptor_names():
    assert len(DESCRIPTORS) == len(set(DESCRIPTORS)) == 20
    assert shape_descriptors(heart(), (1.0, 1.0)).shape == (1, 20)


def test_disc_area_perimeter_circularity_and_missing_structures():
    labels = np.zeros((1, SIZE, SIZE), np.uint8)
    labels[0][disc((30, 33), 10)] = 3
    s = 1.5
    values = shape_descriptors(labels, (s, s))
    assert values.dtype == np.float64
    assert column(values, "lv_present")[0] == 1.0
    # a digitised disc of radius 10 has 305 pixels (pi r^2 = 314): within 5 %
    assert column(values, "lv_area_mm2")[0] == pytest.approx(math.pi * 10 ** 2 * s ** 2, rel=0.05)
    assert column(values, "lv_perimeter_mm")[0] == pytest.approx(2 * math.pi * 10 * s, rel=0.05)
    assert column(values, "lv_circularity")[0] == pytest.approx(1.0, abs=0.05)
    assert column(values, "lv_components")[0] == 1.0
    assert column(values, "lv_solidity")[0] > 0.95
    # no RV and no MYO: every column of theirs is 0, the flags included, and so are the
    # centroid distance and the wall thickness
    missing = [name for name in DESCRIPTORS if not name.startswith("lv_") or name.startswith("lv_rv")]
    assert len(missing) == 14
    np.testing.assert_array_equal(values[0, [COLUMN[name] for name in missing]], 0.0)
    # area follows the pixel area with anisotropic spacing
    stretched = shape_descriptors(labels, (1.0, 2.0))
    assert column(stretched, "lv_area_mm2")[0] == pytest.approx(305 * 2.0)


def test_heart_descriptors():
    s = 1.25
    values = shape_descriptors(np.stack([heart(), heart(lv_radius=6, wall=6)]), (s, s))
    assert np.all(values[:, [COLUMN[f"{x}_present"] for x in ("rv", "myo", "lv")]] == 1.0)
    np.testing.assert_array_equal(values[:, [COLUMN[f"{x}_components"] for x in ("rv", "myo", "lv")]], 1.0)
    # 2 A / P of a ring of radii 8 and 12 (4 pixels) and 6 and 12 (6 pixels), within 10 %
    np.testing.assert_allclose(column(values, "myo_thickness_mm"), [4 * s, 6 * s], rtol=0.1)
    # the filled MYO is the epicardial disc; the ring covers little of its hull
    assert np.all(np.abs(column(values, "myo_circularity") - 1.0) < 0.06)
    assert column(values, "myo_solidity")[0] < 0.65
    assert column(values, "rv_solidity")[0] < 0.8  # a crescent
    assert np.all(column(values, "lv_rv_centroid_distance_mm") > 12 * s)  # the RV lies beyond the wall


def test_centroid_distance_and_components():
    labels = np.zeros((1, SIZE, SIZE), np.uint8)
    labels[0][disc((32, 40), 5)] = 3
    labels[0][disc((32, 20), 5)] = 1
    labels[0][disc((10, 10), 3)] = 1  # a second RV piece, centred on the row of the first
    labels[0][disc((54, 10), 3)] = 1  # ... and a third, mirror image of the second
    values = shape_descriptors(labels, (1.0, 2.0))
    # RV centroid: (32, (20 * A5 + 10 * 2 * A3) / (A5 + 2 A3)), columns 2 mm apart
    a5, a3 = disc((32, 20), 5).sum(), disc((10, 10), 3).sum()
    rv_col = (20 * a5 + 10 * 2 * a3) / (a5 + 2 * a3)
    assert column(values, "lv_rv_centroid_distance_mm")[0] == pytest.approx((40 - rv_col) * 2.0)
    assert column(values, "rv_components")[0] == 3.0


# ------------------------------------------------------------------ Frechet distance
def _correlated(rng, n, d=4):
    mixing = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ mixing


def test_frechet_identical_and_shifted_sets(rng):
    a = _correlated(rng, 500)
    assert abs(frechet_distance(a, a)) < 1e-8
    shift = np.array([1.0, -2.0, 0.5, 3.0])
    assert frechet_distance(a, a + shift) == pytest.approx(shift @ shift, rel=1e-8)


def test_frechet_is_symmetric(rng):
    a, b = _correlated(rng, 300), 2.0 * _correlated(rng, 400) + 1.0
    ab, ba = frechet_distance(a, b), frechet_distance(b, a)
    assert ab > 1.0 and ab == pytest.approx(ba, rel=1e-9)


def test_frechet_matches_the_one_dimensional_closed_form(rng):
    # for 1-D Gaussians the distance is (m1 - m2)^2 + (s1 - s2)^2
    a = rng.normal(1.0, 2.0, size=(20000, 1))
    b = rng.normal(-0.5, 0.5, size=(20000, 1))
    sample = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert frechet_distance(a, b) == pytest.approx(sample, rel=1e-9)
    assert frechet_distance(a, b) == pytest.approx(1.5 ** 2 + 1.5 ** 2, abs=0.1)  # population values


def test_frechet_with_singular_covariances_is_finite(rng):
    a, b = _correlated(rng, 200, 3), _correlated(rng, 200, 3) + 1.0
    constant = np.ones((200, 1))
    padded = frechet_distance(np.hstack([a, constant]), np.hstack([b, constant]))
    assert math.isfinite(padded) and padded == pytest.approx(frechet_distance(a, b), abs=1e-4)
    with pytest.raises(ValueError, match="same number of features"):
        frechet_distance(a, constant)
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(a[:1], b)


def test_frechet_regularises_a_non_finite_square_root(rng, monkeypatch):
    from sdnet_tf.metrics import shape

    calls = []
    real_sqrtm = shape._sqrtm

    def first_fails(matrix):  # as scipy answers for a singular, non-diagonalisable product
        calls.append(matrix)
        return np.full_like(matrix, np.inf) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(shape, "_sqrtm", first_fails)
    a, b = rng.normal(2.0, 3.0, size=(50, 1)), rng.normal(0.0, 1.0, size=(60, 1))
    va, vb = a.var(ddof=1), b.var(ddof=1)
    # eps = 1 added to both variances, traces included: the 1-D closed form of the regularised pair
    expected = (a.mean() - b.mean()) ** 2 + (math.sqrt(va + 1.0) - math.sqrt(vb + 1.0)) ** 2
    assert frechet_distance(a, b, eps=1.0) == pytest.approx(expected, rel=1e-9)
    assert len(calls) == 2


def _hearts(rng, n, **fixed):
    """n hearts with jittered position, cavity, wall and RV size."""
    slices = []
    for _ in range(n):
        params = dict(centre=(32 + rng.integers(-3, 4), 38 + rng.integers(-3, 4)), lv_radius=rng.uniform(6, 9),
                      wall=rng.uniform(3, 5), rv_radius=rng.uniform(13, 16))
        params.update(fixed)
        slices.append(heart(**params))
    return np.stack(slices)


def test_frechet_shape_distance_ranks_sets(rng):
    real, alike = _hearts(rng, 40), _hearts(rng, 40)
    small_rv = _hearts(rng, 40, rv_radius=12.5)
    assert abs(frechet_shape_distance(real, real, (1.5, 1.5))) < 1e-6
    near = frechet_shape_distance(real, alike, (1.5, 1.5))
    far = frechet_shape_distance(real, small_rv, (1.5, 1.5))
    print(f"Frechet shape distance: same distribution {near:.2f}, smaller RV {far:.2f}")
    assert math.isfinite(near) and 0.0 < near < far / 3
    # one spacing per real slice needs the generated set's own
    with pytest.raises(ValueError, match="generated_spacing"):
        frechet_shape_distance(real, alike, np.full((40, 2), 1.5))
    same = frechet_shape_distance(real, alike, np.full((40, 2), 1.5), generated_spacing=(1.5, 1.5))
    assert same == pytest.approx(near)


# ------------------------------------------------------------------ pathology classification
def test_pathology_cv_separable_and_random(rng):
    groups = np.repeat(np.array(["NOR", "DCM", "HCM"]), 20)
    features = rng.normal(size=(60, 6))
    separable = features.copy()
    separable[:, 0] += 5.0 * np.repeat(np.arange(3), 20)  # 5 standard deviations between groups
    result = pathology_cv(separable, groups, trees=50)
    assert len(result["folds"]) == 10 and result["chance"] == pytest.approx(1 / 3)
    assert result["mean"] >= 0.9
    assert result["std"] == pytest.approx(np.std(result["folds"]))
    # no signal: within 0.2 of chance (the standard error of one 60-sample estimate is ~0.06)
    noise = pathology_cv(features, rng.permutation(groups), trees=50)
    print(f"pathology CV: separable {result['mean']:.3f}, random {noise['mean']:.3f} (chance 1/3)")
    assert abs(noise["mean"] - noise["chance"]) < 0.2
    assert pathology_cv(separable, groups, trees=50) == result  # seeded


def test_pathology_cv_chance_and_errors(rng):
    groups = np.array([0] * 30 + [1] * 20 + [2] * 10)
    result = pathology_cv(rng.normal(size=(60, 3)), groups, folds=5, trees=10)
    assert result["chance"] == pytest.approx(0.5) and len(result["folds"]) == 5
    with pytest.raises(ValueError, match="at least folds=10"):
        pathology_cv(rng.normal(size=(25, 3)), np.array([0] * 20 + [1] * 5), trees=10)
    with pytest.raises(ValueError, match=r"\(P, D\)"):
        pathology_cv(rng.normal(size=(25, 3)), np.zeros(24), trees=10)


# ------------------------------------------------------------------ code pooling
def test_pool_codes(rng):
    codes = [rng.normal(size=(5, 4, 4, 3)), rng.normal(size=(5, 2, 2, 2)), rng.normal(size=(5, 6))]
    pooled = pool_codes(codes)
    assert pooled.shape == (5, 11) and pooled.dtype == np.float64
    np.testing.assert_allclose(pooled[:, :3], codes[0].mean(axis=(1, 2)))
    np.testing.assert_allclose(pooled[:, 3:5], codes[1].mean(axis=(1, 2)))
    np.testing.assert_array_equal(pooled[:, 5:], codes[2])
    np.testing.assert_array_equal(pool_codes(codes[2]), codes[2])  # one array: a one-element list
    with pytest.raises(ValueError, match="first"):
        pool_codes([codes[0], codes[2][:4]])
