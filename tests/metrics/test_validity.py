"""Anatomical validity checks: hand-made masks per failure mode, connectivity, measures, real ACDC."""

import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from sdnet_tf.data.phantom import patient_parameters, slice_labels
from sdnet_tf.metrics.validity import (CHECKS, HOLE_CHECKS, PAINCHAUD_CHECKS, SEVEN_CHECKS, check_slice, circularity,
                                       concavity_depth, convex_hull_mask, is_valid, perimeter, volume_validity)
from support.helpers import ROOT

REAL = ROOT.parent / "shared" / "data" / "acdc-training"

# the hand-made heart: LV disc (radius 8) inside a MYO ring (8 to 12) centred at (32, 38), and
# an RV crescent (a disc of radius 15 centred at (32, 27), outside the ring) against the septum
SIZE = 64
ROWS, COLS = np.mgrid[:SIZE, :SIZE]
FROM_LV = np.hypot(ROWS - 32, COLS - 38)
RV_DISC = np.hypot(ROWS - 32, COLS - 27) < 15


def heart():
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[RV_DISC & (FROM_LV >= 12)] = 1
    labels[FROM_LV < 12] = 2
    labels[FROM_LV < 8] = 3
    return labels


def failed(labels, checks=PAINCHAUD_CHECKS, spacing=(1.0, 1.0)):
    return {name for name, found in check_slice(labels, spacing, checks).items() if found}


def relabel(labels, window, old, new):
    """Set the pixels of ``window`` (a slice pair) that hold ``old`` to ``new``."""
    part = labels[window]
    part[part == old] = new


# one edit of the heart per failure mode
def lv_hole(m):
    m[32, 38] = 0


def rv_hole(m):
    m[31:34, 18:21] = 0


def myo_hole(m):
    m[32, 48] = 0  # inside the 4-pixel free wall


def gap_between_lv_and_myo(m):
    m[(FROM_LV >= 7) & (FROM_LV < 8) & (COLS > 38)] = 0


def gap_between_rv_and_myo(m):
    m[31:34, 26] = 0  # RV to the left, above and below, MYO to the right


def two_lv_pieces(m):
    relabel(m, np.s_[32, :], 3, 2)  # a MYO bar across the cavity


def two_rv_pieces(m):
    relabel(m, np.s_[32, :], 1, 0)  # both halves still lie against the MYO


def broken_ring(m):
    m[(m == 2) & (np.abs(COLS - 38) <= 1)] = 0  # cut at the top and at the bottom


def stray_myo(m):
    m[4:8, 54:58] = 2


def rv_away_from_myo(m):
    m[m == 1] = 0
    m[RV_DISC & (FROM_LV >= 14)] = 1  # a 2-pixel gap


def lv_touches_rv(m):
    m[32, 27:31] = 1  # the RV cuts through the septum


def lv_touches_background(m):
    m[32, 46:50] = 0  # a cut through the free wall


def lv_notch(m):
    relabel(m, np.s_[30:35, 38:46], 3, 2)  # a 5-pixel-wide MYO tongue, 7 pixels deep


def rv_notch(m):
    relabel(m, np.s_[30:35, 13:25], 1, 0)  # 5 pixels wide, 11 deep from the free side


def myo_notch(m):
    relabel(m, np.s_[30:35, 47:50], 2, 0)  # 3 of the free wall's 4 pixels


def edited(edit):
    labels = heart()
    edit(labels)
    return labels


# ------------------------------------------------------------------------------- the sets
def test_check_sets():
    assert len(SEVEN_CHECKS) == 7 and set(SEVEN_CHECKS) <= set(PAINCHAUD_CHECKS) == set(CHECKS)
    # Painchaud's 16 criteria, plus the thesis' combined hole check
    assert len(PAINCHAUD_CHECKS) == 17 and set(HOLE_CHECKS) < set(PAINCHAUD_CHECKS) - set(SEVEN_CHECKS)


def test_valid_heart_passes_every_check():
    labels = heart()
    assert (labels == 1).sum() > 200 and (labels == 2).sum() > 200 and (labels == 3).sum() > 150
    assert check_slice(labels, checks=PAINCHAUD_CHECKS) == {name: False for name in PAINCHAUD_CHECKS}
    assert is_valid(labels) and is_valid(labels, (1.5, 1.5), PAINCHAUD_CHECKS)
    assert list(check_slice(labels)) == list(SEVEN_CHECKS)


# ------------------------------------------------------------------------------ the defects
# Expected failures under the thesis' 7 checks and under Painchaud's set. "holes" is the OR of
# the five hole checks, so it comes with each of them. Extra checks a defect cannot avoid:
# - anything inside the LV or between the LV and the MYO borders the LV, so a background hole
#   there also makes the LV touch background;
# - a MYO ring cut through (broken, or crossed by the RV or background to the LV) is open, so
#   its filled outline is a C shape: concave, and here also thin (ratio 0.18 < 0.2);
# - a second MYO piece lies outside the ring's convex outline, so the MYO is concave.
DEFECTS = [
    (lv_hole, {"holes", "frontier_between_lv_and_background"}, {"holes_in_lv"}),
    (rv_hole, {"holes"}, {"holes_in_rv"}),
    (myo_hole, {"holes"}, {"holes_in_myo"}),
    (gap_between_lv_and_myo, {"holes", "frontier_between_lv_and_background"}, {"holes_between_lv_and_myo"}),
    (gap_between_rv_and_myo, {"holes"}, {"holes_between_rv_and_myo"}),
    (two_lv_pieces, {"disconnectivity_in_lv"}, set()),
    (two_rv_pieces, {"disconnectivity_in_rv"}, set()),
    (broken_ring, {"disconnectivity_in_myo", "frontier_between_lv_and_background"},
     {"myo_concavity", "myo_circularity"}),
    (stray_myo, {"disconnectivity_in_myo"}, {"myo_concavity"}),
    (rv_away_from_myo, {"rv_disconnected_from_myo"}, set()),
    (lv_touches_rv, {"frontier_between_lv_and_rv"}, {"myo_concavity", "myo_circularity"}),
    (lv_touches_background, {"frontier_between_lv_and_background"}, {"myo_concavity", "myo_circularity"}),
    (lv_notch, set(), {"lv_concavity"}),
    (myo_notch, set(), {"myo_concavity"}),
]


@pytest.mark.parametrize("edit, seven, painchaud_extra", DEFECTS, ids=[d[0].__name__ for d in DEFECTS])
def test_each_defect_is_flagged_by_its_check(edit, seven, painchaud_extra):
    labels = edited(edit)
    assert failed(labels, SEVEN_CHECKS) == seven
    assert failed(labels) == seven | painchaud_extra
    assert not is_valid(labels, checks=PAINCHAUD_CHECKS)
    assert is_valid(labels) == (not seven)


def test_concavity_thresholds_are_in_mm():
    # Painchaud's limits: LV 4 mm, RV 30 mm, MYO 0 mm
    assert concavity_depth(edited(lv_notch) == 3) == 7.0
    assert failed(edited(lv_notch), spacing=(2.0, 2.0)) == {"lv_concavity"}  # 14 mm
    assert failed(edited(lv_notch), spacing=(0.1, 0.1)) == set()  # 0.7 mm
    # the crescent itself is 8 pixels deep around the septum; the notch makes it 11
    assert concavity_depth(heart() == 1) == 8.0 and concavity_depth(edited(rv_notch) == 1) == 11.0
    assert failed(edited(rv_notch), spacing=(3.0, 3.0)) == {"rv_concavity"}  # 33 mm
    assert failed(heart(), spacing=(3.0, 3.0)) == set()  # 24 mm
    assert failed(edited(rv_notch)) == set()  # 11 mm
    # any notch that survives the 3 x 3 erosion fails the MYO, however small the pixels
    assert failed(edited(myo_notch), spacing=(0.1, 0.1)) == {"myo_concavity"}
    # only the concavity checks read the spacing: tiny pixels change nothing else
    assert failed(edited(two_lv_pieces), spacing=(0.1, 0.1)) == {"disconnectivity_in_lv"}


def test_elongated_structures_are_not_circular():
    # a 2 x 40 LV bar in a 3-pixel MYO frame: ratio 0.16; the frame's filled outline is 0.43
    bar = np.zeros((SIZE, SIZE), np.uint8)
    bar[26:34, 10:56] = 2
    bar[29:31, 13:53] = 3
    assert circularity(bar == 3) == pytest.approx(0.157, abs=1e-3)
    assert failed(bar) == {"lv_circularity"} and is_valid(bar)
    thin_myo = np.zeros((SIZE, SIZE), np.uint8)
    thin_myo[30:32, 10:50] = 2
    assert failed(thin_myo) == {"myo_circularity"}
    assert circularity(FROM_LV < 8) == pytest.approx(1.0, abs=0.05)


# ----------------------------------------------------------------- absent structures, edges
def test_empty_and_partial_slices():
    empty = np.zeros((40, 50), np.uint8)
    assert check_slice(empty, checks=PAINCHAUD_CHECKS) == {name: False for name in PAINCHAUD_CHECKS}
    # MYO only (an apical slice below the cavity) is valid as one solid piece
    solid = np.where(FROM_LV < 10, 2, 0).astype(np.uint8)
    assert failed(solid) == set()
    ring = np.where((FROM_LV >= 6) & (FROM_LV < 10), 2, 0).astype(np.uint8)
    assert failed(ring) == {"holes", "holes_in_myo"}  # a ring around background, no cavity
    # an RV alone is not "disconnected from the MYO"; an LV alone touches background
    assert failed(np.where(heart() == 1, 1, 0).astype(np.uint8)) == set()
    lv_alone = np.where(FROM_LV < 8, 3, 0).astype(np.uint8)
    assert failed(lv_alone, SEVEN_CHECKS) == {"frontier_between_lv_and_background"}


def test_image_border_is_neither_background_nor_enclosing():
    # the heart cut by the image edge: the LV meets the border, not background
    cut = heart()[:, 35:]
    cut[cut == 1] = 0
    assert (cut[:, 0] == 3).any() and failed(cut, SEVEN_CHECKS) == set()
    # background reaching the image edge through a MYO ring is not a hole
    open_ring = np.where((FROM_LV >= 6) & (FROM_LV < 10), 2, 0).astype(np.uint8)[:, 38:]
    assert failed(open_ring, SEVEN_CHECKS) == set()


def test_connectivity():
    # a one-pixel MYO ring closed only by diagonal steps (|dr| + |dc| == 3) around an LV
    # diamond: one 8-connected ring, and the LV meets background only at corners, so it
    # neither touches background nor leaks out
    dist = np.abs(ROWS - 10) + np.abs(COLS - 10)
    diamond = np.select([dist <= 2, dist == 3], [3, 2], 0).astype(np.uint8)
    assert failed(diamond, SEVEN_CHECKS) == set()
    # expert masks leave one-pixel diagonal steps of background where RV and MYO meet: closed
    # to a 4-connected background, open to an 8-connected one, and not a hole here
    step = heart()
    step[20, 34] = 0
    assert step[19, 34] == 1 and step[20, 33] == 1 and step[20, 35] == 1 and step[21, 34] == 2
    assert step[19, 35] == 0
    assert ndimage.binary_fill_holes(step > 0)[20, 34]
    assert failed(step) == set()
    # the septum thinned to a diagonal step: LV and RV meet only at a corner, so they do not
    # touch, and the cavity, closed by the MYO only together with the RV, is no gap between them
    septum = heart()
    septum[32, 28:31] = 3
    septum[31, 27] = 1
    assert septum[31, 28] == septum[32, 27] == 2
    assert failed(septum) == set()
    # LV halves split by a MYO bar with a step, touching only at the step's corner: one
    # 8-connected component (two 4-connected ones)
    corner = heart()
    relabel(corner, np.s_[32, :39], 3, 2)
    relabel(corner, np.s_[31, 39:], 3, 2)
    assert corner[31, 38] == corner[32, 39] == 3 and ndimage.label(corner == 3)[1] == 2
    assert failed(corner, SEVEN_CHECKS) == set()


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="2-D"):
        check_slice(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="only 0"):
        check_slice(np.full((4, 4), 4, np.uint8))
    with pytest.raises(ValueError, match="only 0"):
        check_slice(np.full((4, 4), 1.5))
    with pytest.raises(ValueError, match="unknown checks"):
        check_slice(heart(), checks=("holes", "lv_size"))
    with pytest.raises(ValueError, match="spacing"):
        check_slice(heart(), spacing=(1.0, 0.0))
    # float label maps, as nibabel's get_fdata gives them, are fine
    assert is_valid(heart().astype(np.float64))


# ---------------------------------------------------------------------------------- volumes
def test_volume_validity():
    volume = np.stack([heart(), np.zeros((SIZE, SIZE), np.uint8), edited(lv_touches_background)], axis=-1)
    result = volume_validity(volume, (1.25, 1.25, 10.0))
    assert result.valid == [True, True, False] and result.fraction == pytest.approx(2 / 3)
    assert [found["frontier_between_lv_and_background"] for found in result.slices] == [False, False, True]
    slices, valid, fraction = volume_validity(volume, (1.25, 1.25), PAINCHAUD_CHECKS)
    assert set(slices[0]) == set(PAINCHAUD_CHECKS) and valid == [True, True, False]
    with pytest.raises(ValueError, match="volume"):
        volume_validity(heart(), (1.0, 1.0))


# ---------------------------------------------------------------- measures and the phantom
def test_measures_match_scikit_image(rng):
    measure = pytest.importorskip("skimage.measure")
    morphology = pytest.importorskip("skimage.morphology")
    shapes = [ndimage.gaussian_filter(rng.random((40, 50)), 2) > 0.52 for _ in range(40)]
    shapes += [heart() == value for value in (1, 2, 3)] + [edited(lv_notch) == 3, edited(rv_notch) == 1]
    shapes += [np.eye(7, dtype=bool), np.pad(np.ones((1, 1), bool), 3)]
    for shape in shapes:
        if shape.any():
            np.testing.assert_array_equal(convex_hull_mask(shape), morphology.convex_hull_image(shape))
            assert perimeter(shape) == pytest.approx(measure.perimeter(shape, 4))
    assert not convex_hull_mask(np.zeros((5, 5), bool)).any() and perimeter(np.zeros((5, 5), bool)) == 0.0
    assert np.isnan(concavity_depth(np.zeros((5, 5), bool))) and np.isnan(circularity(np.zeros((5, 5), bool)))


def test_phantom_anatomy_is_valid_and_defects_are_not():
    slices = []
    for number in (1, 4):  # a normal heart and the enlarged-RV group
        params = patient_parameters(0, number)
        slices += [slice_labels(params, position, phase) for position in (0.0, 0.5, 1.0) for phase in (0.0, 1.0)]
    assert all(is_valid(labels) for labels in slices), "phantom anatomy is valid"
    assert not any(is_valid(edited(edit)) for edit, seven, _ in DEFECTS if seven)


# ---------------------------------------------------------------- the expert ACDC masks
@pytest.mark.skipif(not REAL.is_dir(), reason="the ACDC training folder is not beside the repository")
def test_expert_acdc_masks_are_valid():
    """>= 99% of the slices of the 200 expert ED/ES masks are valid by the 7 checks."""
    start = time.perf_counter()
    seven = painchaud = total = 0
    for path in sorted(REAL.glob("patient*/patient*_frame*_gt.nii.gz")):
        image = nib.load(str(path))
        volume = np.asarray(image.dataobj)
        spacing = image.header.get_zooms()[:2]
        for k in range(volume.shape[2]):
            failed_checks = check_slice(volume[..., k], spacing, PAINCHAUD_CHECKS)
            seven += not any(failed_checks[name] for name in SEVEN_CHECKS)
            painchaud += not any(failed_checks.values())
            total += 1
    assert total > 1800, f"expected the 100 patients' ED/ES slices, found {total}"
    print(f"\nexpert ACDC masks: {100 * seven / total:.2f}% valid by the 7 checks, "
          f"{100 * painchaud / total:.2f}% by the Painchaud set ({total} slices, "
          f"{time.perf_counter() - start:.1f} s)")
    assert seven / total >= 0.99
