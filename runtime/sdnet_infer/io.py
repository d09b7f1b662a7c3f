"""NIfTI input and output through one geometry reader, and atomic writes.

Volumes are read by ``sdnet_infer.geometry`` (voxel size in mm by a documented rule, the slice
axis, the training orientation) and handed to the caller in the training orientation with
their voxel size; outputs are put back on the input's own grid and written with its affine
and header, so they overlay the input exactly. Every file is written beside its target and
renamed over it, so a reader never sees half a file, and a failed or interrupted write leaves
nothing behind.
"""

import contextlib
import errno
import glob
import gzip
import json
import os
import re
import secrets
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import imageglobals
from nibabel.openers import ImageOpener

from sdnet_infer.geometry import TRAINING_ORIENTATION, DataError, VolumeGeometry, raw_header, read_geometry
from sdnet_infer.labels import LABEL_CONVENTIONS, LABELS  # background, RV, MYO, LV

__all__ = ["LABELS", "DataError", "Volume", "atomic_path", "check_label_convention", "check_output_location",
           "describe_os_error", "folder_problem", "labels_in_convention", "load_labels", "load_volume", "missing_reason",
           "parse_label_map",
           "prepare_output_dir", "read_labels", "read_volume", "save_labels", "save_volume", "write_json", "write_text"]


@contextlib.contextmanager
def _nibabel_silenced():
    """Mute nibabel's global logger (its own handler and propagation to the application's)."""
    logger = imageglobals.logger
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def _naming(error, path):
    """``error`` again, naming ``path`` (the target, not a temporary name); as it is if its type
    cannot be rebuilt that way."""
    try:
        return type(error)(error.errno, error.strerror or str(error), str(path))
    except TypeError:
        return error


def describe_os_error(error):
    """One line for a failed file operation: the path, then the system's reason."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno == errno.ENOSPC:
        reason = "no space left on device"
    path = error.filename if error.filename is not None else "output"
    return f"{path}: {reason}"


def prepare_output_dir(path):
    """Create the output folder ``path`` (and its parents) before any work is done.

    Raises:
        OSError: naming ``path`` when it cannot be created or written (a file in the way,
            no permission, a read-only file system).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _naming(error, path) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "cannot write in this folder", str(path))
    return path


def check_output_location(path):
    """Check, creating nothing, that the folder ``path`` exists writable or could be created.

    Raises:
        OSError: naming ``path``, when a file is in its way or the nearest existing folder
            above it cannot be written.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"cannot create a folder here ({existing} is a file)", str(path))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"cannot write in {existing}", str(path))
    return path


@contextlib.contextmanager
def atomic_path(path, shared=False):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the full suffix (``.nii.gz``, ``.keras``, ``.npz``), which the
    writing libraries use to pick the format. On any failure (a full disk, an interrupt) the
    temporary file is removed; an ``OSError`` is raised again naming ``path`` itself, and an
    interrupt as ``KeyboardInterrupt`` naming it.

    The temporary name is ``<stem>.tmp.<suffix>``, so a process killed mid-write leaves one file
    that the next write of ``path`` replaces. With ``shared=True`` (a file that several
    processes may write at once, such as a preprocessing cache shared by parallel runs) it is
    unique to the writer (host, process id and a random part) instead: each writer renames a
    complete file and the last one wins. A shared write killed midway leaves its temporary file
    behind; the next shared write of ``path`` on the same host removes those whose process has
    ended.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _naming(error, path.parent) from None
    stem, dot, suffix = path.name.partition(".")
    if shared:
        host = _host_tag()
        _remove_orphans(path, stem, host, dot + suffix)
        tmp = path.with_name(f"{stem}.tmp-{host}-{os.getpid()}-{secrets.token_hex(4)}{dot}{suffix}")
    else:
        tmp = path.with_name(f"{stem}.tmp{dot}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        raise _naming(error, path) from error
    except KeyboardInterrupt as error:
        raise KeyboardInterrupt(f"{path}: interrupted while writing; nothing was written") from error
    finally:
        with contextlib.suppress(OSError):
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp)
            elif tmp.exists() or tmp.is_symlink():
                tmp.unlink()


def _host_tag():
    """This host's name as a file-name part (letters, digits and underscores)."""
    import socket

    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


def _remove_orphans(path, stem, host, suffix):
    """Remove the temporary files of shared writes of ``path`` left by ended processes of this
    host (a process of another host sharing the folder is left alone: its id means nothing here)."""
    pattern = re.compile(rf"{re.escape(stem)}\.tmp-{re.escape(host)}-(\d+)-[0-9a-f]{{8}}{re.escape(suffix)}")
    for candidate in path.parent.glob(f"{glob.escape(stem)}.tmp-{glob.escape(host)}-*"):
        match = pattern.fullmatch(candidate.name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:  # ended: nobody will rename it
            with contextlib.suppress(OSError):
                candidate.unlink()
        except (PermissionError, OverflowError, OSError):  # alive under another user, or not a process id
            pass


def write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_json(path, value):
    return write_text(path, json.dumps(value, indent=2, default=str))


@dataclass
class Volume:
    """A NIfTI volume in the training orientation.

    Attributes:
        data: float32 (H, W, S) frame or (H, W, S, T) cine, in the training orientation.
        zooms: voxel size of ``data``'s axes in mm (the time step of a cine as stored).
        geometry: the ``VolumeGeometry`` that maps ``data`` back to the stored grid.
        image: the nibabel image (its affine and header are reused for outputs).
    """

    data: np.ndarray
    zooms: tuple
    geometry: VolumeGeometry
    image: object


def read_volume(path, ndim=(3,), kind="image", orientation=TRAINING_ORIENTATION, dtype=np.float32, slicing="auto"):
    """Read a NIfTI volume into the training orientation (see ``sdnet_infer.geometry``).

    ``slicing`` is the slice-axis rule of ``read_geometry``: "auto", "axial" for whole-heart
    volumes cut into axial slices, or a stored axis 0, 1 or 2 that is the slice axis.

    Raises ``DataError`` naming the file for a missing or unreadable file (a truncated
    ``.nii.gz`` included, or a gzip-compressed one named ``.nii``), a ``vox_offset`` inside the
    header, a dimensionality not in ``ndim`` (a 4-D file of one time point is
    read as 3-D where only 3-D is accepted), complex, RGB or vector values,
    NaN or infinite values, an image (a ``kind`` without "label") that holds only a few whole
    numbers from 0 to ``MAX_LABEL_VALUE`` (a label map), and a
    geometry that cannot be interpreted (zero, negative or non-finite voxel size, unknown units, an
    undecidable slice axis, an affine contradicting the voxel sizes).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {missing_reason(path)}")
    try:
        with _nibabel_silenced():  # its header fixes name no file; read_geometry refuses what they hide
            img = _load(path)
            if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
                _refuse_other_format(img, path)
            offset_problem = _data_offset_problem(path)
            if offset_problem:
                raise DataError(f"{path}: {offset_problem}")
            with np.errstate(over="ignore", invalid="ignore"):  # an overflowing scl_slope: named below
                data = np.asarray(img.dataobj)
    except DataError:  # _refuse_other_format's, a ValueError: not one of nibabel's below
        raise
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError,
            nib.spatialimages.HeaderDataError) as error:
        if "w2 should be positive" in str(error):  # nibabel's check of the qform's quaternion
            raise DataError(f"{path}: the qform's quaternion is not normalised (b^2 + c^2 + d^2 > 1, {error}); "
                            "its orientation cannot be read") from error
        hint = _dim0_problem(path) or _data_offset_problem(path) or _compression_mismatch(path)
        if hint:
            raise DataError(f"{path}: {hint}") from error
        raise DataError(f"{path}: cannot read the {kind} ({type(error).__name__}: {error}); "
                        "the file may be truncated or not NIfTI") from error
    dims = [int(d) for d in img.header["dim"][1:int(img.header["dim"][0]) + 1]]
    if any(d < 1 for d in dims):
        axis = next(i for i, d in enumerate(dims) if d < 1) + 1
        raise DataError(f"{path}: dim[{axis}] is {dims[axis - 1]}: the header gives the {kind} no voxels along "
                        f"axis {axis} (dim {dims})")
    if data.ndim == 4 and data.shape[3] == 1 and 3 in ndim and 4 not in ndim:
        data = data[..., 0]  # one frame stored 4-D (a cine of one time point, as predict writes for one): a frame
    if data.ndim not in ndim:
        expected = " or ".join(f"{n}-D" for n in ndim)
        raise DataError(f"{path}: the {kind} is {data.ndim}-D with shape {data.shape}, expected {expected}")
    if np.iscomplexobj(data):
        raise DataError(f"{path}: the {kind} has complex values ({data.dtype}); give the magnitude image")
    if data.dtype.fields is not None or data.dtype.kind not in "biuf":
        raise DataError(f"{path}: the {kind} holds {data.dtype} values (RGB colour or vector data); "
                        "give a grey-level image")
    geometry = read_geometry(path, img, orientation, slicing)
    with np.errstate(over="ignore", invalid="ignore"):
        data = data.astype(dtype)
    if not np.isfinite(data).all():
        stored = np.asanyarray(img.dataobj.get_unscaled()) if hasattr(img.dataobj, "get_unscaled") else data
        if stored.dtype.kind != "f" or np.isfinite(stored).all():
            slope, inter = float(getattr(img.dataobj, "slope", 1.0)), float(getattr(img.dataobj, "inter", 0.0))
            raise DataError(f"{path}: the {kind}'s stored values are finite, but scaled by scl_slope {slope:g} and "
                            f"scl_inter {inter:g} they overflow {np.dtype(dtype).name}: the header's scaling is "
                            "wrong; correct scl_slope and scl_inter")
        raise DataError(f"{path}: the {kind} contains NaN or infinite values")
    if "label" not in kind:
        _refuse_label_map(data, path, kind)
    zooms = geometry.training_spacing + tuple(float(z) for z in img.header.get_zooms()[3:data.ndim])
    return Volume(geometry.to_training(data), zooms, geometry, img)


def _load(path):
    """``nib.load``, and for a name whose extension mixes cases (``B.Nii``, ``D.Nii.Gz``), which
    nibabel rewrites to a file that is not there, the file's bytes read as the NIfTI-1 or
    NIfTI-2 single file its ``sizeof_hdr`` says (``ImageOpener`` decompresses by the extension
    in any case)."""
    try:
        return nib.load(str(path))
    except FileNotFoundError:
        if not path.is_file():
            raise
    with ImageOpener(str(path)) as handle:
        raw = handle.read()
    sizes = {int(np.frombuffer(raw[:4], f"{order}i4")[0]) for order in "<>"} if len(raw) >= 4 else set()
    return (nib.Nifti2Image if 540 in sizes else nib.Nifti1Image).from_bytes(raw)


def _refuse_other_format(img, path):
    """Refuse what ``nib.load`` reads besides a single-file NIfTI-1 or NIfTI-2 image: an
    Analyze 7.5 ``.hdr`` / ``.img`` pair (no orientation in its header at all) and a NIfTI
    ``.hdr`` / ``.img`` pair (its labels could not be written as one file with its header)."""
    if isinstance(img, (nib.Nifti1Pair, nib.Nifti2Pair)):
        raise DataError(f"{path}: a NIfTI .hdr/.img pair; give it as one .nii or .nii.gz file "
                        "(e.g. nibabel.save(nibabel.load(PATH), 'image.nii.gz'))")
    if isinstance(img, nib.AnalyzeImage):
        raise DataError(f"{path}: an Analyze 7.5 image ({type(img).__name__}), whose header has no "
                        "orientation (no sform or qform): convert it to NIfTI with its orientation from the "
                        "source images")
    raise DataError(f"{path}: a {type(img).__name__} image, not NIfTI; give a .nii or .nii.gz file")


MAX_LABEL_VALUE = 15  # label maps this reader refuses as images: ACDC's and M&Ms' 0-3, up to 15 classes


def _refuse_label_map(data, path, kind):
    """Refuse an image that holds only a few whole numbers from 0 to ``MAX_LABEL_VALUE`` (at
    least two): a label map (e.g. ACDC's ``_gt`` file) given where an MR image belongs, which
    would otherwise be segmented as if it were one. No MR image is quantised so coarsely; a
    constant image is left to the normalisation's own message."""
    lo, hi = float(data.min()), float(data.max())
    if lo < 0 or hi > MAX_LABEL_VALUE or hi == lo or not np.array_equal(data, np.rint(data)):
        return
    values = np.flatnonzero(np.bincount(data.astype(np.uint8).ravel(), minlength=int(hi) + 1))
    raise DataError(f"{path}: the {kind} holds only the values {', '.join(map(str, values))}: a label map (a "
                    "segmentation) or an image quantised to at most 16 levels, not an MR image; give the image "
                    "itself, as scanned")


def _data_offset_problem(path):
    """Why a single-file NIfTI's ``vox_offset`` cannot be where its voxels begin, or None: below
    the end of its header (byte 352 for NIfTI-1, 544 for NIfTI-2), or, with the extension flag
    set and room for extensions, inside the first extension (its ``esize`` from byte 352 or 544).
    nibabel reads from such an offset, or refuses it as "too low" naming NIfTI-1 for either
    format; offset 0, which .hdr/.img pairs use, would shift the whole image by the header."""
    stored = _header_bytes(path, 560)
    if stored is None:
        return None
    raw, order, size = stored
    offset = float(np.frombuffer(raw[108:112], f"{order}f4")[0]) if size == 348 else \
        int(np.frombuffer(raw[168:176], f"{order}i8")[0])
    first, name = (352, "NIfTI-1") if size == 348 else (544, "NIfTI-2")
    if offset < first:
        return (f"vox_offset {offset:g} lies inside the {first}-byte header of a single {name} file, whose voxels "
                f"start at byte {first} or later: where the voxels begin cannot be known; the header is damaged")
    flagged = len(raw) >= first and raw[first - 4] != 0
    if flagged and offset > first and len(raw) >= first + 8:
        esize = int(np.frombuffer(raw[first:first + 4], f"{order}i4")[0])
        if esize >= 16 and offset < first + esize:
            return (f"vox_offset {offset:g} lies inside the header extension that starts at byte {first} and is "
                    f"{esize} bytes long: where the voxels begin cannot be known; the header is damaged")
    return None


def _compression_mismatch(path):
    """"gzip-compressed but named .nii", or "named .gz but not gzip-compressed" for a plain
    NIfTI header under a .gz name, or None (nibabel decompresses by the extension, not by the
    bytes)."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
    except OSError:
        return None
    gzipped = start[:2] == b"\x1f\x8b"
    name = str(path).lower()
    if name.endswith(".nii") and gzipped:
        return "the file is gzip-compressed but named .nii: rename it to end in .nii.gz"
    if name.endswith(".gz") and _sizeof_hdr(start) is not None:
        return "the file is named .gz but is not gzip-compressed (a plain NIfTI file): rename it to end in .nii"
    return None


def _dim0_problem(path):
    """Why nibabel could not read ``path``'s header when its ``dim[0]`` is the cause, or None.

    nibabel takes a ``dim[0]`` outside 1-7 as a sign of the other byte order and then fails on
    another field (``vox offset 0 too low``); a 348-byte NIfTI-1 header whose ``dim[0]`` is
    outside 1-7 in both byte orders is named for that instead."""
    stored = _header_bytes(path, 348)
    if stored is None or stored[2] != 348:
        return None
    raw, order, _ = stored
    dim0 = int(np.frombuffer(raw[40:42], f"{order}i2")[0])
    swapped = int(np.frombuffer(raw[40:42], f"{'>' if order == '<' else '<'}i2")[0])
    if not 1 <= dim0 <= 7 and not 1 <= swapped <= 7:
        return f"dim[0] is {dim0}, not a number of dimensions (1-7): the header is corrupt"
    return None


def _header_bytes(path, count):
    """(the first ``count`` bytes, byte order "<" or ">", ``sizeof_hdr`` 348 or 540) of a NIfTI
    file as stored (decompressed by its extension), or None when it cannot be read or starts
    with no NIfTI-1 or NIfTI-2 size in either byte order."""
    try:
        with ImageOpener(str(path)) as handle:
            raw = handle.read(count)
    except Exception:  # unreadable: the caller's message stands
        return None
    found = _sizeof_hdr(raw) if len(raw) >= 348 else None
    return None if found is None else (raw, *found)


def _sizeof_hdr(start):
    """(byte order "<" or ">", ``sizeof_hdr`` 348 or 540) read from a header's first 4 bytes,
    or None when they give neither NIfTI size in either byte order."""
    if len(start) < 4:
        return None
    for order in "<>":
        size = int(np.frombuffer(start[:4], f"{order}i4")[0])
        if size in (348, 540):
            return order, size
    return None


def missing_reason(path):
    """Why ``path`` is not a readable file, in a few words: "no such file", "a folder, not a
    file", "a broken symbolic link to TARGET" or "a symbolic link loop"."""
    path = Path(path)
    if path.is_dir():
        return "a folder, not a file"
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as error:
            if error.errno == errno.ELOOP:
                return "a symbolic link loop"
            return f"a broken symbolic link to {os.readlink(path)}"
    return "no such file"


def folder_problem(path):
    """Why ``path`` cannot be used as a folder, in a few words, or None when it can (a folder,
    or nothing there yet): "a file, not a folder", "a broken symbolic link to TARGET" (a folder
    would be made at the link's target) or "a symbolic link loop"."""
    path = Path(path)
    if path.is_dir():
        return None
    if path.is_symlink():
        return missing_reason(path) if not path.exists() else "a file, not a folder"
    if path.exists():
        return "a file, not a folder"
    return None


def load_volume(path, ndim=(3,), kind="image", orientation=TRAINING_ORIENTATION):
    """``read_volume`` as a tuple: ``(data (H, W, S[, T]) float32, zooms in mm, nibabel image)``."""
    volume = read_volume(path, ndim, kind, orientation)
    return volume.data, volume.zooms, volume.image


def parse_label_map(text):
    """``"mnms"`` or ``"1:3,2:2,3:1"`` -> {stored label: ACDC label}; ``None`` -> ``None``."""
    if text is None:
        return None
    # M&Ms: 1 LV, 2 MYO, 3 RV; each convention's table inverted (written label -> ACDC label)
    named = {name: {stored: acdc for acdc, stored in table.items()} for name, table in LABEL_CONVENTIONS.items()}
    if str(text).lower() in named:
        return named[str(text).lower()]
    mapping = {}
    try:
        for item in str(text).split(","):
            stored, acdc = item.split(":")
            mapping[int(stored)] = int(acdc)
    except ValueError as error:
        raise DataError(f"label map {text!r}: expected 'mnms', 'acdc' or pairs like '1:3,2:2,3:1'") from error
    if not set(mapping.values()) <= set(LABELS):
        raise DataError(f"label map {text!r}: targets must be ACDC labels {LABELS}")
    return mapping


def check_label_convention(convention, source="label convention"):
    """``convention`` if it is a key of ``sdnet_infer.labels.LABEL_CONVENTIONS`` ("acdc", "mnms").

    Raises:
        DataError: naming ``source``, for any other value.
    """
    if convention not in LABEL_CONVENTIONS:
        raise DataError(f"{source}: unknown label convention {convention!r}; expected one of "
                        f"{', '.join(sorted(LABEL_CONVENTIONS))}")
    return convention


def labels_in_convention(labels, convention="acdc"):
    """ACDC label values (0 background, 1 RV, 2 MYO, 3 LV), any shape -> uint8 labels of the
    same shape in ``convention`` ("acdc": unchanged; "mnms": 1 LV, 2 MYO, 3 RV).

    Raises:
        DataError: an unknown convention, or a value that is not an ACDC label.
    """
    table = LABEL_CONVENTIONS[check_label_convention(convention)]
    labels = np.asarray(labels)
    bad = sorted(set(np.unique(labels).tolist()) - set(LABELS))
    if bad:
        raise DataError(f"labels {bad[:5]} are not ACDC labels {LABELS}; cannot write them in the "
                        f"{convention} convention")
    lookup = np.zeros(max(LABELS) + 1, np.uint8)
    for acdc, written in table.items():
        lookup[acdc] = written
    return lookup[labels.astype(np.intp)]


def _exact(value):
    """A stored label value in the fewest digits that give it back: 421 (not 421.0), 205.4,
    2.0000002 (float32's neighbour of 2, which a fixed number of digits would round to 2)."""
    text = str(np.float32(value)) if np.asarray(value).dtype.kind == "f" else str(value)
    return text[:-2] if text.endswith(".0") else text


def read_labels(path, image_shape=None, like=None, label_map=None, orientation=TRAINING_ORIENTATION,
                slicing="auto", ndim=(3,)):
    """Read a label volume into the training orientation and check it; returns a ``Volume``.

    Args:
        path: the label file.
        image_shape: the training-oriented shape it must have.
        like: a ``VolumeGeometry`` whose grid (shape, voxel size, affine) it must share.
        label_map: {stored label: ACDC label} for labels in another convention (see
            ``parse_label_map``; stored values may be any integers, e.g. MM-WHS' 205, 500,
            600); stored labels outside it (other than 0) are refused.
        slicing: the slice-axis rule of ``read_geometry`` (the image's).
        ndim: the dimensionalities accepted: (3,) for a frame's labels, (4,) for labels over
            time (M&Ms' ``_sa_gt``: H x W x slices x time, labelled at ED and ES).

    The ``Volume``'s data are uint8 labels (H, W, S[, T]) in ACDC's convention. Raises ``DataError``
    naming the file(s) on any mismatch.
    """
    volume = read_volume(path, ndim=ndim, kind="label volume", orientation=orientation, slicing=slicing)
    data = volume.data
    if like is not None:
        check_same_grid(volume, like, path)
    if image_shape is not None and tuple(data.shape) != tuple(image_shape):
        raise DataError(f"{path}: label shape {data.shape} does not match the image shape {tuple(image_shape)}")
    values = np.unique(data)
    allowed = LABELS if label_map is None else (0, *label_map)
    bad = [v for v in values if v not in allowed]
    if bad:
        shown = ", ".join(_exact(v) for v in sorted(bad)[:5])
        raise DataError(f"{path}: labels {shown} outside {{{', '.join(map(str, allowed))}}}"
                        + ("" if label_map is None else " (the label map's)"))
    if label_map is None:
        labels = data.astype(np.uint8)
    else:  # by value, not through uint8: stored labels may exceed 255
        labels = np.zeros(data.shape, np.uint8)
        for stored, acdc in label_map.items():
            labels[data == stored] = acdc
    volume.data = labels
    return volume


def load_labels(path, image_shape=None, like=None, label_map=None, orientation=TRAINING_ORIENTATION,
                slicing="auto", ndim=(3,)):
    """``read_labels`` as a tuple: ``(uint8 labels (H, W, S[, T]), zooms in mm, nibabel image)``."""
    volume = read_labels(path, image_shape, like, label_map, orientation, slicing, ndim)
    return volume.data, volume.zooms, volume.image


GRID_TOLERANCE_VOXELS = 0.1  # two grids are one when no voxel corner moves a tenth of a voxel along any axis


def axis_along(path, like):
    """The stored axis of ``path`` that runs along the slice axis of ``like`` (a
    ``VolumeGeometry``): the affine column nearest that direction in space. So a slice axis given
    for one file (``evaluate --slice-axis``, the reference's) is found in another file of the
    same grid stored in another axis order. ``like.slice_axis`` itself when either file has no
    orientation (qform and sform codes 0) or ``path`` cannot be read (``read_volume`` then names
    the problem)."""
    if like.axcodes is None:
        return like.slice_axis
    try:
        with _nibabel_silenced():
            img = _load(Path(path))
        oriented = int(img.header["sform_code"]) > 0 or int(img.header["qform_code"]) > 0
    except Exception:  # read_volume reports it, naming the file
        return like.slice_axis
    if not oriented:
        return like.slice_axis
    columns = np.asarray(img.affine, np.float64)[:3, :3]
    direction = np.asarray(like.affine, np.float64)[:3, like.slice_axis]
    cosines = np.abs(columns.T @ direction) / np.maximum(np.linalg.norm(columns, axis=0) * np.linalg.norm(direction),
                                                         1e-12)
    return int(np.argmax(cosines))


def check_same_grid(volume, like, path, other=None):
    """Refuse ``volume`` (at ``path``) unless its voxels are ``like``'s: the same shape, voxel
    size and position in space once both are in the training orientation, which is how they are
    compared. So a copy of ``like``'s grid stored in another axis order or direction, its affine
    updated to match (as SimpleITK-based tools write a volume), is the same grid. Positions are
    compared in mm as the geometry reader places the voxels (``VolumeGeometry.training_grid_mm``: the axis
    directions of the affine, the voxel size it decided, so a placeholder affine such as ACDC's
    diag(-1, -1, 1) with the size in ``pixdim`` and the same grid written by ITK-based tools
    with the size in the affine agree), whatever units each header uses: the corners of the
    volume must lie within ``GRID_TOLERANCE_VOXELS`` (a tenth) of a voxel of each other along
    each of ``like``'s axes.

    Args:
        volume: a ``Volume`` (or anything with a ``geometry``); like: a ``VolumeGeometry``.
        path: ``volume``'s file, for the message; other: ``like``'s name (default its source).

    Raises:
        DataError: naming both files and what differs.
    """
    other = other or like.source
    g = volume.geometry
    if g.training_shape != like.training_shape:
        stored = "" if g.shape == g.training_shape and like.shape == like.training_shape else \
            f" (stored {g.shape} and {like.shape})"
        raise DataError(f"{path}: shape {g.training_shape} does not match {other}'s {like.training_shape} in the "
                        f"training orientation{stored}")
    if not np.allclose(g.training_spacing, like.training_spacing, rtol=1e-3):
        raise DataError(f"{path}: voxel size {g.training_spacing} mm does not match {other}'s "
                        f"{like.training_spacing} mm in the training orientation")
    shape = g.training_shape
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)]).T
    ours, theirs = g.training_grid_mm, like.training_grid_mm
    moved = (ours @ corners - theirs @ corners)[:3]
    in_voxels = np.abs(np.linalg.solve(theirs[:3, :3], moved)).max()  # along like's axes, in its voxels
    if in_voxels > GRID_TOLERANCE_VOXELS:
        apart = np.linalg.norm(moved, axis=0).max()
        raise DataError(f"{path}: its affine places the volume up to {apart:.3g} mm ({in_voxels:.2g} voxels) away "
                        f"from {other}'s; the two are not on the same grid")


NIFTI_INTENT_LABEL = 1002


def save_labels(labels, reference, path, geometry=None):
    """Write uint8 labels with ``reference``'s geometry and header, atomically, in its format
    (NIfTI-1 or NIfTI-2).

    ``labels`` are on the reference's stored grid, or in the training orientation when the
    reference's ``geometry`` is given (they are put back first). The header is the reference
    file's as stored (its sform, qform, codes and ``pixdim`` byte for byte, not nibabel's fixed
    copy, which turns a zero or negative ``pixdim`` into a positive one); only what describes
    the values changes: uint8 without scaling, display range ``cal_min``/``cal_max`` 0 to the
    largest label, intent NIFTI_INTENT_LABEL, and no description, auxiliary file or header
    extensions (free text that may name the patient).
    """
    if geometry is not None:
        labels = geometry.from_training(np.asarray(labels))
    labels = np.asarray(labels, dtype=np.uint8)
    header_class = type(reference.header)
    image_class = nib.Nifti2Image if isinstance(reference.header, nib.Nifti2Header) else nib.Nifti1Image
    stored = _stored_header(reference, header_class)
    if stored is None:  # an image made in memory: its header and affine as nibabel holds them
        out = image_class(labels, reference.affine, reference.header.copy())
    else:
        with _nibabel_silenced():  # its constructor's pixdim fixes, undone below
            out = image_class(labels, None, stored.copy())  # no affine: the stored sform and qform stay
        out.header["pixdim"] = stored["pixdim"]
    header = out.header
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, float(max(LABELS))
    if hasattr(header, "extensions"):
        del header.extensions[:]  # free text a scanner or converter put there (a patient's name, say)
    header["intent_code"] = NIFTI_INTENT_LABEL
    for name in ("intent_p1", "intent_p2", "intent_p3"):
        header[name] = 0.0
    for name in ("intent_name", "descrip", "aux_file"):
        header[name] = b""
    with atomic_path(path) as tmp:
        nib.save(out, str(tmp))
    return Path(path)


def _stored_header(image, header_class):
    """``image``'s header as its file stores it (``geometry.raw_header``), or None for an image
    without a file."""
    filename = image.get_filename() if hasattr(image, "get_filename") else None
    if not filename or not Path(filename).is_file():
        return None
    try:
        stored = raw_header(filename, header_class)
    except Exception:  # unreadable now: nibabel's copy will do
        return None
    return stored if int(stored["sizeof_hdr"]) == header_class.sizeof_hdr else None  # not a single-file NIfTI


def save_volume(data, affine, zooms, path, dtype=np.float32):
    """Write a volume as ACDC's files are: qform code 0, sform code 2, voxel size in the zooms."""
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_qform(None, code=0)
    img.header.set_sform(affine, code=2)
    img.header.set_zooms(tuple(zooms))  # last: the sform need not carry the voxel size (as in ACDC)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
