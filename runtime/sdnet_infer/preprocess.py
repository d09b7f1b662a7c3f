"""The original SDNet's ACDC preprocessing, and its inverse for predictions.

Per 3-D frame: in-plane resampling to 1.37 mm (images linear, labels nearest; slices are not
resampled), clipping to the 5th-95th percentile, min-max scaling to [-1, 1], and centre crop
or pad to 224 x 224. ``Geometry`` keeps what is needed to put a prediction back on the
original grid.

Resampling is ``scipy.ndimage.zoom`` on the pixel-area grid (``grid_mode=True``), which is
what scikit-image's ``rescale``/``resize`` run underneath (output size rounded, constant zero
outside the image for images, clipping of linear output to the input range); a test checks
the two agree exactly, so training (scikit-image was the first implementation) and the
TensorFlow-free runtime preprocess identically.
"""

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from sdnet_infer.io import DataError
from sdnet_infer.labels import BACKGROUND, DEFAULT_SPACING_MM, SDNET_CHANNEL_LABELS

TARGET_SPACING = DEFAULT_SPACING_MM
SIZE = 224
MAX_RESAMPLED_SIDE = 4096  # a resampled slice larger than this per side is refused (64 MB per float32 slice)
RATIO_DECIMALS = 6  # the scaled size is rounded to this many decimals before rounding to whole pixels


@dataclass
class Geometry:
    """How a (H, W, S) volume became (S, size, size) slices, so the steps can be undone."""

    shape: tuple  # original (H, W, S)
    spacing: tuple  # original in-plane (dy, dx) in mm
    resampled: tuple  # (H', W') after resampling
    offsets: tuple  # (top, left): resampled[r, c] is at output[r - top, c - left]
    size: int

    def to_dict(self):
        return asdict(self)


def resize_slice(image, shape, order=1, mode="constant"):
    """One 2-D slice to ``shape`` by zooming on the pixel-area grid.

    ``mode`` "constant" reads zeros outside the image (used for resampling inputs), "edge"
    repeats the border (used to put labels back); linear output is clipped to the input range
    (widened to include the zero fill), as scikit-image does.
    """
    factors = np.asarray(shape, np.float64) / np.asarray(image.shape, np.float64)
    ndi_mode = {"constant": "grid-constant", "edge": "nearest"}[mode]
    out = ndimage.zoom(image, factors, order=order, mode=ndi_mode, cval=0.0, grid_mode=True)
    if order > 0:
        lo, hi = float(image.min()), float(image.max())
        if mode == "constant":
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        np.clip(out, lo, hi, out=out)
    return out


def resampled_shape(shape, spacing, target=TARGET_SPACING, source="volume"):
    """(H', W'): ``shape`` (H, W) scaled by ``spacing / target`` and rounded to whole pixels,
    at least 1, as scikit-image's ``rescale`` sizes its output. The scaled size is first rounded
    to ``RATIO_DECIMALS`` (6) decimals, so the float noise of the division (216 * 1.5625 / 3
    computes as 112.50000000000001) cannot decide a tie; a tie then rounds to even, as
    scikit-image rounds an exact one (112.5 -> 112). A side above ``MAX_RESAMPLED_SIDE`` is a
    ``DataError`` naming ``source`` (the voxel size must be wrong)."""
    scale = np.asarray(spacing[:2], np.float64) / target
    exact = np.round(scale * np.asarray(shape[:2], np.float64), RATIO_DECIMALS)
    out = tuple(int(s) for s in np.maximum(np.round(exact), 1))
    if max(out) > MAX_RESAMPLED_SIDE:
        raise DataError(f"{source}: resampling {tuple(int(s) for s in shape[:2])} pixels of "
                        f"{' x '.join(f'{float(s):.6g}' for s in spacing[:2])} mm to {target:g} mm would make "
                        f"{out[0]} x {out[1]} pixels (at most {MAX_RESAMPLED_SIDE} per side); the voxel size is wrong")
    return out


def resample(volume, spacing, target=TARGET_SPACING, order=1, source="volume"):
    """Resample each slice of (H, W, S) in-plane by ``spacing / target`` (order 1 or 0)."""
    shape = resampled_shape(volume.shape[:2], spacing, target, source)
    volume = np.asarray(volume, np.float32)
    slices = [resize_slice(volume[..., k], shape, order=order) for k in range(volume.shape[-1])]
    return np.stack(slices, axis=-1).astype(np.float32)


def normalise(volume, source="volume"):
    """Clip to the 5th-95th percentile of the whole frame, then scale to [-1, 1]."""
    lo, hi = np.percentile(volume, [5, 95])
    if hi <= lo:
        lo, hi = float(volume.min()), float(volume.max())
        if hi <= lo:
            raise DataError(f"{source}: constant intensities ({lo}), nothing to normalise")
    clipped = np.clip(volume, lo, hi)
    return (2.0 * (clipped - lo) / (hi - lo) - 1.0).astype(np.float32)


def _offsets(length, size):
    # crop: drop (length - size) pixels, the larger half at the start, as the original;
    # pad: add (size - length), the smaller half at the start; a negative offset pads
    diff = length - size
    return int(np.ceil(diff / 2)) if diff >= 0 else -int(np.floor(-diff / 2))


def crop_or_pad(volume, size=SIZE, mode="edge"):
    """Centre crop or pad (H, W, ...) to (size, size, ...); returns (array, (top, left))."""
    top, left = _offsets(volume.shape[0], size), _offsets(volume.shape[1], size)
    pad = [(max(0, -top), max(0, size - (volume.shape[0] - top))),
           (max(0, -left), max(0, size - (volume.shape[1] - left)))] + [(0, 0)] * (volume.ndim - 2)
    if any(p != (0, 0) for p in pad):
        volume = np.pad(volume, pad, mode=mode)
    r0, c0 = max(0, top), max(0, left)
    return volume[r0:r0 + size, c0:c0 + size], (top, left)


def preprocess_frame(image, spacing, labels=None, size=SIZE, target=TARGET_SPACING, source="frame"):
    """One (H, W, S) frame -> image slices (S, size, size) in [-1, 1], labels, Geometry."""
    if image.ndim != 3:
        raise DataError(f"{source}: expected a 3-D frame, got shape {image.shape}")
    resampled = resample(image, spacing[:2], target, order=1, source=source)
    normalised = normalise(resampled, source)
    cropped, offsets = crop_or_pad(normalised, size, mode="edge")
    geometry = Geometry(tuple(int(s) for s in image.shape), tuple(float(s) for s in spacing[:2]),
                        tuple(int(s) for s in resampled.shape[:2]), offsets, int(size))
    out_labels = None
    if labels is not None:
        res_labels = resample(labels.astype(np.float32), spacing[:2], target, order=0, source=source)
        out_labels, _ = crop_or_pad(np.rint(res_labels).astype(np.uint8), size, mode="constant")
        out_labels = np.moveaxis(out_labels, -1, 0)
    return np.moveaxis(cropped, -1, 0), out_labels, geometry


def restore_labels(slices, geometry):
    """Label slices (S, size, size) -> a (H, W, S) uint8 volume on the original grid.

    Undoes the crop or pad (pixels the crop had cut away become background) and the in-plane
    resampling (nearest neighbour).
    """
    h, w = geometry.resampled
    top, left = geometry.offsets
    size = geometry.size
    canvas = np.zeros((slices.shape[0], h, w), np.uint8)
    r0, c0 = max(0, top), max(0, left)  # the part of the resampled grid the crop window covered
    r1, c1 = min(h, top + size), min(w, left + size)
    canvas[:, r0:r1, c0:c1] = slices[:, r0 - top:r1 - top, c0 - left:c1 - left]
    out = np.empty(geometry.shape, np.uint8)
    for k in range(slices.shape[0]):
        out[..., k] = resize_slice(canvas[k], geometry.shape[:2], order=0, mode="edge")
    return out


def one_hot(labels):
    """ACDC labels (..., ) -> foreground channels [MYO, LV, RV] (ACDC 2, 3, 1) as float32."""
    return np.stack([labels == value for value in SDNET_CHANNEL_LABELS], axis=-1).astype(np.float32)


def from_one_hot(masks):
    """Foreground probabilities [MYO, LV, RV], or their first k channels (a myocardium-only
    model: [MYO]), -> ACDC labels by argmax with background."""
    background = 1.0 - masks.sum(-1, keepdims=True)
    full = np.concatenate([masks, background], axis=-1)
    index = full.argmax(-1)
    return np.array([*SDNET_CHANNEL_LABELS[:masks.shape[-1]], BACKGROUND], np.uint8)[index]
