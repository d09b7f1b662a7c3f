"""Resolution augmentation (Liu et al., M&Ms 2020): a disc of known radius in mm measures right
after the rescale, masks stay one-hot, and the sampler's draws lie in the range and are a pure
function of (seed, iteration)."""

import numpy as np
import pytest

from sdnet_tf.data.augment import rescale_batch
from sdnet_tf.data.synthetic import synthetic_arrays
from sdnet_tf.training.schedule import BatchSampler


def disc(size, spacing, radius_mm):
    """(image (1, size, size, 1) 1 inside a centred disc of ``radius_mm``, 0 outside; its one-hot
    mask (1, size, size, 3) in channel 1) on pixels of ``spacing`` mm."""
    centre = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    inside = np.hypot(yy - centre, xx - centre) * spacing < radius_mm
    mask = np.zeros((1, size, size, 3), np.float32)
    mask[0, ..., 1] = inside
    return inside[None, ..., None].astype(np.float32), mask


@pytest.mark.parametrize("pixel", [0.8, 1.0, 1.6, 2.5])
def test_a_disc_keeps_its_radius_in_mm_at_the_drawn_pixel_size(pixel):
    spacing, radius = 1.0, 20.0  # a 20 mm disc on 1 mm pixels
    image, mask = disc(96, spacing, radius)
    out_image, out_mask = rescale_batch(image, mask, [pixel], spacing)
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    for measured in (out_mask[0, ..., 1], out_image[0, ..., 0] > 0.5):
        radius_mm = np.sqrt(measured.sum() / np.pi) * pixel  # pixels are now `pixel` mm on a side
        assert abs(radius_mm - radius) < 0.02 * radius, (pixel, radius_mm)
    # the disc stays centred: its centroid moves by less than a pixel
    rows, cols = np.nonzero(out_mask[0, ..., 1])
    assert abs(rows.mean() - 47.5) < 1 and abs(cols.mean() - 47.5) < 1


def test_masks_stay_one_hot_and_the_identity_size_changes_nothing():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (3, 40, 40))
    masks = np.stack([labels == k for k in (1, 2, 3)], axis=-1).astype(np.float32)
    images = rng.normal(size=(3, 40, 40, 1)).astype(np.float32)
    out_images, out_masks = rescale_batch(images, masks, [0.7, 1.37, 2.2], 1.37)
    assert set(np.unique(out_masks).tolist()) <= {0.0, 1.0} and out_masks.sum(axis=-1).max() == 1.0
    # shrunk to round(40 x 1.37 / 2.2) = 25 rows, padded by 7 above and 8 below with background
    assert out_masks[2, :7].sum() == out_masks[2, 32:].sum() == 0 and out_masks[2, 7].sum() > 0
    np.testing.assert_allclose(out_images[1], images[1], atol=1e-6)  # the arrays' own pixel size
    assert np.array_equal(out_masks[1], masks[1])
    with pytest.raises(ValueError, match="must be positive"):
        rescale_batch(images, masks, [1.0, 0.0, 1.0], 1.37)


def test_the_sampler_draws_sizes_in_the_range_as_a_pure_function_of_seed_and_iteration():
    arrays = synthetic_arrays(24, 8, 32, labelled_fraction=0.5, seed=0)
    kwargs = dict(seed=3, nz=4, resolution_range=(0.977, 1.641), spacing=1.37)
    sampler = BatchSampler(arrays, 4, **kwargs)
    sizes = sampler.pixel_sizes(5, 0, 2000)
    assert sizes.min() >= 0.977 and sizes.max() <= 1.641
    assert sizes.min() < 0.99 and sizes.max() > 1.62 and abs(np.median(sizes) - 1.309) < 0.03  # uniform in side
    first = BatchSampler(arrays, 4, **kwargs).batches(7)  # a fresh sampler, as a resumed run has
    again = sampler.batches(7)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    assert not np.array_equal(sampler.batches(8)["labelled_images"], first["labelled_images"])
    for key in ("labelled_masks", "real_masks"):
        assert set(np.unique(first[key]).tolist()) <= {0.0, 1.0} and first[key].sum(axis=-1).max() <= 1.0
    # rescaling changes the batch; the rotation angles are drawn from their own stream
    plain = BatchSampler(arrays, 4, seed=3, nz=4).batches(7)
    assert not np.array_equal(plain["labelled_images"], first["labelled_images"])
    no_rotation = BatchSampler(arrays, 4, seed=3, nz=4, rotation_range=0.0, resolution_range=(1.37, 1.37),
                               spacing=1.37).batches(7)
    unrotated = BatchSampler(arrays, 4, seed=3, nz=4, rotation_range=0.0).batches(7)
    np.testing.assert_allclose(no_rotation["labelled_images"], unrotated["labelled_images"], atol=1e-6)
    with pytest.raises(ValueError, match="must be 0 < lo <= hi"):
        BatchSampler(arrays, 4, seed=3, resolution_range=(1.6, 1.0), spacing=1.37)
