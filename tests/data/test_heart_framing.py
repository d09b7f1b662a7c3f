"""Masks framed about each heart, as the NVAE thesis' code frames them (``data.framing: heart``)."""

import numpy as np
import pytest

from sdnet_tf.data.arrays import DataError
from sdnet_tf.data.masks import HEART_PADDING, heart_frame, load_mask_sets, sample_pixel_mm


def _frame():
    """Two slices of one frame whose labels together span rows 10..30 and columns 15..29."""
    labels = np.zeros((2, 60, 70), np.uint8)
    labels[0, 10:31, 18:26] = 3  # 21 rows
    labels[1, 14:20, 15:30] = 1  # 15 columns, the widest
    return labels


def test_heart_frame_is_a_square_about_the_union_box_of_every_slice_plus_padding():
    labels = _frame()
    framed, images, side = heart_frame(labels, 48)
    assert framed.shape == (2, 48, 48) and framed.dtype == np.uint8 and images is None
    assert side == 20 + HEART_PADDING  # the longer extent (rows 10..30) plus 4 pixels, as the thesis' code
    # the 21 labelled rows of slice 0 fill 21/24 of the 48 output rows, centred in the frame
    rows = np.flatnonzero(framed[0].any(axis=1))
    assert abs(len(rows) - 21 / 24 * 48) <= 1 and abs(rows[0] - (47 - rows[-1])) <= 1
    # both slices share the window: slice 1's 15 columns fill 15/24 of the output
    cols = np.flatnonzero(framed[1].any(axis=0))
    assert abs(len(cols) - 15 / 24 * 48) <= 1
    assert set(np.unique(framed)) == {0, 1, 3}  # nearest neighbour: no new labels


def test_heart_frame_images_share_the_window_and_an_empty_frame_keeps_its_whole_slice():
    labels = _frame()
    images = (labels == 3).astype(np.float32)[..., None]
    framed, framed_images, _ = heart_frame(labels, 48, images)
    assert framed_images.shape == (2, 48, 48, 1) and framed_images.dtype == np.float32
    agree = (framed_images[0, ..., 0] > 0.5) == (framed[0] == 3)
    assert agree.mean() > 0.98  # linear for images, nearest for labels: they differ at edges only
    empty, _, side = heart_frame(np.zeros((3, 40, 30), np.uint8), 16)
    assert side == 40 and empty.shape == (3, 16, 16) and not empty.any()


def test_heart_framed_mask_sets_fill_the_frame_with_each_heart(phantom_cohort_8, tmp_path):
    sets, _, description = load_mask_sets(phantom_cohort_8, size=32, spacing=3.0, cache_dir=tmp_path,
                                          progress=False, framing="heart")
    assert description["framing"] == "heart"
    spacing, _, _ = load_mask_sets(phantom_cohort_8, size=32, spacing=3.0, cache_dir=tmp_path, progress=False)
    for name, subset in sets.items():
        assert len(subset) == len(spacing[name]) and subset.labels.shape[1:] == (32, 32)
        for patient in np.unique(subset.patients):
            for phase in (0, 1):
                frame = subset.labels[(subset.patients == patient) & (subset.phases == phase)]
                rows, cols = np.flatnonzero(frame.any(axis=(0, 2))), np.flatnonzero(frame.any(axis=(0, 1)))
                extent = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
                assert extent >= 32 * 0.8, (name, patient, phase, extent)  # the heart fills the frame
    with pytest.raises(DataError, match="data.framing 'tight': choose one of spacing, heart"):
        load_mask_sets(phantom_cohort_8, size=32, spacing=3.0, cache_dir=tmp_path, progress=False, framing="tight")


def test_a_heart_framed_prior_is_refused_for_the_shape_loss_and_the_t_l_network():
    from sdnet_tf.config import Config, PriorConfig, TLConfig
    from sdnet_tf.training.prior_trainer import check_prior_fits, check_tl_prior

    prior = PriorConfig()
    prior.data.framing = "heart"
    sdnet = Config()
    with pytest.raises(DataError, match="shape prior runs/nvae: trained on masks framed about each heart"):
        check_prior_fits(prior, sdnet, "runs/nvae")
    prior.model.kind = "acnn"
    with pytest.raises(DataError, match="framed about each heart"):
        check_tl_prior(prior, TLConfig(), "runs/acnn")


def test_a_u_net_cannot_read_heart_framed_images(phantom_cohort_8, tmp_path):
    """Framing crops about the ground truth's heart: a test image has none (the T-L network
    shares this check, ``prior_trainer._prepare``)."""
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, ["baseline", "train", "unet", "--data", str(phantom_cohort_8), "-o",
                                       str(tmp_path / "unet"), "--set", "data.framing=heart", "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "data.framing heart is for shape priors only" in result.output
    assert not (tmp_path / "unet").exists()


def test_heart_framed_masks_carry_each_frames_pixel_size_so_areas_in_mm2_are_kept(phantom_cohort_8, tmp_path):
    """A heart-framed slice's pixels are its frame's window side over the output size; measured
    with it, each frame's labelled area in mm^2 is the one SDNet's frame gives (within the
    resampling's error), and samples are measured at the training masks' median pixel size."""
    framed, _, _ = load_mask_sets(phantom_cohort_8, size=32, spacing=5.0, cache_dir=tmp_path, progress=False,
                                  framing="heart")
    plain, _, _ = load_mask_sets(phantom_cohort_8, size=32, spacing=5.0, cache_dir=tmp_path, progress=False)
    assert np.all(plain["test"].pixel_mm == 5.0) and sample_pixel_mm(plain) == 5.0
    assert plain["test"].pixel_spacing().shape == (len(plain["test"]), 2)
    test, reference = framed["test"], plain["test"]
    assert np.all(test.pixel_mm < 5.0)  # the heart, magnified to fill the frame
    ratios = []
    for patient in np.unique(test.patients):
        for phase in (0, 1):
            chosen = (test.patients == patient) & (test.phases == phase)
            pixel = np.unique(test.pixel_mm[chosen])
            assert len(pixel) == 1  # one window per frame
            area = np.count_nonzero(test.labels[chosen]) * pixel[0] ** 2
            ratios.append(area / (np.count_nonzero(reference.labels[(reference.patients == patient)
                                                                     & (reference.phases == phase)]) * 25.0))
    assert np.allclose(ratios, 1.0, atol=0.1), ratios
    assert sample_pixel_mm(framed) == pytest.approx(np.median(framed["training"].pixel_mm))
