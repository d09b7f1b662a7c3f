"""NIfTI input and output on nibabel, honouring ACDC's header quirks, and atomic writes.

ACDC files carry qform_code 0 and an sform of diag(-1, -1, 1): ``img.affine`` does not hold
the voxel size, so spacing always comes from ``header.get_zooms()``; outputs are written with
the input's affine and header so they overlay the input exactly. Every file is written beside
its target and renamed over it, so a reader never sees half a file.
"""

import contextlib
import gzip
import json
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

LABELS = (0, 1, 2, 3)  # background, RV, MYO, LV


class DataError(ValueError):
    """Input data that cannot be used; the message names the source and the problem."""


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the full suffix (``.nii.gz``, ``.keras``, ``.npz``), which the
    writing libraries use to pick the format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, dot, suffix = path.name.partition(".")
    tmp = path.with_name(f"{stem}.tmp{dot}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_json(path, value):
    return write_text(path, json.dumps(value, indent=2, default=str))


def load_volume(path, ndim=(3,), kind="image"):
    """Read a NIfTI volume; returns ``(data as float32, zooms, nibabel image)``.

    Raises ``DataError`` naming the file for a missing or unreadable file (a truncated
    ``.nii.gz`` included), a dimensionality not in ``ndim``, and NaN or infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError) as error:
        raise DataError(f"{path}: cannot read the {kind} ({type(error).__name__}: {error}); "
                        "the file may be truncated or not NIfTI") from error
    if data.ndim not in ndim:
        expected = " or ".join(f"{n}-D" for n in ndim)
        raise DataError(f"{path}: the {kind} is {data.ndim}-D with shape {data.shape}, expected {expected}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
    if any(not np.isfinite(z) or z <= 0 for z in zooms[:2]):
        raise DataError(f"{path}: invalid voxel size {zooms} in the header")
    data = data.astype(np.float32)
    if not np.isfinite(data).all():
        raise DataError(f"{path}: the {kind} contains NaN or infinite values")
    return data, zooms, img


def load_labels(path, image_shape=None):
    """Read a label volume and check it against ACDC's label set and the image's shape."""
    data, zooms, img = load_volume(path, kind="label volume")
    if image_shape is not None and tuple(data.shape) != tuple(image_shape):
        raise DataError(f"{path}: label shape {data.shape} does not match the image shape {tuple(image_shape)}")
    values = np.unique(data)
    bad = [v for v in values if v not in LABELS]
    if bad:
        raise DataError(f"{path}: labels {sorted(float(v) for v in bad)[:5]} outside {{0, 1, 2, 3}}")
    return data.astype(np.uint8), zooms, img


def save_labels(labels, reference, path):
    """Write uint8 labels with ``reference``'s affine and header, atomically."""
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), reference.affine, header)
    with atomic_path(path) as tmp:
        nib.save(out, str(tmp))
    return Path(path)


def save_volume(data, affine, zooms, path, dtype=np.float32):
    """Write a volume as ACDC's files are: qform code 0, sform code 2, voxel size in the zooms."""
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_qform(None, code=0)
    img.header.set_sform(affine, code=2)
    img.header.set_zooms(tuple(zooms))  # last: the sform need not carry the voxel size (as in ACDC)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
