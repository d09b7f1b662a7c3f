"""One phantom frame stored the ways other tools store it, and how each copy maps back to the plain one.

Every copy holds the same physical image as ``plain`` (stored as ACDC stores it: qform code 0,
sform code 2 diag(-1, -1, 1), voxel size only in pixdim); a reader that gets the geometry right
segments them all alike.
"""

import nibabel as nib
import numpy as np


def save(data, affine, zooms, path, sform_code=2, units=None, dtype=np.int16):
    """Write ``data`` with this sform, pixdim ``zooms`` and spatial units, qform code 0."""
    img = nib.Nifti1Image(np.asarray(data, dtype), affine)
    img.header.set_qform(None, code=0)
    img.header.set_sform(affine, code=sform_code)
    img.header.set_zooms(tuple(zooms))
    if units:
        img.header.set_xyzt_units(xyz=units)
    nib.save(img, str(path))
    return path


def physical_affine(shape, spacing, thickness):
    """ACDC's orientation (rows to the left, columns posterior) with the voxel size in it."""
    return np.diag([-spacing, -spacing, thickness, 1.0])


def flipped_affine(affine, shape, axes=(0, 1)):
    """The affine of the array flipped along ``axes``, so every voxel keeps its world position."""
    out = affine.copy()
    for axis in axes:
        out[:3, 3] += affine[:3, axis] * (shape[axis] - 1)
        out[:3, axis] = -affine[:3, axis]
    return out


CASES = ("plain", "flipped", "slice_first", "sform_spacing", "metre", "micron", "zero_spacing")
TO_PLAIN = {  # a label array on the copy's grid -> the plain grid
    "flipped": lambda a: a[::-1, ::-1],
    "slice_first": lambda a: a.transpose(1, 2, 0),
}
SAME_ARRAY = ("plain", "sform_spacing", "metre", "micron", "zero_spacing")


def write_cases(image, spacing, thickness, folder, suffix="", dtype=np.int16):
    """Write every case of ``CASES`` as ``folder/<case><suffix>.nii.gz``; returns {case: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    acdc = np.diag([-1.0, -1.0, 1.0, 1.0])
    zooms = (spacing, spacing, thickness)
    true = physical_affine(image.shape, spacing, thickness)
    paths = {name: folder / f"{name}{suffix}.nii.gz" for name in CASES}
    save(image, acdc, zooms, paths["plain"], dtype=dtype)
    save(image[::-1, ::-1], flipped_affine(true, image.shape), zooms, paths["flipped"], dtype=dtype)
    slice_first = np.zeros((4, 4))
    slice_first[:, 0], slice_first[:, 1], slice_first[:, 2], slice_first[:, 3] = true[:, 2], true[:, 0], true[:, 1], \
        true[:, 3]
    save(image.transpose(2, 0, 1), slice_first, (thickness, spacing, spacing), paths["slice_first"], dtype=dtype)
    save(image, true, (1.0, 1.0, 1.0), paths["sform_spacing"], sform_code=1, dtype=dtype)
    save(image, acdc, tuple(z / 1000 for z in zooms), paths["metre"], units="meter", dtype=dtype)
    save(image, acdc, tuple(z * 1000 for z in zooms), paths["micron"], units="micron", dtype=dtype)
    save(image, acdc, (0.0, spacing, thickness), paths["zero_spacing"], dtype=dtype)
    return paths


def to_plain(case, labels):
    return np.asarray(TO_PLAIN.get(case, lambda a: a)(labels))


def agreement(a, b):
    return float((a == b).mean())
