"""Surface distances between two binary masks: Hausdorff distance, its 95th percentile, ASSD.

The surfaces and distances follow medpy and the ACDC evaluation built on it:

* the surface of a mask is ``mask XOR binary_erosion(mask)`` with the face-connected
  structuring element (6-connected in 3-D, 4-connected in 2-D) and the erosion's default
  ``border_value=0``, so a mask touching the edge of the volume has a surface there;
* the distances from one surface to the other are those of
  ``distance_transform_edt(~other_surface, sampling=zooms)`` read at the first surface's voxels,
  in mm, so anisotropic voxels (ACDC: about 1.5 mm in-plane, 5-10 mm between slices) count
  with their true size;
* ``assd`` is the mean of both directed sets concatenated (see its docstring for how this
  differs from medpy's);
* ``hd95`` is the 95th percentile (numpy's linear interpolation) of both directed sets of
  distances concatenated, which is what medpy's ``hd95`` computes (not the maximum of the two
  directed percentiles).

Masks may be 2-D or 3-D; ``zooms`` has one voxel size per axis. When both masks are empty the
summaries are 0.0 (nothing to disagree about); when exactly one is empty they are NaN, since a
distance to an empty surface is undefined, so that means taken with ``np.nanmean`` skip them.

Both the erosion and the distance transform run on the bounding box of the two masks, not on
the whole volume, with the same result: a mask voxel on the box's face has a background (or
out-of-array) neighbour beyond it either way, every surface voxel lies inside the box, and the
Euclidean transform's distance to the nearest surface voxel does not depend on how much
background surrounds it. On an ACDC volume the heart's box is a few percent of the voxels.
``summaries`` computes the three figures from one pair of distance sets (evaluation reports all
three per structure).
"""

import numpy as np
from scipy import ndimage

from sdnet_tf.metrics.overlap import check_shapes, check_zooms


def surface(mask):
    """Boolean surface voxels of a mask: the voxels that a face-connected erosion removes.

    The erosion treats everything outside the array as background, so mask voxels on the
    array's border are surface voxels.
    """
    mask = np.asarray(mask).astype(bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _distances_to(surface_from, surface_to, zooms):
    if not surface_to.any():
        # the distance to an empty set is the infimum over nothing
        return np.full(np.count_nonzero(surface_from), np.inf)
    field = ndimage.distance_transform_edt(~surface_to, sampling=zooms)
    return field[surface_from]


def _bounding_box(pred, ref):
    """The slices of the bounding box of ``pred | ref``, or None when both are empty."""
    box = ndimage.find_objects((pred | ref).astype(np.uint8))
    return box[0] if box else None


def surface_distances(pred, ref, zooms):
    """Directed surface distances in mm between two masks.

    Args:
        pred: predicted mask (nonzero counts as True), 2-D or 3-D.
        ref: reference mask, the shape of ``pred``.
        zooms: voxel size in mm, one per axis (the NIfTI header's (dx, dy, dz) for 3-D).

    Returns:
        ``(pred_to_ref, ref_to_pred)``: for every surface voxel of ``pred`` the distance to the
        nearest surface voxel of ``ref``, and the other way round, as float64 arrays. A set from
        an empty mask is empty; distances to an empty mask are ``inf``.

    Raises:
        ValueError: if the shapes differ or ``zooms`` does not have one positive size per axis.
    """
    pred, ref = check_shapes(pred, ref)
    zooms = check_zooms(zooms, pred.ndim)
    pred, ref = pred.astype(bool), ref.astype(bool)
    box = _bounding_box(pred, ref)
    if box is not None:
        pred, ref = pred[box], ref[box]
    pred_surface, ref_surface = surface(pred), surface(ref)
    return _distances_to(pred_surface, ref_surface, zooms), _distances_to(ref_surface, pred_surface, zooms)


def _summarise(pred, ref, zooms, statistic):
    return _statistic(surface_distances(pred, ref, zooms), statistic)


def _statistic(distances, statistic):
    pred_to_ref, ref_to_pred = distances
    if pred_to_ref.size == 0 and ref_to_pred.size == 0:
        return 0.0
    if pred_to_ref.size == 0 or ref_to_pred.size == 0:
        return float("nan")
    return float(statistic(pred_to_ref, ref_to_pred))


def _hd(a, b):
    return max(a.max(), b.max())


def _hd95(a, b):
    return np.percentile(np.concatenate([a, b]), 95)


def _assd(a, b):
    return np.concatenate([a, b]).mean()


def summaries(pred, ref, zooms):
    """``{"HD": hausdorff, "HD95": hd95, "ASSD": assd}`` in mm from one computation of the
    surface distances (each as its function below; 0.0 / NaN for empty masks likewise).

    Raises:
        ValueError: as ``surface_distances``.
    """
    distances = surface_distances(pred, ref, zooms)
    return {"HD": _statistic(distances, _hd), "HD95": _statistic(distances, _hd95),
            "ASSD": _statistic(distances, _assd)}


def hausdorff(pred, ref, zooms):
    """Symmetric Hausdorff distance in mm: the larger of the two directed maxima.

    0.0 when both masks are empty, NaN when exactly one is (see the module docstring).
    """
    return _summarise(pred, ref, zooms, _hd)


def hd95(pred, ref, zooms):
    """95th percentile in mm of both directed surface distance sets concatenated (as medpy).

    0.0 when both masks are empty, NaN when exactly one is (see the module docstring).
    """
    return _summarise(pred, ref, zooms, _hd95)


def assd(pred, ref, zooms):
    """Average symmetric surface distance in mm: the mean of both directed sets concatenated.

    Each surface voxel counts once, so the larger surface weighs more; medpy's ``assd`` instead
    averages the two directed means, which differs when the surfaces differ in size.
    0.0 when both masks are empty, NaN when exactly one is (see the module docstring).
    """
    return _summarise(pred, ref, zooms, _assd)
