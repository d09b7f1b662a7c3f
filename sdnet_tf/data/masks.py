"""Mask sets for the shape priors and the U-Net baseline, from the SDNet readers.

The masks are the ED/ES label slices of an ACDC-layout cohort, preprocessed exactly as SDNet's
(resampled to ``spacing`` mm per pixel, centre crop or pad to ``size``), split by patient with
the cohort's splits, and kept as label maps (0 background, 1 RV, 2 MYO, 3 LV). A prior trained
at 128 x 128 therefore sees the central 128 x 128 window of what SDNet sees at 224 x 224.

With ``framing="heart"`` a prior's masks are framed instead as the NVAE thesis' code frames them
(``heart_frame``): each frame cropped to a square about its heart and resized to ``size``.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sdnet_infer.labels import DEFAULT_SPACING_MM, FULL_CHANNELS
from sdnet_tf.data.acdc import labelled_subset, patient_splits, preprocess_cohort
from sdnet_tf.data.arrays import DataError
from sdnet_tf.data.preprocess import SIZE as SDNET_SIZE

PRIOR_CHANNELS = FULL_CHANNELS  # channel k of a prior's mask is ACDC label k
SUBSETS = ("training", "validation", "test")
PHASES = ("ED", "ES")
FRAMINGS = ("spacing", "heart")
HEART_PADDING = 4  # pixels added to the heart's extent by the thesis' code (data_modules/utils.py)


@dataclass
class MaskSet:
    """The slices of one subset.

    Attributes:
        labels: (N, H, W) uint8 ACDC labels.
        images: (N, H, W, 1) float32 images in [-1, 1] (for the U-Net baseline).
        patients: (N,) patient numbers.
        phases: (N,) 0 for ED, 1 for ES.
        positions: (N,) slice index within its frame (0 = first slice of the volume).
        pixel_mm: (N,) float64 side of a pixel in mm: ``spacing`` for SDNet's frame; with
            ``framing="heart"`` each frame's own (its window's side in mm over ``size``), so the
            checks and descriptors measured in mm (concavity depth, area, perimeter) read a
            heart-framed mask at its real scale.
    """

    labels: np.ndarray
    images: np.ndarray
    patients: np.ndarray
    phases: np.ndarray
    positions: np.ndarray
    pixel_mm: np.ndarray

    def pixel_spacing(self):
        """(N, 2) row and column pixel size in mm of each slice, as the shape metrics take it."""
        return np.repeat(self.pixel_mm[:, None], 2, axis=1)

    def __len__(self):
        return len(self.labels)


def sample_pixel_mm(sets):
    """The pixel size in mm at which a prior's samples are measured: the median of its training
    masks' (``MaskSet.pixel_mm``; ``spacing`` itself in SDNet's frame). A sample has no frame of
    its own; it imitates the training masks, whose heart-framed pixel sizes vary by frame."""
    return float(np.median(sets["training"].pixel_mm))


def prior_one_hot(labels):
    """ACDC label maps (...) -> one-hot float32 (..., 4) in ``PRIOR_CHANNELS`` order."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 3):
        raise DataError(f"labels must be 0..3, found {sorted(np.unique(labels).tolist())[:6]}")
    return np.eye(4, dtype=np.float32)[labels.astype(np.int64)]


def heart_frame(labels, size, images=None, padding=HEART_PADDING):
    """Frame one cardiac frame's slices about its heart, as the NVAE thesis' code does.

    The in-plane bounding box of every labelled pixel of the frame (all slices together) gives
    a square window centred on the box, of side its longer extent plus ``padding`` pixels
    (``data_modules/utils.py`` of j-freddy/nvae-shape-encoding: torchio ``CropOrPad`` about the
    mask, then ``Resize`` to 128); the window is resampled to ``size`` x ``size``, nearest
    neighbour for the labels and linear for the images, zero outside the slice. The heart thus
    fills the frame whatever its size, so the pixel spacing differs from frame to frame. A frame
    without labels keeps its whole slice.

    Args:
        labels: (S, H, W) integer labels of the frame's S slices.
        size: output height and width (pixels).
        images: optional (S, H, W, 1) images framed with the same window.
        padding: pixels added to the longer extent of the box (pixels of ``labels``: at
            ``data.spacing`` in ``load_mask_sets``, where the thesis adds 4 native pixels).

    Returns:
        ``(labels, images, side)``: (S, size, size) labels, (S, size, size, 1) images or None,
        and the window's side in input pixels.
    """
    labels = np.asarray(labels)
    _, height, width = labels.shape
    present = np.argwhere(labels.any(axis=0))
    if len(present):
        low, high = present.min(axis=0), present.max(axis=0)
        side = float((high - low).max() + padding)
        centre = (low + high) / 2.0
    else:
        side = float(max(height, width))
        centre = np.array([(height - 1) / 2.0, (width - 1) / 2.0])
    # the centre of output pixel j, in input pixel coordinates (pixel i spans i - 0.5 .. i + 0.5)
    offsets = (np.arange(size) + 0.5) * side / size - side / 2.0
    rows, cols = np.meshgrid(centre[0] + offsets, centre[1] + offsets, indexing="ij")

    def resample(plane, order):
        # grid-constant: zero beyond the slice's edge pixels, which keep their whole width
        return ndimage.map_coordinates(plane, [rows, cols], order=order, mode="grid-constant", cval=0.0)

    framed = np.stack([resample(plane, 0) for plane in labels]).astype(labels.dtype)
    framed_images = None
    if images is not None:
        framed_images = np.stack([resample(plane[..., 0], 1) for plane in np.asarray(images)])[..., None]
        framed_images = framed_images.astype(np.float32)
    return framed, framed_images, side


def _heart_framed(cohort, size, spacing):
    """The cohort with every frame (ED, then ES, of each patient) framed by ``heart_frame``, and
    each slice's pixel size in mm (``pixel_mm``: the window's side at ``spacing`` over ``size``)."""
    framed = {}
    for number, frames in cohort.items():
        labels, images = frames["labels"], frames["images"]
        half = len(labels) // 2  # ED slices then ES slices of the same volume
        parts = [heart_frame(labels[start:start + half], size, images[start:start + half])
                 for start in (0, half)]
        framed[number] = {"labels": np.concatenate([p[0] for p in parts]),
                          "images": np.concatenate([p[1] for p in parts]),
                          "pixel_mm": np.concatenate([np.full(half, p[2] * spacing / size) for p in parts])}
    return framed


def _subset(cohort, numbers, spacing):
    labels, images, patients, phases, positions, pixels = [], [], [], [], [], []
    for n in numbers:
        frames = cohort[n]
        count = len(frames["labels"])
        per_frame = count // 2  # ED slices then ES slices of the same volume
        labels.append(frames["labels"])
        images.append(frames["images"])
        patients.append(np.full(count, n, np.int32))
        phases.append(np.repeat(np.arange(2, dtype=np.int8), per_frame))
        positions.append(np.tile(np.arange(per_frame, dtype=np.int16), 2))
        pixels.append(frames["pixel_mm"] if "pixel_mm" in frames else np.full(count, float(spacing)))
    if not labels:
        raise DataError("a subset without patients: the cohort is too small for three splits")
    return MaskSet(np.concatenate(labels).astype(np.uint8), np.concatenate(images).astype(np.float32),
                   np.concatenate(patients), np.concatenate(phases), np.concatenate(positions),
                   np.concatenate(pixels).astype(np.float64))


def load_mask_sets(root, size=128, spacing=DEFAULT_SPACING_MM, split=0, cache_dir=None, progress=True, labelled_fraction=1.0,
                   seed=1, framing="spacing"):
    """Preprocess (or load from cache) a cohort and split its label slices by patient.

    Args:
        root: an ACDC-layout folder (the real training set or the phantom cohort).
        size: output height and width.
        spacing: in-plane mm per pixel after resampling.
        split: which of the cohort's three splits.
        cache_dir: where preprocessed arrays are cached (None: no cache).
        progress: show a progress bar while preprocessing.
        labelled_fraction: keep this fraction of the training patients (whole subjects), chosen
            as SDNet's labelled subjects are (``acdc.labelled_subset`` with ``seed``), so a
            baseline and SDNet at one fraction see the same labels.
        seed: the seed of that choice.
        framing: "spacing" (SDNet's frame: ``spacing`` mm per pixel, centre crop) or "heart"
            (``heart_frame``: each frame resampled at ``spacing`` into SDNet's 224 x 224 canvas,
            then cropped about its heart and resized to ``size``).

    Returns:
        ``(sets, groups, description)``: ``{"training", "validation", "test"}`` -> ``MaskSet``;
        ``{patient number: pathology group}``; a JSON-able dict of the patients and counts.
    """
    if framing not in FRAMINGS:
        raise DataError(f"data.framing {framing!r}: choose one of {', '.join(FRAMINGS)}")
    canvas = max(size, SDNET_SIZE) if framing == "heart" else size
    cohort, patients = preprocess_cohort(root, cache_dir, canvas, progress, spacing=spacing)
    if framing == "heart":
        cohort = _heart_framed(cohort, size, spacing)
    splits = patient_splits(patients)
    if not 0 <= split < len(splits):
        raise DataError(f"split {split}: the cohort has splits 0..{len(splits) - 1}")
    chosen = dict(splits[split])
    if labelled_fraction != 1.0:
        chosen["training"] = labelled_subset(chosen["training"], labelled_fraction, seed)
    sets = {name: _subset(cohort, chosen[name], spacing) for name in SUBSETS}
    groups = {p.number: p.group for p in patients}
    description = {"data": str(root), "split": split, "size": size, "spacing": spacing, "framing": framing,
                   "labelled_fraction": labelled_fraction,
                   **{f"{name}_patients": list(chosen[name]) for name in SUBSETS},
                   **{f"{name}_slices": len(sets[name]) for name in SUBSETS}}
    return sets, groups, description


def contrastive_views(labels, rng, max_rotation=180.0, min_scale=0.8):
    """Two random views of each label map for SimCLR, as the thesis' FRDS embedder is trained.

    Each view is the map rotated by an angle uniform in +-``max_rotation`` degrees about its
    centre, flipped left-right with probability 0.5, and a random square crop of ``s`` times
    its area (``s`` uniform in [``min_scale``, 1]) resized back; all nearest neighbour with
    background fill, so the views stay label maps (the thesis' torchvision ``RandomRotation``,
    ``RandomHorizontalFlip`` and ``RandomResizedCrop`` with ratio 1 and nearest interpolation).

    Args:
        labels: (N, H, W) label maps.
        rng: a ``numpy.random.Generator``.

    Returns:
        (2N, H, W): the first views of the N maps, then their second views.
    """
    labels = np.asarray(labels)
    count, height, width = labels.shape
    views = []
    for _ in range(2):
        out = rotate_labels(labels, rng.uniform(-max_rotation, max_rotation, count))
        flip = rng.random(count) < 0.5
        out[flip] = out[flip, :, ::-1]
        for i in range(count):
            side = np.sqrt(rng.uniform(min_scale, 1.0))  # of the map's side
            top = rng.uniform(0.0, 1.0 - side) * height
            left = rng.uniform(0.0, 1.0 - side) * width
            rows = top + (np.arange(height) + 0.5) * side - 0.5
            cols = left + (np.arange(width) + 0.5) * side - 0.5
            grid = np.meshgrid(rows, cols, indexing="ij")
            out[i] = ndimage.map_coordinates(out[i], grid, order=0, mode="grid-constant", cval=0)
        views.append(out)
    return np.concatenate(views)


def rotate_labels(labels, angles):
    """Rotate each label map (B, H, W) by its angle in degrees (nearest neighbour, background
    fill), about the image centre."""
    out = np.empty_like(labels)
    for i, angle in enumerate(angles):
        out[i] = ndimage.rotate(labels[i], angle, axes=(0, 1), reshape=False, order=0, mode="constant", cval=0)
    return out


def epoch_batches(count, batch_size, rng, steps=0):
    """Index batches of one epoch: a permutation cut into full batches (the last partial
    batch is dropped); with ``steps`` > 0 exactly that many batches, drawing further
    permutations as needed."""
    if count < batch_size:
        raise DataError(f"{count} training slices are fewer than one batch of {batch_size}")
    per_pass = count // batch_size
    steps = steps or per_pass
    batches = []
    while len(batches) < steps:
        order = rng.permutation(count)
        batches.extend(order[i * batch_size:(i + 1) * batch_size] for i in range(per_pass))
    return batches[:steps]
