"""Training augmentations applied identically to images and masks: rotation, and the
resolution augmentation of Liu et al. (M&Ms 2020)."""

import numpy as np
from scipy import ndimage

from sdnet_infer.preprocess import crop_or_pad


def rotate_batch(images, masks, angles):
    """Rotate each image (linear) and its mask (nearest) by the same angle in degrees.

    Args:
        images: (B, H, W, C) float array.
        masks: (B, H, W, L) array or None.
        angles: (B,) angles in degrees.

    Returns:
        ``(images, masks)`` rotated about the image centre, edges filled with the nearest
        value as Keras' ImageDataGenerator did; masks stay exactly one-hot.
    """
    out_images = np.empty_like(images)
    out_masks = None if masks is None else np.empty_like(masks)
    for i, angle in enumerate(angles):
        out_images[i] = ndimage.rotate(images[i], angle, axes=(0, 1), reshape=False, order=1, mode="nearest")
        if masks is not None:
            out_masks[i] = ndimage.rotate(masks[i], angle, axes=(0, 1), reshape=False, order=0, mode="nearest")
    return out_images, out_masks


def rescale_batch(images, masks, pixel_sizes, spacing):
    """Resample each image (linear) and its mask (nearest) to a new pixel size, keeping the size.

    The resolution augmentation of Liu et al. ("Disentangled Representations for
    Domain-generalized Cardiac Segmentation", M&Ms 2020; xxxliu95/RA_FA_Cardiac,
    ``mms_dataloader_re_aug.py``): an image whose pixels are ``spacing`` mm on a side is
    resampled so that they become ``pixel_sizes[i]`` mm, i.e. zoomed by ``spacing /
    pixel_sizes[i]`` along both in-plane axes (``scipy.ndimage.zoom`` on the pixel-area grid,
    as the preprocessing resamples), then centre cropped or padded back to H x W as the
    preprocessing crops (the larger half of an odd difference cut at the start, the smaller
    half padded there). A larger pixel size shows the anatomy smaller.

    Args:
        images: (B, H, W, C) float array, H == W, pixels of ``spacing`` mm.
        masks: (B, H, W, L) one-hot array or None.
        pixel_sizes: (B,) the new in-plane pixel side of each image in mm (> 0).
        spacing: the images' pixel side in mm (``data.spacing``).

    Returns:
        ``(images, masks)`` of the input shapes and dtypes. Images are padded with their edge
        values (as the preprocessing pads), masks with background (zeros); masks stay exactly
        one-hot, since every channel takes the same nearest source pixel.

    Raises:
        ValueError: non-square images or a pixel size that is not positive.
    """
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"rescale_batch: images must be square, got {images.shape[1]} x {images.shape[2]}")
    size = images.shape[1]
    out_images = np.empty_like(images)
    out_masks = None if masks is None else np.empty_like(masks)
    for i, pixel in enumerate(pixel_sizes):
        if not pixel > 0:
            raise ValueError(f"rescale_batch: pixel size {pixel} mm must be positive")
        factor = float(spacing) / float(pixel)
        zoom = (factor, factor, 1.0)
        image = ndimage.zoom(images[i], zoom, order=1, mode="nearest", grid_mode=True)  # (H', W', C)
        out_images[i] = crop_or_pad(image, size, mode="edge")[0]
        if masks is not None:
            mask = ndimage.zoom(masks[i], zoom, order=0, mode="nearest", grid_mode=True)  # (H', W', L)
            out_masks[i] = crop_or_pad(mask, size, mode="constant")[0]
    return out_images, out_masks
