"""Anatomical validity of 2-D cardiac short-axis label maps (numpy / scipy only).

Shared by evaluation (``sdnet_tf.metrics.validity`` re-exports this module) and the runtime's
quality control (``sdnet_infer.qc``).

Labels: 0 background, 1 RV cavity, 2 myocardium (MYO), 3 LV cavity. A slice is anatomically
valid when none of the requested checks fails. The checks follow Painchaud et al., "Cardiac
Segmentation with Strong Anatomical Guarantees" (IEEE TMI 2020; code: ``vitalab/vital``,
ACDC anatomical metrics) and the 7-check subset of the 2024 MSc thesis "Cardiac Shape Analysis
with Nouveau Variational Autoencoder" (code: ``j-freddy/nvae-shape-encoding``). The code here
is written from those definitions, not copied.

Connectivity:

* a structure's connected components are 8-connected, as in both sources;
* holes are 8-connected regions of the complement, as in both sources, so a region that
  escapes through a diagonal step between two wall pixels is not a hole. This matters on
  expert masks: the RV and MYO contours are drawn separately and leave one- or two-pixel
  diagonal staircases of background where they meet; with a 4-connected complement those count
  as holes between RV and MYO and 79 of the 1902 ACDC expert slices fail (95.2 % valid);
* the concavity and circularity checks fill a structure's holes with a 4-connected background
  (scipy's default, as Painchaud), so a MYO wall with a diagonal step still closes the cavity
  and the filled MYO is the epicardial outline;
* two structures *touch* when a pixel of one shares an edge with a pixel of the other
  (4-adjacency), as in the thesis; Painchaud counts corner contacts too (3 x 3 dilation);
* the area outside the image is not background: a cavity cut by the image border does not
  "touch background" there, and a region open to the image border is not a hole.

The checks (``True`` = the check failed, an error was found):

``holes_in_lv`` / ``holes_in_rv``
    Some pixel not in the structure is enclosed by it (whatever its label).
``holes_in_myo``
    Some region enclosed by the MYO contains no LV pixel. The region that contains the LV is
    the cavity, not a hole (Painchaud subtracts the LV's area from the MYO's holes instead).
``holes_between_lv_and_myo`` / ``holes_between_rv_and_myo``
    Some pixel is enclosed by the two structures together but by neither alone: each
    structure's own holes that do not contain the other structure are filled first, then the
    union is searched for holes (Painchaud's definition). A gap between the LV and the MYO ring
    is such a hole, and so is background trapped between the RV crescent and the septum. For
    RV and MYO the LV counts as part of the MYO, so a cavity whose MYO wall has a diagonal step
    is not mistaken for a gap. Painchaud looks for these holes with a 4-connected complement
    and ignores them while they total at most ``H * W / 2**14`` pixels; here the complement is
    8-connected (see above) and every hole counts.
``holes``
    Any of the five hole checks above: the thesis counts all holes as one check. It looks only
    for background enclosed by the union of all structures; every such hole is found here too,
    and so are holes filled with another label (e.g. MYO pixels enclosed by the LV).
``disconnectivity_in_lv`` / ``_rv`` / ``_myo``
    The structure has more than one (8-connected) component.
``rv_disconnected_from_myo``
    The MYO is present and some RV component shares no edge with it (the thesis' per-component
    test; Painchaud only fails when *no* RV pixel is near the MYO). An RV without any MYO in
    the slice is not flagged.
``frontier_between_lv_and_rv`` / ``frontier_between_lv_and_background``
    Some LV pixel shares an edge with an RV / background pixel. Painchaud tolerates one such
    pixel; here one is enough, as in the thesis.
``lv_concavity`` / ``rv_concavity`` / ``myo_concavity``
    Painchaud's concavity depth (:func:`concavity_depth`, in mm using ``spacing``) exceeds
    4 mm (LV), 30 mm (RV) or 0 mm (MYO, measured on the epicardial outline).
``lv_circularity`` / ``myo_circularity``
    The isoperimetric ratio ``4 pi A / P**2`` of the structure with its holes filled
    (:func:`circularity`) is below 0.2. It is computed in pixels, as by Painchaud: the ratio
    does not depend on an isotropic pixel size, and anisotropic in-plane spacing is ignored.

``SEVEN_CHECKS`` is the thesis subset: ``holes``, the three disconnectivity checks, RV
disconnected from MYO, LV touching RV and LV touching background. ``PAINCHAUD_CHECKS`` adds
the five separate hole checks, the three concavity and the two circularity checks: it is a
superset of ``SEVEN_CHECKS`` and covers all 16 of Painchaud's criteria.

A check whose structures are absent passes, so an empty slice is valid. A slice with only MYO
is valid when the MYO is one solid piece (an apical slice below the cavity: 18 ACDC expert
slices, all valid); a MYO ring around background fails ``holes_in_myo``. A slice with only an
RV is valid when the RV is one piece without holes. An LV with no MYO around it touches
background and fails.

On the 1902 slices of the ED and ES expert masks of the 100 ACDC training patients, at their
native resolution, 99.2 % are valid by ``SEVEN_CHECKS`` (the thesis reports 99.4 % on its
preprocessed crops; a re-implementation of the thesis' checks gives the same verdicts here,
check for check and slice for slice) and 98.9 % by ``PAINCHAUD_CHECKS``. The concavity and
circularity values equal, on every one of those slices, those computed the way Painchaud's
scikit-image code computes them.
"""

import math
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from sdnet_infer.labels import BACKGROUND, LV, MYO, RV

HOLE_CHECKS = ("holes_in_lv", "holes_in_rv", "holes_in_myo", "holes_between_lv_and_myo", "holes_between_rv_and_myo")
SEVEN_CHECKS = (
    "holes", "disconnectivity_in_lv", "disconnectivity_in_rv", "disconnectivity_in_myo",
    "rv_disconnected_from_myo", "frontier_between_lv_and_rv", "frontier_between_lv_and_background",
)
SHAPE_CHECKS = ("lv_concavity", "rv_concavity", "myo_concavity", "lv_circularity", "myo_circularity")
PAINCHAUD_CHECKS = SEVEN_CHECKS + HOLE_CHECKS + SHAPE_CHECKS

# Painchaud's thresholds: concavity depth in mm above which a structure is invalid, and the
# isoperimetric ratio below which it is
MAX_CONCAVITY_MM = {"lv": 4.0, "rv": 30.0, "myo": 0.0}
MIN_CIRCULARITY = 0.2

_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-neighbourhood: pixels sharing an edge
_SQUARE = ndimage.generate_binary_structure(2, 2)  # 8-neighbourhood
# skimage.measure.perimeter's 4-neighbourhood estimator: a boundary pixel's code is
# 1 + 2 * (boundary 4-neighbours) + 10 * (boundary diagonal neighbours), and the code maps to
# the length of boundary that pixel stands for (1 straight, sqrt 2 diagonal, their mean at a
# corner); other codes (isolated pixels, thick junctions) count 0
_PERIMETER_KERNEL = np.array([[10, 2, 10], [2, 1, 2], [10, 2, 10]])
_PERIMETER_LENGTH = np.zeros(50)
_PERIMETER_LENGTH[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_LENGTH[[21, 33]] = math.sqrt(2.0)
_PERIMETER_LENGTH[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0


class VolumeValidity(NamedTuple):
    """Validity of the slices of one (H, W, S) label volume."""

    slices: list
    """Per slice, the dict returned by :func:`check_slice`."""
    valid: list
    """Per slice, whether no check failed."""
    fraction: float
    """Fraction of the slices that are valid (1.0 for a volume without slices)."""


def convex_hull_mask(mask):
    """The pixels whose centres lie in the convex hull of a binary mask's pixels.

    Each pixel stands for the midpoints of its four edges, as in
    ``skimage.morphology.convex_hull_image``, so Painchaud's concavity thresholds keep their
    meaning.

    Args:
        mask: (H, W) bool array.

    Returns:
        (H, W) bool array, a superset of ``mask`` (all False when ``mask`` is).
    """
    mask = np.asarray(mask, bool)
    hull_mask = np.zeros_like(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return hull_mask
    # the hull of a set is the hull of each row's two extreme pixels; the edge midpoints make
    # the point set two-dimensional even for a single pixel or a straight line
    first = mask[rows].argmax(axis=1)
    last = mask.shape[1] - 1 - mask[rows, ::-1].argmax(axis=1)
    centres = np.concatenate([np.stack([rows, first], 1), np.stack([rows, last], 1)]).astype(float)
    midpoints = (centres[:, None, :] + np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]])).reshape(-1, 2)
    # inside the hull: a * row + b * col + d <= 0 for every facet (a, b, d); the tolerance
    # keeps pixel centres that lie exactly on a hull edge
    a, b, d = ConvexHull(midpoints).equations.T
    d = d - 1e-9
    r = np.arange(rows[0], rows[-1] + 1, dtype=float)[:, None]
    # per row, each facet with b != 0 bounds the column from one side (those with b == 0 lie
    # half a pixel beyond the first or the last row and bound nothing here)
    bound = -(a * r + d) / np.where(b == 0.0, 1.0, b)
    low = np.where(b < 0, bound, -np.inf).max(axis=1)
    high = np.where(b > 0, bound, np.inf).min(axis=1)
    cols = np.arange(mask.shape[1])
    hull_mask[rows[0]:rows[-1] + 1] = (cols >= low[:, None]) & (cols <= high[:, None])
    return hull_mask


def concavity_depth(mask, spacing=(1.0, 1.0)):
    """Painchaud's concavity depth of a structure, in mm.

    The structure's holes are filled; the pixels of its convex hull that it does not cover are
    eroded with a 3 x 3 square (so one-pixel slivers along a digitised curve, and notches
    narrower than three pixels, do not count); the depth is the largest distance, in mm, from
    a remaining pixel's centre to the nearest pixel outside the hull.

    Args:
        mask: (H, W) bool array.
        spacing: pixel size in mm, (row, col).

    Returns:
        The depth in mm, 0.0 for a convex structure, NaN for an empty mask.
    """
    filled = _filled(np.asarray(mask, bool))
    if not filled.any():
        return math.nan
    # a margin makes the image border count as outside the hull, for the erosion and distances
    filled = np.pad(filled, 2)
    hull = convex_hull_mask(filled)
    notches = ndimage.binary_erosion(hull & ~filled, _SQUARE)
    if not notches.any():
        return 0.0
    return float(ndimage.distance_transform_edt(hull, sampling=spacing)[notches].max())


def perimeter(mask):
    """Boundary length of a binary mask in pixels (``skimage.measure.perimeter``, 4-neighbourhood).

    Args:
        mask: (H, W) bool array.

    Returns:
        The estimated perimeter (0.0 for an empty mask).
    """
    mask = np.pad(np.asarray(mask, bool), 1)
    boundary = mask & ~ndimage.binary_erosion(mask, _CROSS)
    codes = ndimage.convolve(boundary.astype(np.int32), _PERIMETER_KERNEL, mode="constant")
    return float(_PERIMETER_LENGTH[codes[boundary]].sum())


def circularity(mask):
    """Isoperimetric ratio ``4 pi A / P**2`` of a structure with its holes filled, in pixels.

    About 1 for a disc, lower for elongated or ragged shapes.

    Args:
        mask: (H, W) bool array.

    Returns:
        The ratio, NaN for an empty mask or one without a measurable perimeter.
    """
    filled = _filled(np.asarray(mask, bool))
    length = perimeter(filled)
    if not filled.any() or length <= 0.0:
        return math.nan
    return 4.0 * math.pi * float(filled.sum()) / length ** 2


def _holes(mask, structure=_SQUARE):
    """Label image of the holes of ``mask`` (0 elsewhere) and the largest label.

    A hole is a connected region (under ``structure``) of pixels outside ``mask`` that does not
    reach the edge of the array.
    """
    regions, count = ndimage.label(~mask, structure)
    hole = np.ones(count + 1, bool)
    hole[0] = False
    for edge in (regions[0], regions[-1], regions[:, 0], regions[:, -1]):
        hole[edge] = False
    return np.where(hole[regions], regions, 0), count


def _filled(mask):
    """``mask`` with its holes filled, the background 4-connected as in Painchaud's shape measures.

    With a 4-connected background, a MYO wall with only a diagonal step still closes the cavity.
    """
    return mask | (_holes(mask, _CROSS)[0] > 0)


def _own_holes(mask, other):
    """The holes of ``mask`` that contain no pixel of ``other``."""
    holes, count = _holes(mask)
    shared = np.zeros(count + 1, bool)
    shared[holes[other]] = True
    return (holes > 0) & ~shared[holes]


def _holes_between(a, b):
    """Whether some pixel is enclosed by ``a`` and ``b`` together but by neither alone."""
    return (_holes(a | b | _own_holes(a, b) | _own_holes(b, a))[0] > 0).any()


def _components(mask):
    return ndimage.label(mask, _SQUARE)[1]


def _share_edge(a, b):
    """Whether a pixel of ``a`` and a pixel of ``b`` share an edge."""
    return bool((a[1:] & b[:-1]).any() or (a[:-1] & b[1:]).any()
                or (a[:, 1:] & b[:, :-1]).any() or (a[:, :-1] & b[:, 1:]).any())


def _rv_disconnected(s):
    if not s.myo.any():
        return False
    pieces, count = ndimage.label(s.rv, _SQUARE)
    attached = np.zeros(count + 1, bool)
    attached[pieces[ndimage.binary_dilation(s.myo, _CROSS) & s.rv]] = True
    return not attached[1:].all()


class _Slice:
    """The binary structures of one non-empty slice, cropped to the heart.

    Cropping makes every check cheap on a large image. The one-pixel margin keeps the
    background around the heart (for the touching checks); everything beyond the crop is
    background reaching the image border, so the array edge stands for the open outside.
    """

    def __init__(self, labels, spacing):
        rows = np.flatnonzero((labels != BACKGROUND).any(axis=1))
        cols = np.flatnonzero((labels != BACKGROUND).any(axis=0))
        labels = labels[max(rows[0] - 1, 0):rows[-1] + 2, max(cols[0] - 1, 0):cols[-1] + 2]
        self.spacing = spacing
        self.bg, self.rv, self.myo, self.lv = (labels == value for value in (BACKGROUND, RV, MYO, LV))


_CHECKS = {
    "holes_in_lv": lambda s: (_holes(s.lv)[0] > 0).any(),
    "holes_in_rv": lambda s: (_holes(s.rv)[0] > 0).any(),
    "holes_in_myo": lambda s: _own_holes(s.myo, s.lv).any(),
    "holes_between_lv_and_myo": lambda s: _holes_between(s.lv, s.myo),
    # the LV belongs with the MYO here: where the MYO wall around it has only a diagonal step,
    # the cavity is not a hole of the MYO alone, yet it is no gap between the RV and the MYO
    "holes_between_rv_and_myo": lambda s: _holes_between(s.rv, s.myo | s.lv),
    "disconnectivity_in_lv": lambda s: _components(s.lv) > 1,
    "disconnectivity_in_rv": lambda s: _components(s.rv) > 1,
    "disconnectivity_in_myo": lambda s: _components(s.myo) > 1,
    "rv_disconnected_from_myo": _rv_disconnected,
    "frontier_between_lv_and_rv": lambda s: _share_edge(s.lv, s.rv),
    "frontier_between_lv_and_background": lambda s: _share_edge(s.lv, s.bg),
    "lv_concavity": lambda s: concavity_depth(s.lv, s.spacing) > MAX_CONCAVITY_MM["lv"],
    "rv_concavity": lambda s: concavity_depth(s.rv, s.spacing) > MAX_CONCAVITY_MM["rv"],
    "myo_concavity": lambda s: concavity_depth(s.myo, s.spacing) > MAX_CONCAVITY_MM["myo"],
    "lv_circularity": lambda s: circularity(s.lv) < MIN_CIRCULARITY,
    "myo_circularity": lambda s: circularity(s.myo) < MIN_CIRCULARITY,
}
CHECKS = ("holes",) + tuple(_CHECKS)
"""Every check name :func:`check_slice` accepts."""


def _spacing(spacing):
    spacing = tuple(float(v) for v in spacing)
    if len(spacing) != 2 or not all(v > 0 for v in spacing):
        raise ValueError(f"spacing must be two positive pixel sizes in mm (row, col), got {spacing}")
    return spacing


def check_slice(labels, spacing=(1.0, 1.0), checks=SEVEN_CHECKS):
    """Run anatomical checks on one label slice.

    Args:
        labels: (H, W) integer label map with values in 0..3.
        spacing: pixel size in mm, (row, col); only the concavity checks use it.
        checks: names from :data:`CHECKS`, e.g. :data:`SEVEN_CHECKS` or :data:`PAINCHAUD_CHECKS`.

    Returns:
        Dict check name -> bool, ``True`` where the check failed (an error was found), in the
        order of ``checks``.

    Raises:
        ValueError: for a label map that is not 2-D or holds values outside 0..3, bad spacing
            or an unknown check name.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a 2-D label slice, got shape {labels.shape}")
    if labels.size and (labels.min() < BACKGROUND or labels.max() > LV
                        or (labels.dtype.kind == "f" and (labels % 1).any())):
        raise ValueError("labels must hold only 0 (background), 1 (RV), 2 (MYO) and 3 (LV)")
    spacing = _spacing(spacing)
    checks = tuple(checks)
    unknown = [name for name in checks if name not in CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; known: {CHECKS}")
    if not (labels != BACKGROUND).any():
        return {name: False for name in checks}
    s = _Slice(labels, spacing)
    found = {}

    def run(name):
        if name not in found:
            found[name] = bool(_CHECKS[name](s))
        return found[name]

    results = {}
    for name in checks:
        results[name] = any(run(hole) for hole in HOLE_CHECKS) if name == "holes" else run(name)
    return results


def is_valid(labels, spacing=(1.0, 1.0), checks=SEVEN_CHECKS):
    """Whether one label slice passes every check in ``checks`` (see :func:`check_slice`)."""
    return not any(check_slice(labels, spacing, checks).values())


def volume_validity(volume, spacing, checks=SEVEN_CHECKS):
    """Check every slice of an (H, W, S) label volume.

    Args:
        volume: (H, W, S) integer label volume, slices along the last axis.
        spacing: pixel size in mm; the first two values are used, so a NIfTI header's
            ``get_zooms()`` can be passed as it is.
        checks: check names, as for :func:`check_slice`.

    Returns:
        A :class:`VolumeValidity` (per-slice failures, per-slice validity, fraction valid).
        An all-background slice is valid.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected an (H, W, S) label volume, got shape {volume.shape}")
    spacing = tuple(spacing)[:2]
    slices = [check_slice(volume[..., k], spacing, checks) for k in range(volume.shape[-1])]
    valid = [not any(found.values()) for found in slices]
    return VolumeValidity(slices, valid, float(np.mean(valid)) if valid else 1.0)
