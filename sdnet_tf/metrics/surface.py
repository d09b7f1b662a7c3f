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
    pred_surface, ref_surface = surface(pred), surface(ref)
    return _distances_to(pred_surface, ref_surface, zooms), _distances_to(ref_surface, pred_surface, zooms)


def _summarise(pred, ref, zooms, statistic):
    pred_to_ref, ref_to_pred = surface_distances(pred, ref, zooms)
    if pred_to_ref.size == 0 and ref_to_pred.size == 0:
        return 0.0
    if pred_to_ref.size == 0 or ref_to_pred.size == 0:
        return float("nan")
    return float(statistic(pred_to_ref, ref_to_pred))


def hausdorff(pred, ref, zooms):
    """Symmetric Hausdorff distance in mm: the larger of the two directed maxima.

    0.0 when both masks are empty, NaN when exactly one is (see the module docstring).
    """
    return _summarise(pred, ref, zooms, lambda a, b: max(a.max(), b.max()))


def hd95(pred, ref, zooms):
    """95th percentile in mm of both directed surface distance sets concatenated (as medpy).

    0.0 when both masks are empty, NaN when exactly one is (see the module docstring).
    """
    return _summarise(pred, ref, zooms, lambda a, b: np.percentile(np.concatenate([a, b]), 95))


def assd(pred, ref, zooms):
    """Average symmetric surface distance in mm: the mean of both directed sets concatenated.

    Each surface voxel counts once, so the larger surface weighs more; medpy's ``assd`` instead
    averages the two directed means, which differs when the surfaces differ in size.
    0.0 when both masks are empty, NaN when exactly one is (see the module docstring).
    """
    return _summarise(pred, ref, zooms, lambda a, b: np.concatenate([a, b]).mean())
