"""Golden values of the segmentation metrics on hand-made volumes; surface distances against brute force."""

import math

import numpy as np
import pytest

from sdnet_tf.metrics import clinical, overlap, surface

ZOOMS = (1.5, 1.5, 10.0)  # a typical ACDC voxel: 1.5 x 1.5 mm in-plane, 10 mm between slices
VOXEL_ML = 1.5 * 1.5 * 10.0 / 1000  # 0.0225 ml


def _box(shape, *ranges):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(lo, hi) for lo, hi in ranges)] = True
    return mask


# ---------------------------------------------------------------------------------------- overlap

def test_dice_of_overlapping_boxes():
    pred = _box((8, 8, 4), (0, 4), (0, 4), (0, 3))  # 4*4*3 = 48 voxels
    ref = _box((8, 8, 4), (1, 6), (0, 4), (0, 3))  # 5*4*3 = 60 voxels
    # overlap rows 1-3: 3*4*3 = 36; Dice = 2*36 / (48 + 60) = 72/108 = 2/3
    assert overlap.dice(pred, ref) == pytest.approx(2 / 3, abs=1e-12)
    assert overlap.dice(ref, pred) == pytest.approx(2 / 3, abs=1e-12)
    assert overlap.dice(pred, pred) == 1.0


def test_dice_empty_masks():
    empty = np.zeros((3, 3, 2), bool)
    assert math.isnan(overlap.dice(empty, empty))
    assert overlap.dice(empty, empty, empty=1.0) == 1.0
    one = empty.copy()
    one[1, 1, 1] = True
    assert overlap.dice(one, empty) == 0.0  # 2*0 / (1 + 0)
    assert overlap.dice(empty, one, empty=1.0) == 0.0


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 3, 2\).*\(3, 3, 3\)"):
        overlap.dice(np.zeros((3, 3, 2)), np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match=r"\(2, 2, 1\).*\(2, 2, 2\)"):
        overlap.slice_dice(np.zeros((2, 2, 1), np.uint8), np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="same shape"):
        surface.hausdorff(np.ones((3, 3)), np.ones((3, 4)), (1, 1))


def test_labels_and_zooms_are_validated():
    with pytest.raises(ValueError, match="labels"):
        overlap.acdc_row("x", np.full((2, 2, 1), 4, np.uint8), np.zeros((2, 2, 1), np.uint8), ZOOMS)
    with pytest.raises(ValueError, match="3 positive voxel sizes"):
        overlap.volume_ml(np.ones((2, 2, 2)), (1.5, 1.5))
    with pytest.raises(ValueError, match="positive"):
        surface.hausdorff(np.ones((2, 2)), np.ones((2, 2)), (1.0, 0.0))


def test_volume_with_anisotropic_zooms():
    mask = _box((8, 8, 4), (0, 4), (0, 4), (0, 3))
    # 48 voxels * 1.5 * 1.5 * 10 mm^3 = 1080 mm^3 = 1.08 ml
    assert overlap.volume_ml(mask, ZOOMS) == pytest.approx(1.08, abs=1e-12)
    assert overlap.volume_ml(np.zeros((2, 2, 2)), ZOOMS) == 0.0


def test_acdc_row_columns_and_error_sign():
    pred = np.zeros((4, 4, 2), np.uint8)
    ref = np.zeros_like(pred)
    pred[0, 0:4, 0] = 3  # LV: 4 predicted voxels
    ref[0, 0:2, 0] = 3  # LV: 2 reference voxels, both inside the prediction
    pred[2, 0, 1] = 1  # RV: 1 predicted voxel
    ref[2, 0:3, 1] = 1  # RV: 3 reference voxels, one of them the predicted one
    row = overlap.acdc_row("patient001_ED.nii.gz", pred, ref, ZOOMS)
    assert list(row) == overlap.ACDC_COLUMNS
    assert list(overlap.CLASSES) == ["LV", "RV", "MYO"]
    assert row["Name"] == "patient001_ED.nii.gz"
    # LV: Dice 2*2 / (4 + 2) = 2/3; volume 4 voxels; error (4 - 2) voxels, positive = over-segmented
    assert row["Dice LV"] == pytest.approx(2 / 3)
    assert row["Volume LV"] == pytest.approx(4 * VOXEL_ML)
    assert row["Err LV(ml)"] == pytest.approx(2 * VOXEL_ML)
    # RV: Dice 2*1 / (1 + 3) = 1/2; error (1 - 3) voxels, negative = under-segmented
    assert row["Dice RV"] == pytest.approx(0.5)
    assert row["Volume RV"] == pytest.approx(VOXEL_ML)
    assert row["Err RV(ml)"] == pytest.approx(-2 * VOXEL_ML)
    # MYO absent from both: Dice NaN, no volume, no error
    assert math.isnan(row["Dice MYO"])
    assert row["Volume MYO"] == 0.0 and row["Err MYO(ml)"] == 0.0


def _slice_volumes():
    pred = np.zeros((2, 3, 3), np.uint8)
    ref = np.zeros_like(pred)
    # slice 0: empty in both
    # slice 1:
    pred[..., 1] = [[3, 3, 0],
                    [1, 2, 0]]
    ref[..., 1] = [[3, 0, 0],
                   [1, 1, 2]]
    # slice 2: one LV pixel predicted, nothing in the reference
    pred[0, 0, 2] = 3
    return pred, ref


def test_slice_dice_golden():
    scores = overlap.slice_dice(*_slice_volumes())
    assert set(scores) == {"pooled", "LV", "RV", "MYO"}
    # slice 0 empty in both: 1 per class, and 0.1 / 0.1 = 1 pooled
    # slice 1: LV 2*1/(2+1); RV 2*1/(1+2); MYO 2*0/(1+1)
    #          pooled: same foreground label at (0,0) and (1,0) -> 2, sum p = 4, sum m = 4
    # slice 2: LV 0/(1+0); RV, MYO empty in both -> 1; pooled (0 + 0.1) / (1 + 0 + 0.1) = 1/11
    np.testing.assert_allclose(scores["LV"], [1, 2 / 3, 0], atol=1e-12)
    np.testing.assert_allclose(scores["RV"], [1, 2 / 3, 1], atol=1e-12)
    np.testing.assert_allclose(scores["MYO"], [1, 0, 1], atol=1e-12)
    np.testing.assert_allclose(scores["pooled"], [1, 4.1 / 8.1, 1 / 11], atol=1e-12)


def test_slice_dice_summary_is_the_mean_over_slices():
    summary = overlap.slice_dice_summary(*_slice_volumes())
    assert summary["LV"] == pytest.approx(5 / 9)  # (1 + 2/3 + 0) / 3
    assert summary["RV"] == pytest.approx(8 / 9)  # (1 + 2/3 + 1) / 3
    assert summary["MYO"] == pytest.approx(2 / 3)  # (1 + 0 + 1) / 3
    assert summary["pooled"] == pytest.approx((1 + 4.1 / 8.1 + 1 / 11) / 3)


def test_slice_dice_needs_3d():
    with pytest.raises(ValueError, match=r"\(H, W, S\)"):
        overlap.slice_dice(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))


# ---------------------------------------------------------------------------------------- surface

def test_surface_of_a_mask_touching_the_border():
    # the erosion treats the outside as background: a full 3x3x3 volume keeps only its centre
    # as interior, so 26 surface voxels
    assert surface.surface(np.ones((3, 3, 3))).sum() == 26
    # a 3x3x3 cube inside a 5x5x5 volume: the same 26 surface voxels
    assert surface.surface(_box((5, 5, 5), (1, 4), (1, 4), (1, 4))).sum() == 26


def test_single_voxels_two_slices_apart():
    pred = np.zeros((5, 5, 5), bool)
    ref = np.zeros_like(pred)
    pred[2, 2, 1] = True
    ref[2, 2, 3] = True
    # 2 slices * 10 mm, in both directions
    assert surface.hausdorff(pred, ref, ZOOMS) == pytest.approx(20.0)
    assert surface.assd(pred, ref, ZOOMS) == pytest.approx(20.0)
    assert surface.hd95(pred, ref, ZOOMS) == pytest.approx(20.0)
    # an in-plane offset of 3 columns at 1.5 mm: 4.5 mm
    pred = np.zeros_like(pred)
    ref = np.zeros_like(pred)
    pred[2, 1, 1] = True
    ref[2, 4, 1] = True
    assert surface.hausdorff(pred, ref, ZOOMS) == pytest.approx(4.5)
    # both offsets together: sqrt(4.5^2 + 20^2)
    ref = np.zeros_like(pred)
    ref[2, 4, 3] = True
    assert surface.hausdorff(pred, ref, ZOOMS) == pytest.approx(math.hypot(4.5, 20.0))


def test_boxes_one_slice_apart():
    pred = _box((5, 5, 5), (1, 4), (1, 4), (1, 3))  # slices 1-2
    ref = _box((5, 5, 5), (1, 4), (1, 4), (2, 4))  # slices 2-3
    # every voxel of a 3x3x2 box is on its surface (each has a background z-neighbour): 18 each.
    # pred slice 2 lies on ref's surface (distance 0), pred slice 1 is one slice (10 mm) from it
    # (an in-plane step would only add 1.5 mm); ref is symmetric.
    # HD = 10; ASSD = (18 * 0 + 18 * 10) / 36 = 5; hd95 of 18 zeros and 18 tens = 10
    assert surface.hausdorff(pred, ref, ZOOMS) == pytest.approx(10.0)
    assert surface.assd(pred, ref, ZOOMS) == pytest.approx(5.0)
    assert surface.hd95(pred, ref, ZOOMS) == pytest.approx(10.0)
    pred_to_ref, ref_to_pred = surface.surface_distances(pred, ref, ZOOMS)
    assert sorted(pred_to_ref) == [0.0] * 9 + [10.0] * 9
    assert sorted(ref_to_pred) == [0.0] * 9 + [10.0] * 9


def test_hd95_is_the_percentile_of_the_concatenated_distances():
    # 2-D, 1.5 mm pixels. ref: a 1-pixel-thick line of 10 pixels (all surface);
    # pred: the same line plus one pixel 6 rows (9 mm) below its start.
    ref = _box((12, 12), (0, 1), (0, 10))
    pred = ref.copy()
    pred[6, 0] = True
    zooms = (1.5, 1.5)
    # pred -> ref: 10 zeros and 9.0; ref -> pred: 10 zeros.
    # HD = 9; ASSD = 9 / 21 = 3/7.
    # hd95 = percentile 95 of the 21 values (20 zeros, then 9): position 0.95 * 20 = 19 -> 0.
    # (The maximum of the directed percentiles would give 0.5 * 0 + 0.5 * 9 = 4.5 for pred -> ref.)
    assert surface.hausdorff(pred, ref, zooms) == pytest.approx(9.0)
    assert surface.assd(pred, ref, zooms) == pytest.approx(3 / 7)
    assert surface.hd95(pred, ref, zooms) == pytest.approx(0.0, abs=1e-12)


def test_surface_metrics_with_empty_masks():
    empty = np.zeros((4, 4, 3), bool)
    one = empty.copy()
    one[1, 1, 1] = True
    for metric in (surface.hausdorff, surface.assd, surface.hd95):
        assert metric(empty, empty, ZOOMS) == 0.0
        assert math.isnan(metric(one, empty, ZOOMS))
        assert math.isnan(metric(empty, one, ZOOMS))
    pred_to_ref, ref_to_pred = surface.surface_distances(one, empty, ZOOMS)
    assert pred_to_ref.tolist() == [math.inf] and ref_to_pred.size == 0


def _brute_surface(mask):
    # a mask voxel is on the surface when one of its face neighbours is background or outside
    padded = np.pad(mask, 1, constant_values=False)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    interior = mask.copy()
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            interior &= np.roll(padded, shift, axis=axis)[inner]
    return mask & ~interior


def _brute_distances(pred, ref, zooms):
    points_pred = np.argwhere(_brute_surface(pred)) * np.asarray(zooms)
    points_ref = np.argwhere(_brute_surface(ref)) * np.asarray(zooms)
    pairwise = np.sqrt(((points_pred[:, None, :] - points_ref[None, :, :]) ** 2).sum(-1))
    return pairwise.min(axis=1), pairwise.min(axis=0)


@pytest.mark.parametrize("shape", [(8, 9, 4), (8, 9)])
def test_surface_distances_against_brute_force(rng, shape):
    for _ in range(5):
        zooms = rng.uniform(0.5, 10.0, size=len(shape))
        pred = rng.random(shape) < rng.uniform(0.2, 0.8)
        ref = rng.random(shape) < rng.uniform(0.2, 0.8)
        pred.flat[0] = ref.flat[-1] = True  # never empty
        pred_to_ref, ref_to_pred = _brute_distances(pred, ref, zooms)
        got_pred_to_ref, got_ref_to_pred = surface.surface_distances(pred, ref, zooms)
        # both sides list surface voxels in C order, so the arrays line up element by element
        np.testing.assert_allclose(got_pred_to_ref, pred_to_ref, atol=1e-6)
        np.testing.assert_allclose(got_ref_to_pred, ref_to_pred, atol=1e-6)
        both = np.concatenate([pred_to_ref, ref_to_pred])
        assert surface.hausdorff(pred, ref, zooms) == pytest.approx(both.max(), abs=1e-6)
        assert surface.assd(pred, ref, zooms) == pytest.approx(both.mean(), abs=1e-6)
        assert surface.hd95(pred, ref, zooms) == pytest.approx(np.percentile(both, 95), abs=1e-6)


@pytest.mark.parametrize("shape", [(40, 48, 6), (40, 48)])
def test_surface_distances_of_small_masks_in_a_large_volume(rng, shape):
    # the erosion and distance transform run on the masks' bounding box: small blobs
    # anywhere in a larger volume, one of them touching the array's border (a surface there),
    # against brute force over the whole volume
    for trial in range(4):
        zooms = rng.uniform(0.5, 10.0, size=len(shape))
        pred, ref = np.zeros(shape, bool), np.zeros(shape, bool)
        for mask in (pred, ref):
            corner = [int(rng.integers(0, n - 4)) for n in shape]
            block = tuple(slice(c, c + int(rng.integers(2, 5))) for c in corner)
            mask[block] = rng.random(mask[block].shape) < 0.8
            mask[tuple(c for c in corner)] = True
        if trial % 2:
            pred[(0,) * len(shape)] = True  # the corner voxel: on the volume's border along every axis
        expected = _brute_distances(pred, ref, zooms)
        for got, want in zip(surface.surface_distances(pred, ref, zooms), expected):
            np.testing.assert_allclose(got, want, atol=1e-6)
        both = np.concatenate(expected)
        figures = surface.summaries(pred, ref, zooms)
        assert figures == {"HD": surface.hausdorff(pred, ref, zooms), "HD95": surface.hd95(pred, ref, zooms),
                           "ASSD": surface.assd(pred, ref, zooms)}
        assert figures["HD"] == pytest.approx(both.max(), abs=1e-6)
        assert figures["HD95"] == pytest.approx(np.percentile(both, 95), abs=1e-6)
        assert figures["ASSD"] == pytest.approx(both.mean(), abs=1e-6)


def test_surface_summaries_of_empty_masks():
    empty = np.zeros((4, 4, 3), bool)
    one = empty.copy()
    one[1, 1, 1] = True
    assert surface.summaries(empty, empty, ZOOMS) == {"HD": 0.0, "HD95": 0.0, "ASSD": 0.0}
    assert all(math.isnan(v) for v in surface.summaries(one, empty, ZOOMS).values())


# --------------------------------------------------------------------------------------- clinical

def test_clinical_indices_golden():
    zooms = (2.0, 2.0, 5.0)  # 20 mm^3 = 0.02 ml per voxel
    ed = np.zeros((10, 10, 4), np.uint8)
    es = np.zeros_like(ed)
    ed[0:5, 0:10, 0] = 3  # LV ED: 50 voxels = 1.0 ml
    es[0:2, 0:10, 0] = 3  # LV ES: 20 voxels = 0.4 ml
    ed[0:3, 0:10, 1] = 1  # RV ED: 30 voxels = 0.6 ml
    es[0:3, 0:5, 1] = 1  # RV ES: 15 voxels = 0.3 ml
    ed[0:5, 0:5, 2] = 2  # MYO ED: 25 voxels = 0.5 ml
    es[0:1, 0:5, 2] = 2  # MYO at ES does not enter the mass
    indices = clinical.clinical_indices(ed, es, zooms)
    assert tuple(indices) == clinical.CLINICAL_INDICES
    assert indices["LV_EDV"] == pytest.approx(1.0)
    assert indices["LV_ESV"] == pytest.approx(0.4)
    assert indices["LV_EF"] == pytest.approx(60.0)  # 100 * (1.0 - 0.4) / 1.0
    assert indices["RV_EDV"] == pytest.approx(0.6)
    assert indices["RV_ESV"] == pytest.approx(0.3)
    assert indices["RV_EF"] == pytest.approx(50.0)  # 100 * (0.6 - 0.3) / 0.6
    assert indices["MYO_mass"] == pytest.approx(0.525)  # 1.05 g/ml * 0.5 ml


def test_ejection_fraction_without_diastolic_volume_is_nan():
    empty = np.zeros((3, 3, 2), np.uint8)
    indices = clinical.clinical_indices(empty, empty, ZOOMS)
    assert math.isnan(indices["LV_EF"]) and math.isnan(indices["RV_EF"])
    assert indices["LV_EDV"] == 0.0 and indices["MYO_mass"] == 0.0


def test_agreement_golden():
    predicted = [1.0, 2.0, 3.0, 4.0, float("nan"), 7.0]
    reference = [1.0, 1.0, 2.0, 2.0, 5.0, float("nan")]
    stats = clinical.agreement(predicted, reference)
    # the last two pairs hold a NaN and are dropped; differences 0, 1, 1, 2
    assert stats["n"] == 4
    assert stats["bias"] == pytest.approx(1.0)
    assert stats["mae"] == pytest.approx(1.0)
    # deviations from the bias -1, 0, 0, 1: sum of squares 2, / (4 - 1)
    std = math.sqrt(2 / 3)
    assert stats["std"] == pytest.approx(std)
    assert stats["loa_low"] == pytest.approx(1.0 - 1.96 * std)
    assert stats["loa_high"] == pytest.approx(1.0 + 1.96 * std)
    # centred: x = -1.5, -0.5, 0.5, 1.5 and y = -0.5, -0.5, 0.5, 0.5
    # sum xy = 2, sum x^2 = 5, sum y^2 = 1: r = 2 / sqrt(5)
    assert stats["correlation"] == pytest.approx(2 / math.sqrt(5))


def test_agreement_degenerate_cases():
    constant = clinical.agreement([0.1, 0.1, 0.1], [1.0, 2.0, 4.0])  # no variance on one side
    assert math.isnan(constant["correlation"])
    assert constant["n"] == 3 and not math.isnan(constant["std"])
    single = clinical.agreement([2.0, float("nan")], [1.0, 3.0])
    assert single["n"] == 1 and single["bias"] == 1.0
    assert math.isnan(single["correlation"]) and math.isnan(single["std"]) and math.isnan(single["loa_low"])
    nothing = clinical.agreement([float("nan")], [1.0])
    assert nothing["n"] == 0 and math.isnan(nothing["bias"]) and math.isnan(nothing["mae"])
    with pytest.raises(ValueError, match="same length"):
        clinical.agreement([1.0, 2.0], [1.0])
