"""Seeded synthetic 2-D images of simple anatomy-like shapes, for tests and quick runs.

Each image holds a ring (the "myocardium", class 0) around a disc (the "LV", class 1) and a
second disc beside it (the "RV", class 2), drawn in one of two intensity styles, with blur and
noise. Masks are one-hot foreground channels in the order [ring, disc, second disc], the same
layout as ACDC's [MYO, LV, RV].
"""

import numpy as np
from scipy import ndimage

from sdnet_tf.data.arrays import SDNetArrays
from sdnet_tf.data.preprocess import normalise

# tissue intensities per style: background, ring, disc, second disc
STYLES = np.array([
    [0.15, 0.35, 0.90, 0.80],  # bright blood, dark muscle
    [0.70, 0.95, 0.20, 0.35],  # dark blood, bright muscle, bright surroundings
], dtype=np.float32)


def shapes(size, rng):
    """One random label map (H, W) with values 0 background, 1 ring, 2 disc, 3 second disc."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.38, 0.62, size=2) * size
    inner = rng.uniform(0.09, 0.16) * size
    outer = inner + rng.uniform(0.05, 0.08) * size
    r = np.hypot(yy - cy, xx - cx)
    labels = np.zeros((size, size), np.uint8)
    angle = rng.uniform(0, 2 * np.pi)
    rv_radius = rng.uniform(0.10, 0.15) * size
    dist = outer + rv_radius + 1.0
    ry, rx = cy + dist * np.sin(angle), cx + dist * np.cos(angle)
    labels[np.hypot(yy - ry, xx - rx) < rv_radius] = 3
    labels[r < outer] = 1
    labels[r < inner] = 2
    return labels


def render(labels, style, rng, noise=0.04, blur=0.8):
    """Image in [-1, 1] from a label map in the given style."""
    intensities = STYLES[style]
    image = intensities[labels]
    image = ndimage.gaussian_filter(image, blur)
    yy, xx = np.mgrid[0:labels.shape[0], 0:labels.shape[1]] / labels.shape[0]
    bias = 1.0 + 0.15 * np.sin(np.pi * (yy * rng.uniform(0.5, 1.5) + xx * rng.uniform(0.5, 1.5)))
    image = image * bias + rng.normal(0.0, noise, size=image.shape)
    return normalise(image, "synthetic image")


def make_images(count, size=64, seed=0):
    """``count`` images (N, H, W, 1), one-hot masks (N, H, W, 3) and styles (N,)."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 1), np.float32)
    masks = np.empty((count, size, size, 3), np.float32)
    styles = rng.integers(0, len(STYLES), size=count)
    for i in range(count):
        labels = shapes(size, rng)
        images[i, ..., 0] = render(labels, styles[i], rng)
        masks[i] = np.stack([labels == 1, labels == 2, labels == 3], axis=-1)
    return images, masks, styles


def synthetic_arrays(count=256, validation=64, size=64, labelled_fraction=0.25, seed=0):
    """An ``SDNetArrays`` of synthetic images: a fraction labelled, the rest unlabelled.

    The discriminator's real masks are all training masks; validation images come from a
    different seed.
    """
    images, masks, _ = make_images(count, size, seed)
    n_labelled = max(1, int(round(labelled_fraction * count)))
    val_images, val_masks, _ = make_images(validation, size, seed + 1000)
    return SDNetArrays(
        labelled_images=images[:n_labelled], labelled_masks=masks[:n_labelled],
        unlabelled_images=images[n_labelled:] if n_labelled < count else images,
        real_masks=masks, validation_images=val_images, validation_masks=val_masks,
        source=f"synthetic(seed={seed})")
