"""Voxel geometry of NIfTI volumes: voxel size in mm, the slice axis, and the training orientation.

One reader for training, ``sdnet-tf predict``, ``evaluate`` and ``sdnet-infer``. The rule:

1. **Voxel size.** The header is read twice: by nibabel, and raw from the file's bytes,
   because nibabel replaces a zero ``pixdim`` by 1 (with a warning that names no file).
   The affine is the sform when ``sform_code > 0``, else the qform when ``qform_code > 0``,
   else there is none; a code outside the standard's 0-5 is a ``DataError`` naming the file
   (nibabel ignores such a transform, ITK uses it). If there is none, or its three column norms are all 1 (within 1e-3),
   it carries no voxel size (ACDC's sform is diag(-1, -1, 1)) and the raw ``pixdim`` gives it;
   otherwise the affine gives it: when its column norms agree with ``pixdim`` within
   ``SPACING_RTOL`` (1e-3, relative), the value stored in ``pixdim`` (so the float32 noise of a
   rotated affine, 1.56249995 for 1.5625, cannot move a resampled size across a rounding
   tie); when they differ, the norms rounded to ``SPACING_DIGITS`` (7) significant digits,
   float32's precision, and a warning names the file and says the affine was used. Sizes are
   converted to mm by ``xyzt_units`` (metre x 1000, micron x 0.001; mm or unknown (0) as mm,
   as the NIfTI standard says).
   A zero, negative or non-finite size of a spatial axis is a ``DataError`` naming the file.
   So is a sheared affine (two columns further than ``SHEAR_TOLERANCE`` from perpendicular:
   a CT gantry tilt, say), whose voxels are not boxes of the three sizes: every size and
   orientation read from it would be an approximation; a sheared sform beside a qform
   (``qform_code > 0``, perpendicular by construction) gives way to the qform, with a
   warning, as ITK-based readers do. A qform with ``pixdim[0]`` (qfac)
   other than -1 or 1 is read with qfac 1, as ``nifti1.h`` prescribes. An sform beside a qform
   (both codes above 0) that places the image differently (axes more than
   ``AXES_AGREE_DEGREES`` apart, or origins more than a tenth of a voxel) is used with a warning
   naming the file: readers that prefer the qform put such an image elsewhere.
   So is a size no MR or CT image has (in-plane outside ``PIXEL_RANGE_MM``, 0.05-20 mm, or
   slices thicker than ``MAX_SLICE_MM``, 100 mm): wrong units, most likely (a header in
   metres with ``xyzt_units`` 0 reads as 0.0016 mm pixels); the message names the header
   fields that gave the size.
   **A lost voxel size** is a warning naming the file (``lost_voxel_size``): with
   ``slicing`` other than ``"axial"``, a size taken from ``pixdim`` beside an affine that carries none (unit
   columns) that is 1 mm on all three axes (each within ``PLACEHOLDER_TOLERANCE``, 1e-6, of
   1.0, after the unit conversion). A short-axis cine has slices 5-10 mm apart, and 1 x 1 x 1
   is what tools write when the size is unknown: nibabel sets ``pixdim`` from a unit affine
   when an ACDC frame is saved without its header (``Nifti1Image(data, img.affine)``), cropped
   by ``img.slicer`` or reoriented by ``as_closest_canonical``, and such a copy is read at the
   wrong scale. It cannot be an error, since the header cannot tell it from a genuine
   isotropic 1 mm volume (which gets the warning too). An affine that carries the size is
   taken at its word, and ``slicing="axial"`` (whole-heart volumes, often near 1 mm
   isotropic) never warns; without an affine, 1 x 1 x 1 mm leaves no slice axis (rule 2).
2. **Slice axis.** The axis whose voxel size is at least ``SLICE_RATIO`` (1.5) times each of
   the other two (short-axis cine: 5-10 mm slices, 0.7-2 mm pixels). With no such axis, the
   axis the affine points closest to the head-foot direction, when it is at least
   ``HEAD_FOOT_MARGIN_DEGREES`` (15) closer than the next (else a ``DataError``: a stack tilted
   near 45 degrees could be cut either way, and a few degrees of angulation would decide);
   with no affine either, a ``DataError`` (the slice axis would be a guess). An axis chosen
   either way is refused too (``DataError``) when it would leave slices no cardiac image has:
   an in-plane side under ``MIN_IN_PLANE_MM`` (50 mm) that also has fewer voxels than the
   stack has slices, as when an array was transposed, or a 4-D cine stored time or channel
   first, and its header kept. With ``slicing="axial"`` (whole-heart MR
   and CT volumes, MM-WHS) the axis closest to head-foot is taken whatever the voxel sizes,
   so every volume is cut into axial slices; a header without an affine is then a
   ``DataError``. With ``slicing`` a stored axis (0, 1 or 2; ``--slice-axis`` of the commands)
   that axis is the slice axis: no rule is applied and no stack is refused for its shape, for a
   file the rules above refuse whose slice axis the user knows (a thin-slice stack tilted near
   45 degrees, say); the orientation (rule 3) and every other check still apply.
3. **Orientation.** The array is flipped and transposed (``nibabel.orientations``) into the
   training orientation, by default ACDC's "LPS" (sform diag(-1, -1, 1): rows run to the
   patient's left, columns to posterior, slices superior), with the slice axis last. The
   slice axis is forced onto the world axis its affine column is nearest to (which then plays
   the training slice direction), and the in-plane axes onto the other two by their largest
   components, so a flipped or transposed copy of the same physical image (affine updated to
   match) gives the same array. The frame so made is right-handed, as the training one, and
   the slices are seen from the training slice direction's side (superior for "LPS") unless
   their normal is within 6 degrees of horizontal: a slice whose normal is nearest another
   world axis is shown rotated, never mirrored. An axis within ``BOUNDARY_DEGREES`` (5) of the
   diagonal between two world axes, where a few degrees of angulation switch the presentation
   by 90 degrees, is a warning naming the file (``orientation_boundary``), and quality
   control puts the volume up for review. It is a ``DataError`` (affine and voxel sizes disagree) when
   an in-plane axis runs along the slice direction, or when an affine without voxel size
   (unit columns, as ACDC's) does not run the slice axis head-foot. Without an affine (both
   codes 0) the stored in-plane order is kept and only the slice axis is moved last. For
   ACDC's own files the transform is the identity.

``VolumeGeometry.to_training`` applies the transform, ``from_training`` undoes it, so labels
are written back on the input's own grid with its affine and header.
"""

import logging
import re
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener
from nibabel.orientations import (aff2axcodes, apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation,
                                  ornt_transform)


class DataError(ValueError):
    """Input data that cannot be used; the message names the source and the problem.

    The message is one line: line breaks in it (a library's message quoted in it, such as
    nibabel's for a truncated ``.nii``) are joined with single spaces, so a batch's report and
    ``predictions.json`` keep one line per failure.
    """

    def __init__(self, message="", *args):
        super().__init__(_one_line(message), *args)


def _one_line(message):
    text = str(message)
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip() if ("\n" in text or "\r" in text) else text


log = logging.getLogger("sdnet_infer.geometry")

TRAINING_ORIENTATION = "LPS"  # ACDC: qform_code 0, sform_code 2, sform diag(-1, -1, 1)
UNIT_SCALE = {0: 1.0, 1: 1000.0, 2: 1.0, 3: 0.001}  # xyzt_units & 7 -> mm (0: unknown, mm by the standard)
UNIT_TOLERANCE = 1e-3  # affine column norms within this of 1 carry no voxel size
SPACING_RTOL = 1e-3  # affine norms and pixdim agree within this
SPACING_DIGITS = 7  # significant digits kept of a voxel size taken from the affine (float32 carries 7; 5e-7 relative)
SLICE_RATIO = 1.5
# largest |cosine| between two affine columns still read as perpendicular: 1e-3 is 0.06 degrees,
# a tenth of a pixel's shift across 100 pixels; float32 noise of a rotated affine is about 1e-7
SHEAR_TOLERANCE = 1e-3
# Voxel sizes an MR or CT image can have, in mm: pixels from 0.05 (micro-MRI) to 20, slices up to 100.
# Outside them the units are almost surely wrong (a metre header marked mm or unknown gives 0.0016 mm).
PIXEL_RANGE_MM = (0.05, 20.0)
MAX_SLICE_MM = 100.0
# The narrowest in-plane side, in mm, of a slice that can hold a heart's short-axis section (both
# ventricles of an adult heart span about 80-120 mm); see _check_stack.
MIN_IN_PLANE_MM = 50.0
HEAD_FOOT_MARGIN_DEGREES = 15.0  # the axis nearest head-foot must be this much nearer than the next
AXES_AGREE_DEGREES = 0.5  # an sform and a qform whose axes differ by more describe two orientations
PLACEHOLDER_TOLERANCE = 1e-6  # mm: a voxel size this close to 1 x 1 x 1 from pixdim is nibabel's placeholder
UNIT_NAMES = {0: "0 (unknown, read as mm)", 1: "1 (metre)", 2: "2 (mm)", 3: "3 (micron)"}
_PAIRS = ({"L", "R"}, {"A", "P"}, {"S", "I"})


def check_orientation(code, source="orientation"):
    """A three-letter axis code with one of L/R, A/P, S/I each (e.g. "LPS"), upper-cased."""
    code = str(code).upper()
    if len(code) != 3 or any(sum(c in pair for c in code) != 1 for pair in _PAIRS):
        raise DataError(f"{source}: orientation {code!r} is not an axis code such as 'LPS' "
                        "(one letter each of L/R, A/P, S/I)")
    return code


def raw_header(path, header_class=nib.Nifti1Header):
    """The header as stored in the file, without nibabel's fixes (``check=False``)."""
    with ImageOpener(str(path)) as handle:
        return header_class.from_fileobj(handle, check=False)


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a stored NIfTI volume's voxels are, and how to bring it into the training orientation.

    Attributes:
        source: the file, for messages.
        shape: the stored spatial shape (3 axes).
        spacing: voxel size of the stored axes in mm, (3,).
        spacing_from: "pixdim", "sform" or "qform".
        slice_axis: the stored axis through the slices.
        axcodes: the stored axes' directions (e.g. ("L", "P", "S")), or None without an affine.
        transform: nibabel orientation transform (3, 2) from the stored axes to training ones.
        orientation: the training orientation code.
        warnings: messages about the header (already logged).
        affine: the affine the reader used (4, 4; the sform, or the qform), in the file's units; without one, nibabel's from pixdim.
        units_to_mm: the factor from the file's spatial units (``xyzt_units``) to mm.
        lost_voxel_size: the warning of ``lost_voxel_size`` when the header looks as if it has
            lost its voxel size (also in ``warnings``), else None; quality control puts such a
            volume up for review (``qc.header_review``).
        orientation_boundary: the warning of ``orientation_boundary`` when an axis runs near
            the diagonal between two world axes (also in ``warnings``), else None; quality
            control puts such a volume up for review too.
    """

    source: str
    shape: tuple
    spacing: tuple
    spacing_from: str
    slice_axis: int
    axcodes: tuple
    transform: np.ndarray = field(repr=False)
    orientation: str = TRAINING_ORIENTATION
    warnings: tuple = ()
    affine: np.ndarray = field(default=None, repr=False)
    units_to_mm: float = 1.0
    lost_voxel_size: str = None
    orientation_boundary: str = None

    @property
    def grid_mm(self):
        """Where the stored voxels are, in mm (4, 4): the affine's axis directions times the
        voxel size the reader decided, and its translation in mm. For an affine that carries
        the voxel size this is the affine in mm; for a placeholder (unit columns, ACDC's
        diag(-1, -1, 1)) the directions take the ``pixdim`` size, as ITK-based readers place
        such voxels."""
        affine = np.array(self.affine, np.float64)
        grid = np.eye(4)
        grid[:3, :3] = _unit_columns(affine) * np.asarray(self.spacing)
        grid[:3, 3] = affine[:3, 3] * self.units_to_mm
        return grid

    @property
    def training_grid_mm(self):
        """``grid_mm`` for the training-oriented array (4, 4): where ``to_training``'s voxels
        are, in mm (nibabel's ``inv_ornt_aff`` maps their indices back to the stored ones)."""
        return self.grid_mm @ inv_ornt_aff(self.transform, self.shape)

    @property
    def is_identity(self):
        return bool(np.array_equal(self.transform, [[0, 1], [1, 1], [2, 1]]))

    def _in_training_order(self, values):
        """Per-stored-axis ``values`` (3,) reordered onto the training-oriented axes."""
        out = [None, None, None]
        for axis, (target, _) in enumerate(self.transform):
            out[int(target)] = values[axis]
        return tuple(out)

    @property
    def training_spacing(self):
        """Voxel size in mm of the training-oriented axes: (row, column, slice), (3,)."""
        return self._in_training_order(self.spacing)

    @property
    def training_shape(self):
        """Shape of the training-oriented array: (rows, columns, slices)."""
        return self._in_training_order(self.shape)

    def to_training(self, data):
        """A stored (X, Y, Z[, T]) array -> (H, W, S[, T]) in the training orientation."""
        if self.is_identity:
            return data
        return np.ascontiguousarray(apply_orientation(data, self.transform))

    def from_training(self, data):
        """A (H, W, S[, T]) array in the training orientation -> the stored grid (X, Y, Z[, T])."""
        if self.is_identity:
            return data
        inverse = np.empty_like(self.transform)
        for axis, (target, flip) in enumerate(self.transform):
            inverse[int(target)] = (axis, flip)
        return np.ascontiguousarray(apply_orientation(data, inverse))

    def describe(self):
        codes = "".join(self.axcodes) if self.axcodes else "no affine"
        return (f"voxel size {_fmt(self.spacing)} mm from {self.spacing_from}, "
                f"slice axis {self.slice_axis}, stored {codes} -> {self.orientation}")


def _chosen_affine(header, source="the file"):
    """(affine (4, 4) or None, "sform" / "qform" / None) by the NIfTI codes.

    Raises:
        DataError: naming ``source``, for a qform whose voxel size (``pixdim[1:4]``) has a
            negative value (nibabel cannot build it).
    """
    if int(header["sform_code"]) > 0:
        return header.get_sform(), "sform"
    if int(header["qform_code"]) > 0:
        if float(header["pixdim"][0]) not in (-1.0, 1.0):  # nifti1.h: qfac other than -1 or 1 is read as 1
            header = header.copy()
            header["pixdim"][0] = 1.0
        try:
            return header.get_qform(), "qform"
        except nib.spatialimages.HeaderDataError as error:
            if "pixdims" not in str(error):
                raise
            values = ", ".join(f"{float(v):g}" for v in header["pixdim"][1:4])
            raise DataError(f"{source}: pixdim[1:4] ({values}) has a negative voxel size, and the qform "
                            "(qform_code > 0) is built from it: the voxel size and orientation cannot be known; "
                            "correct pixdim") from error
    return None, None


XFORM_CODES = range(6)  # NIfTI: 0 unknown, 1 scanner, 2 aligned, 3 Talairach, 4 MNI 152, 5 other template


def _check_xform_codes(header, source):
    """Refuse an ``sform_code`` or ``qform_code`` outside the NIfTI codes (0-5): readers differ
    on such a header (nibabel resets the code to 0 and ignores the transform, niftilib and ITK
    use a positive one), so its orientation cannot be told."""
    for name in ("sform_code", "qform_code"):
        code = int(header[name])
        if code not in XFORM_CODES:
            raise DataError(f"{source}: {name} {code} is not a NIfTI transform code (0-5); readers disagree on "
                            f"whether the {name[0]}form orients the image (nibabel ignores it, ITK uses it), so its "
                            f"orientation cannot be told: rewrite the header with {name} 1 (scanner) or 0 (none)")


def _unit_columns(affine):
    """The directions of ``affine``'s three axes (3, 3): its columns over their norms (a zero
    column stays zero)."""
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    return affine[:3, :3] / np.where(norms > 0, norms, 1.0)


def _shear(affine):
    """(largest |cosine| between two affine columns, their axes), or None with a zero column."""
    if not np.all(np.linalg.norm(affine[:3, :3], axis=0) > 0):
        return None  # a zero column: _voxel_size names it
    cosines = _unit_columns(affine)
    return max((abs(float(cosines[:, i] @ cosines[:, j])), (i, j)) for i, j in ((0, 1), (0, 2), (1, 2)))


def _check_perpendicular(affine, kind, source):
    """Refuse a sheared affine (voxel sizes and axis directions would be approximations), or
    one with two parallel axes (no orientation at all)."""
    found = _shear(affine)
    if found is None or found[0] <= SHEAR_TOLERANCE:
        return
    cosine, (i, j) = found
    if cosine > 1 - 1e-6:
        raise DataError(f"{source}: the {kind}'s axes {i} and {j} are parallel; the affine is degenerate and "
                        "cannot orient the image")
    off = 90.0 - float(np.degrees(np.arccos(cosine)))
    limit = 90.0 - float(np.degrees(np.arccos(SHEAR_TOLERANCE)))
    raise DataError(f"{source}: the {kind} is sheared (axes {i} and {j} are {off:.3g} degrees from perpendicular, "
                    f"more than the {limit:.2g} allowed): its voxels are not boxes, so no voxel size or orientation "
                    "fits them; resample the image onto a perpendicular grid first")


def _sform_qform_disagreement(header, sform, spacing, units_to_mm):
    """How a header's qform differs from its sform, in words, or None when they agree: axis
    directions within ``AXES_AGREE_DEGREES`` and origins within a tenth of the smallest voxel.
    Only directions and origins are compared (an ACDC-style sform carries no voxel size)."""
    try:
        qform, _ = _chosen_affine(_without_sform(header))
    except Exception:  # a qform nibabel cannot build (e.g. an unnormalised quaternion): not compared
        return None
    if not np.all(np.isfinite(qform)):
        return None
    cosines = np.clip(np.sum(_unit_columns(sform) * _unit_columns(qform), axis=0), -1.0, 1.0)
    degrees = float(np.degrees(np.arccos(cosines)).max())
    apart = float(np.linalg.norm(sform[:3, 3] - qform[:3, 3])) * units_to_mm
    if degrees <= AXES_AGREE_DEGREES and apart <= 0.1 * min(spacing):
        return None
    return f"axes up to {degrees:.3g} degrees apart, origins {apart:.3g} mm apart"


def _without_sform(header):
    header = header.copy()
    header["sform_code"] = 0
    return header


def _fmt(values):
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def _significant(values, digits=SPACING_DIGITS):
    """``values`` rounded to ``digits`` significant digits (float32 noise of a rotated affine off)."""
    return np.array([float(f"{float(v):.{digits}g}") if np.isfinite(v) else float(v) for v in values])


def _voxel_size(header, affine, kind, source, notes):
    pixdim = np.asarray(header["pixdim"][1:4], np.float64)
    units = int(header["xyzt_units"]) & 0x07
    if units not in UNIT_SCALE:
        raise DataError(f"{source}: spatial units code {units} in xyzt_units is not one of the NIfTI units "
                        "(metre, mm, micron)")
    spacing, origin = pixdim, "pixdim"
    if affine is not None:
        norms = np.linalg.norm(affine[:3, :3], axis=0)
        if np.all(np.isfinite(norms)) and not np.allclose(norms, 1.0, rtol=0, atol=UNIT_TOLERANCE):
            origin = kind
            if np.allclose(norms, pixdim, rtol=SPACING_RTOL):
                spacing = pixdim  # the same size: the stored value, free of the rotation's float32 noise
            else:
                spacing = _significant(norms)
                notes.append(f"{source}: the {kind}'s voxel size {_fmt(norms)} differs from pixdim {_fmt(pixdim)}; "
                             f"using the {kind}'s")
    bad = [i for i, s in enumerate(spacing) if not np.isfinite(s) or s <= 0]
    if bad:
        raise DataError(f"{source}: voxel size {_fmt(spacing)} from {origin} has a zero, negative "
                        f"or non-finite value on axis {bad[0]}; the voxel size cannot be known")
    return tuple(float(s) * UNIT_SCALE[units] for s in spacing), origin


def _check_plausible(spacing, slice_axis, origin, header, source):
    """Refuse voxel sizes no MR or CT image has (see ``PIXEL_RANGE_MM``, ``MAX_SLICE_MM``)."""
    lo, hi = PIXEL_RANGE_MM
    fields = "pixdim[1:4]" if origin == "pixdim" else f"the {origin}'s column norms"
    units = UNIT_NAMES.get(int(header["xyzt_units"]) & 0x07)
    in_plane = [spacing[a] for a in range(3) if a != slice_axis]
    if not all(lo <= s <= hi for s in in_plane):
        raise DataError(f"{source}: in-plane voxel size {' x '.join(f'{s:.6g}' for s in in_plane)} mm (from {fields}, "
                        f"xyzt_units {units}) is outside the plausible {lo:g}-{hi:g} mm of MR and CT images; "
                        "the header's spatial units are probably wrong")
    if spacing[slice_axis] > MAX_SLICE_MM:
        raise DataError(f"{source}: slice spacing {spacing[slice_axis]:.6g} mm (from {fields}, xyzt_units {units}) "
                        f"is above the plausible {MAX_SLICE_MM:g} mm of MR and CT images; "
                        "the header's spatial units are probably wrong")


def lost_voxel_size(spacing, origin, slicing, source):
    """A warning (one line naming ``source``) when the voxel size looks like a header's lost one,
    else None: with ``slicing`` other than "axial", ``spacing`` (3,) in mm from ``origin`` "pixdim" (the
    affine carries none) within ``PLACEHOLDER_TOLERANCE`` of 1 mm on every axis (see the module
    docstring)."""
    if slicing == "axial" or origin != "pixdim":
        return None
    if not np.allclose(spacing, 1.0, rtol=0, atol=PLACEHOLDER_TOLERANCE):
        return None
    return (f"{source}: voxel size 1 x 1 x 1 mm from pixdim beside an affine without one (unit columns); a "
            "short-axis cine has slices 5-10 mm apart, and 1 x 1 x 1 mm is what tools write when the size is "
            "unknown (a copy saved with a unit affine, without the original header), so the header has probably "
            "lost its voxel size and the segmentation may be wrong; check pixdim against the original file's")


SLICINGS = ("auto", "axial")  # the rules; a stored axis 0, 1 or 2 names the slice axis itself
STORED_AXES = (0, 1, 2)


def parse_slicing(value):
    """A slice-axis choice as the commands take it (``--slice-axis``): "auto", "axial", or a
    stored axis "0", "1", "2" (or the int) -> the ``slicing`` of ``read_geometry``.

    Raises:
        ValueError: for anything else, naming the choices.
    """
    if isinstance(value, str) and value.strip().lower() in SLICINGS:
        return value.strip().lower()
    try:
        axis = int(value)
    except (TypeError, ValueError):
        axis = None
    if axis in STORED_AXES and str(value).strip() == str(axis):
        return axis
    raise ValueError(f"slice axis {value!r}: expected auto, axial, or a stored axis 0, 1 or 2")


def _slice_axis(spacing, affine, source, slice_world, slicing, shape):
    if slicing in STORED_AXES:
        return int(slicing)  # the user's: no rule, no refusal by shape
    if slicing == "axial":
        if affine is None:
            raise DataError(f"{source}: cannot tell the axial slice axis: the header has no orientation "
                            "(qform_code and sform_code 0)")
        found = np.nonzero(io_orientation(affine)[:, 0] == slice_world)[0]
        if not len(found):
            raise DataError(f"{source}: cannot tell the axial slice axis: the affine is degenerate")
        return int(found[0])
    order = np.argsort(spacing)[::-1]
    if spacing[order[0]] >= SLICE_RATIO * spacing[order[1]]:
        axis = int(order[0])
        _check_stack(shape, spacing, axis, source, f"the axis its voxel size makes the slice axis (axis {axis}, "
                                                   f"{shape[axis]} voxels of {spacing[axis]:.3g} mm)")
        return axis
    if affine is None:
        raise DataError(f"{source}: cannot tell the slice axis: no voxel size of {_fmt(spacing)} mm is {SLICE_RATIO} "
                        "times the others and the header has no orientation (qform_code and sform_code 0)")
    found = np.nonzero(io_orientation(affine)[:, 0] == slice_world)[0]
    if not len(found):
        raise DataError(f"{source}: cannot tell the slice axis: no voxel size of {_fmt(spacing)} mm is {SLICE_RATIO} "
                        "times the others and the affine is degenerate")
    axis = int(found[0])
    _check_head_foot_margin(affine, axis, slice_world, spacing, source)
    _check_stack(shape, spacing, axis, source, f"no voxel size of {_fmt(spacing)} mm is {SLICE_RATIO} times the "
                                               f"others, and the axis the affine points head-foot (axis {axis}, "
                                               f"{shape[axis]} voxels)")
    return axis


def _check_head_foot_margin(affine, axis, slice_world, spacing, source):
    """Refuse a slice axis chosen as the one nearest head-foot when another axis is nearly as
    near (within ``HEAD_FOOT_MARGIN_DEGREES``): a stack tilted about 45 degrees, whose slices
    could as well be cut along the other axis, and a few degrees of angulation would decide."""
    angles = np.degrees(np.arccos(np.clip(np.abs(_unit_columns(affine)[slice_world]), 0.0, 1.0)))
    other = min((a for a in range(3) if a != axis), key=lambda a: angles[a])
    if angles[other] - angles[axis] < HEAD_FOOT_MARGIN_DEGREES:
        raise DataError(f"{source}: cannot tell the slice axis: no voxel size of {_fmt(spacing)} mm is {SLICE_RATIO} "
                        f"times the others, and axes {axis} and {other} run {angles[axis]:.0f} and "
                        f"{angles[other]:.0f} degrees from head-foot, too close to choose between (at least "
                        f"{HEAD_FOOT_MARGIN_DEGREES:g} degrees apart needed); resample the stack so its slices are "
                        f"{SLICE_RATIO} times thicker than its pixels, store it with the slices on the axis "
                        "nearest head-foot, or give the slice axis (--slice-axis 0, 1 or 2)")


def _check_stack(shape, spacing, slice_axis, source, chosen):
    """Refuse a slice axis that leaves slices no cardiac image has: one in-plane side under
    ``MIN_IN_PLANE_MM`` and with fewer voxels than the stack has slices (an array transposed or
    a 4-D file stored time first or channel first, its header left as it was). ``chosen`` says
    how the axis was chosen, for the message."""
    in_plane = [a for a in range(3) if a != slice_axis]
    narrow = min(in_plane, key=lambda a: shape[a] * spacing[a])
    if shape[narrow] * spacing[narrow] < MIN_IN_PLANE_MM and shape[narrow] < shape[slice_axis]:
        sides = " x ".join(str(shape[a]) for a in in_plane)
        mm = " x ".join(f"{shape[a] * spacing[a]:.3g}" for a in in_plane)
        raise DataError(f"{source}: cannot tell the slice axis: {chosen} would make {shape[slice_axis]} slices of "
                        f"{sides} voxels ({mm} mm), narrower than any cardiac image; the header probably does not "
                        "describe the array's axis order (an array transposed, or a 4-D file stored time or channel "
                        "first, with its header kept): store the slices on the third axis, give pixdim the "
                        "slice spacing, or give the slice axis (--slice-axis 0, 1 or 2) if it is right")


def _transform(affine, slice_axis, orientation, source, affine_has_spacing=True, notes=None):
    """Orientation transform (3, 2) from the stored axes to ``orientation`` with the slice axis last.
    ``affine_has_spacing`` False (a placeholder affine) requires the slice axis to run head-foot:
    a ``DataError`` when the voxel sizes chose it, a warning appended to ``notes`` when the user
    gave it (``notes`` not None)."""
    target = axcodes2ornt(orientation)
    slice_world = int(target[2, 0])  # the world axis that plays the slice direction in training
    if affine is None:
        in_plane = [a for a in range(3) if a != slice_axis]
        start = np.empty((3, 2))
        for position, axis in enumerate(in_plane + [slice_axis]):
            start[axis] = target[position]
        return ornt_transform(start, target)
    cosines = _unit_columns(affine)
    column = cosines[:, slice_axis]
    nearest = int(np.argmax(np.abs(column)))
    if not affine_has_spacing and nearest != slice_world and notes is not None:
        # a slice axis the user gave is not refused: it was not chosen by the voxel sizes
        notes.append(f"{source}: the slice axis given (axis {slice_axis}) runs along {'xyz'[nearest]} in an affine "
                     "without voxel size (a placeholder, as ACDC's), which usually runs the slices head-foot; "
                     "its orientation is used as it is: check the segmentation")
    elif not affine_has_spacing and nearest != slice_world:
        # a placeholder affine (unit columns, as ACDC's) must at least agree with the voxel sizes
        raise DataError(f"{source}: the affine runs axis {slice_axis} along {'xyz'[nearest]}, but its voxel size "
                        "makes it the slice axis; the affine (no voxel size in it) and pixdim disagree: correct "
                        "one of them, or give the slice axis (--slice-axis 0, 1 or 2) if you know it")
    # the world frame relabelled so that the slice normal's nearest axis plays the training slice
    # direction; the other two keep their order, one of them reversed where that keeps the frame
    # right-handed
    rows = [r for r in range(3) if r != nearest]
    world = np.empty((3, 3))
    others = [w for w in range(3) if w != slice_world]
    world[others[0]], world[others[1]], world[slice_world] = cosines[rows[0]], cosines[rows[1]], cosines[nearest]
    relabel = np.zeros((3, 3))
    relabel[others[0], rows[0]] = relabel[others[1], rows[1]] = relabel[slice_world, nearest] = 1.0
    if np.linalg.det(relabel) < 0:
        # an odd relabelling (slice normal nearest A-P, for LPS) would mirror every slice: turn
        # one in-plane axis round, so the slices are rotated, never mirrored
        world[others[1]] = -world[others[1]]
    pseudo = world.copy()
    pseudo[slice_world, :] = 0.0  # in-plane axes: their components within the image plane's two world axes
    pseudo[:, slice_axis] = 0.0
    pseudo[slice_world, slice_axis] = 1.0 if column[nearest] >= 0 else -1.0
    for axis in range(3):
        if axis != slice_axis and np.linalg.norm(pseudo[:, axis]) < 0.1:
            raise DataError(f"{source}: the affine points in-plane axis {axis} along the slice direction (axis "
                            f"{slice_axis}, the largest voxel size); the affine and the voxel sizes disagree")
    affine4 = np.eye(4)
    affine4[:3, :3] = pseudo
    start = io_orientation(affine4)
    if np.isnan(start).any():
        raise DataError(f"{source}: the affine's in-plane axes are parallel; cannot orient the image")
    return _seen_from_the_training_side(ornt_transform(start, target), cosines, target)


BOUNDARY_DEGREES = 5.0  # an axis this close to the diagonal between two world axes is near a presentation switch


def orientation_boundary(affine, source):
    """A warning naming the file when one of the affine's axes runs within ``BOUNDARY_DEGREES``
    of the diagonal between two world axes, else None. The nearest-axis rule then switches the
    slices' presentation to the network by 90 degrees (or the world axis that plays the slice
    direction) with a few degrees of angulation, and the segmentation may differ with it."""
    if affine is None:
        return None
    for axis, column in enumerate(np.abs(_unit_columns(affine)).T):
        second, first = np.sort(column)[-2:]
        off = abs(float(np.degrees(np.arctan2(second, first))) - 45.0)
        if off < BOUNDARY_DEGREES:
            return (f"{source}: axis {axis} runs {off:.1f} degrees from the diagonal between two world axes (within "
                    f"{BOUNDARY_DEGREES:g}): the slices are shown to the network at one of two orientations 90 degrees "
                    "apart, which a few degrees of angulation decide, and the segmentation can differ between them; "
                    "check it")
    return None


VIEW_SIDE_MIN_COSINE = 0.1  # a slice normal this close to horizontal (84 degrees from head-foot) keeps its side


def _seen_from_the_training_side(transform, cosines, target):
    """``transform`` with the slices seen from the training slice direction's side.

    The nearest-axis rule makes a slice normal nearest another world axis (L-R, say) play the
    training slice direction, and the side it is seen from is that axis's: a stack whose normal
    lies 44 degrees from head-foot is seen from above and one at 46 degrees from the right, so
    two headers 2 degrees apart showed the network mirror images of one slice. Where the slices
    point away from the training slice direction (by more than ``VIEW_SIDE_MIN_COSINE``), their
    order and the columns are both reversed: the same side for every tilt short of horizontal,
    the frame still right-handed (a rotation of the slices, never a mirror)."""
    world, flip = int(target[2, 0]), float(target[2, 1])
    stored_slice = int(np.nonzero(transform[:, 0] == 2)[0][0])
    stored_column = int(np.nonzero(transform[:, 0] == 1)[0][0])
    pointing = transform[stored_slice, 1] * cosines[world, stored_slice] * flip
    if pointing >= -VIEW_SIDE_MIN_COSINE:
        return transform
    turned = transform.copy()
    turned[[stored_slice, stored_column], 1] *= -1
    return turned


def read_geometry(path, image=None, orientation=TRAINING_ORIENTATION, slicing="auto"):
    """The ``VolumeGeometry`` of a NIfTI file (see the module docstring for the rule).

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        image: the file loaded by nibabel, if already loaded (for its header class).
        orientation: the training orientation, an axis code such as "LPS".
        slicing: "auto" (a clearly thicker axis, else the one nearest head-foot), "axial"
            (the axis nearest head-foot, always), or a stored axis 0, 1 or 2 (that axis;
            ``parse_slicing`` reads the commands' ``--slice-axis``).

    Raises:
        DataError: naming the file, for an sform or qform code outside 0-5, a zero, negative,
            non-finite or implausible voxel size, unknown units, a sheared affine, a slice axis that cannot be told, or an affine
            that contradicts the sizes.

    Warnings (logged, and kept in ``VolumeGeometry.warnings``): a size read from the affine
    that differs from ``pixdim``, a sheared sform that gives way to the qform, an sform and a
    qform that place the image differently, and a voxel size that looks lost
    (``lost_voxel_size``).
    """
    source = str(path)
    orientation = check_orientation(orientation, source)
    if slicing not in SLICINGS and (isinstance(slicing, (bool, str)) or slicing not in STORED_AXES):
        raise ValueError(f"slicing {slicing!r}: expected one of {', '.join(SLICINGS)}, or a stored axis 0, 1 or 2")
    header_class = type(image.header) if image is not None else nib.Nifti1Header
    try:
        header = raw_header(path, header_class)
    except Exception as error:  # nibabel raises several types for a header it cannot parse
        raise DataError(f"{source}: cannot read the NIfTI header ({type(error).__name__}: {error})") from error
    dims = int(header["dim"][0])
    if dims < 3:
        raise DataError(f"{source}: {dims}-D image; expected a 3-D frame or a 4-D cine")
    _check_xform_codes(header, source)
    notes = []
    affine, kind = _chosen_affine(header, source)
    if affine is not None and not np.all(np.isfinite(affine)):
        raise DataError(f"{source}: the {kind} contains non-finite values")
    if affine is not None and kind == "sform" and int(header["qform_code"]) > 0:
        found = _shear(affine)
        if found is not None and found[0] > SHEAR_TOLERANCE and found[0] < 1 - 1e-6:
            # as ITK-based readers: a qform cannot be sheared, so it is the writer's own
            # perpendicular description of the grid
            qform, _ = _chosen_affine(_without_sform(header), source)
            if np.all(np.isfinite(qform)):
                notes.append(f"{source}: the sform is sheared ({90 - np.degrees(np.arccos(found[0])):.3g} degrees from "
                             f"perpendicular); using the qform (code {int(header['qform_code'])})")
                affine, kind = qform, "qform"
    if affine is not None:
        _check_perpendicular(affine, kind, source)
    spacing, origin = _voxel_size(header, affine, kind, source, notes)
    units_to_mm = UNIT_SCALE[int(header["xyzt_units"]) & 0x07]  # a known code: _voxel_size checked it
    if kind == "sform" and int(header["qform_code"]) > 0:
        disagreement = _sform_qform_disagreement(header, affine, spacing, units_to_mm)
        if disagreement:
            notes.append(f"{source}: the sform and the qform place the image differently ({disagreement}); using "
                         f"the sform (sform_code {int(header['sform_code'])}), as the NIfTI standard prefers: a "
                         "reader that takes the qform puts it elsewhere")
    shape = tuple(int(s) for s in header["dim"][1:4])
    slice_axis = _slice_axis(spacing, affine, source, int(axcodes2ornt(orientation)[2, 0]), slicing, shape)
    _check_plausible(spacing, slice_axis, origin, header, source)
    lost = lost_voxel_size(spacing, origin, slicing, source)
    if lost:
        notes.append(lost)
    boundary = orientation_boundary(affine, source) if slicing != "axial" else None
    if boundary:
        notes.append(boundary)
    transform = _transform(affine, slice_axis, orientation, source, affine_has_spacing=origin != "pixdim",
                           notes=notes if slicing in STORED_AXES else None)
    for note in notes:
        log.warning(note)
    axcodes = tuple(aff2axcodes(affine)) if affine is not None else None
    if affine is not None:
        stored = affine  # the one used: the sform, or the qform (a sheared sform's too)
    elif image is not None:
        stored = image.affine  # nibabel's from pixdim
    else:
        stored = np.diag([*(s / units_to_mm for s in spacing), 1.0])  # in the file's units, as an affine is
    return VolumeGeometry(source, shape, spacing, origin, slice_axis, axcodes, transform, orientation, tuple(notes),
                          np.asarray(stored, np.float64), units_to_mm, lost, boundary)
