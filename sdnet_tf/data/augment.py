"""Rotation augmentation applied identically to images and masks."""

import numpy as np
from scipy import ndimage


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
