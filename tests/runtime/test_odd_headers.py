"""Headers and files that once fooled the reader or the writer: a sheared sform, qfac 0, complex
and RGB data, pixdim and display fields of the written labels, grids compared across units,
upper-case extensions and links that lead nowhere."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
from nibabel.openers import ImageOpener

from sdnet_infer.geometry import DataError, read_geometry
from sdnet_infer.io import read_labels, read_volume, save_labels
from sdnet_infer.predict import find_inputs, predict_files

SPACING, THICKNESS = 1.5, 10.0
AFFINE = np.array([[-SPACING, 0, 0, 120.0], [0, -SPACING, 0, 150.0], [0, 0, THICKNESS, -40.0], [0, 0, 0, 1]])


def _image(path, affine=AFFINE, data=None, edit=None, qform=0, sform=2, units="mm"):
    data = np.arange(8 * 6 * 3, dtype=np.int16).reshape(8, 6, 3) if data is None else data
    img = nib.Nifti1Image(data, affine)
    img.header.set_sform(affine, code=sform)
    img.header.set_qform(affine if qform else None, code=qform)
    img.header.set_zooms((SPACING, SPACING, THICKNESS))
    img.header.set_xyzt_units(xyz=units)
    if edit:
        edit(img.header)
    nib.save(img, str(path))
    return path


def _patch_float(path, offset, value):
    """Store ``value`` at byte ``offset`` of the (gzipped) header, where nibabel would refuse or fix it."""
    raw = bytearray(gzip.open(path).read())
    raw[offset:offset + 4] = np.float32(value).tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(bytes(raw))


def _stored(path):
    with ImageOpener(str(path)) as handle:
        return nib.Nifti1Header.from_fileobj(handle, check=False)


def test_a_sheared_sform_is_refused_naming_the_angle(tmp_path):
    sheared = AFFINE.copy()
    sheared[:3, 1] = [-SPACING, -SPACING, 0.0]  # axis 1 at 45 degrees to axis 0
    with pytest.raises(DataError, match=r"shear\.nii\.gz: the sform is sheared \(axes 0 and 1 meet at 45 degrees"):
        read_geometry(_image(tmp_path / "shear.nii.gz", sheared))
    slight = AFFINE.copy()
    slight[0, 1] = 0.01  # 0.4 degrees off
    with pytest.raises(DataError, match="sheared"):
        read_geometry(_image(tmp_path / "slight.nii.gz", slight))
    # a rotation's float32 noise is no shear
    t = np.deg2rad(25.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    assert read_geometry(_image(tmp_path / "oblique.nii.gz", rotation @ AFFINE)).spacing == (SPACING, SPACING, THICKNESS)


def test_a_qform_with_qfac_0_is_read_as_qfac_1(tmp_path):
    one = _image(tmp_path / "one.nii.gz", qform=1, sform=0)
    zero = _image(tmp_path / "zero.nii.gz", qform=1, sform=0)
    _patch_float(zero, 76, 0.0)  # pixdim[0], the qform's qfac
    assert float(_stored(zero)["pixdim"][0]) == 0.0
    a, b = read_geometry(one), read_geometry(zero)
    assert (a.spacing, a.axcodes, a.slice_axis) == (b.spacing, b.axcodes, b.slice_axis)
    assert np.array_equal(a.transform, b.transform)


@pytest.mark.parametrize("dtype,words", [(np.complex64, "complex values (complex64); give the magnitude image"),
                                         ("rgb", "RGB colour or vector data")])
def test_complex_and_rgb_images_are_one_line_errors(tmp_path, dtype, words):
    if dtype == "rgb":
        data = np.zeros((8, 6, 3), [("R", "u1"), ("G", "u1"), ("B", "u1")])
    else:
        data = (np.ones((8, 6, 3)) + 1j).astype(dtype)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_zooms((SPACING, SPACING, THICKNESS))
    path = tmp_path / "odd.nii.gz"
    nib.save(img, str(path))
    with pytest.raises(DataError) as caught:
        read_volume(path)
    assert str(caught.value).startswith(f"{path}: the image ") and words in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("offset,value", [(80, -SPACING), (88, 0.0)])  # pixdim[1] negative, pixdim[3] zero
def test_written_labels_keep_the_stored_geometry_and_describe_labels(tmp_path, offset, value):
    def fields(header):
        header["cal_min"], header["cal_max"], header["intent_code"] = 0, 1500, 2003  # RGB vector intent
        header["descrip"], header["aux_file"] = b"T1 cine", b"lut.txt"
        header.set_slope_inter(0.5, 10.0)

    path = _image(tmp_path / "in.nii.gz", edit=fields)
    _patch_float(path, offset, value)
    volume = read_volume(path)
    assert volume.geometry.spacing == (SPACING, SPACING, THICKNESS)  # from the sform
    labels = np.zeros(volume.data.shape, np.uint8)
    labels[2:4, 1:3, 1] = 3
    out = save_labels(labels, volume.image, tmp_path / "out.nii.gz", volume.geometry)
    given, written = _stored(path), _stored(out)
    for name in ("pixdim", "srow_x", "srow_y", "srow_z", "sform_code", "qform_code", "quatern_b", "quatern_c",
                 "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "xyzt_units", "dim"):
        assert np.array_equal(given[name], written[name]), name
    assert float(written["pixdim"][offset // 4 - 19]) == value  # as stored, not nibabel's fixed copy
    assert (written["cal_min"], written["cal_max"], written["intent_code"]) == (0, 3, 1002)  # NIFTI_INTENT_LABEL
    assert written["descrip"].item() == b"" and written["aux_file"].item() == b""
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.uint8 and back.header.get_slope_inter() in ((1.0, 0.0), (None, None))
    assert np.array_equal(np.asarray(back.dataobj), volume.geometry.from_training(labels))


@pytest.mark.parametrize("units,scale", [("meter", 1e-3), ("mm", 1.0), ("micron", 1e3)])
def test_grids_are_compared_in_mm_whatever_the_units(tmp_path, units, scale):
    def stored(name, shift_mm=0.0, degrees=0.0, noise=0.0):
        t = np.deg2rad(degrees)
        rotation = np.eye(4)
        rotation[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        affine = rotation @ AFFINE
        affine[0, 3] += shift_mm
        affine[:3] *= scale
        affine[:3, :3] *= 1 + noise
        img = nib.Nifti1Image(np.zeros((8, 6, 3), np.uint8), affine)
        img.header.set_sform(affine, code=2)
        img.header.set_zooms(tuple(np.array([SPACING, SPACING, THICKNESS]) * scale * (1 + noise)))
        img.header.set_xyzt_units(xyz=units)
        nib.save(img, str(tmp_path / name))
        return tmp_path / name

    reference = read_volume(stored("ref.nii.gz")).geometry
    read_labels(stored("same.nii.gz", noise=1e-6), like=reference)  # float noise: one grid
    for name, shift, degrees in (("shifted.nii.gz", 0.9, 0.0), ("rotated.nii.gz", 0.0, 20.0)):
        with pytest.raises(DataError, match=rf"{name}: its affine places the volume up to .* mm away from "):
            read_labels(stored(name, shift, degrees), like=reference)


def test_upper_case_extensions_are_found_and_named_as_lower_case(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "CASE.NII.GZ")
    _image(tmp_path / "other.nii")
    (tmp_path / "other.nii").rename(folder / "other.Nii")
    assert [(p.name, str(out)) for p, out in find_inputs(folder)] == [
        ("CASE.NII.GZ", "CASE_pred.nii.gz"), ("other.Nii", "other_pred.nii.gz")]


def test_links_that_lead_nowhere_say_so_and_a_failed_record_names_no_output(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    os.symlink("loop.nii.gz", folder / "loop.nii.gz")
    os.symlink("gone.nii.gz", folder / "broken.nii.gz")
    with pytest.raises(DataError, match=r"loop\.nii\.gz: a symbolic link loop$"):
        read_volume(folder / "loop.nii.gz")
    with pytest.raises(DataError, match=r"broken\.nii\.gz: a broken symbolic link to gone\.nii\.gz$"):
        read_volume(folder / "broken.nii.gz")
    with pytest.raises(DataError, match=r"in: a folder, not a file$"):
        read_volume(folder)
    with pytest.raises(DataError, match=r"loop\.nii\.gz: a symbolic link loop$"):
        find_inputs(folder / "loop.nii.gz")
    records = predict_files(folder, tmp_path / "out", lambda batch: batch, size=32, target=2.5)
    assert [r["output"] for r in records] == [None, None] and all(r["error"] for r in records)
