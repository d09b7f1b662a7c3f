"""Headers and files that once fooled the reader or the writer: a sheared sform, qfac 0, complex
and RGB data, pixdim and display fields of the written labels, grids compared across units,
upper-case extensions and links that lead nowhere; and sdnet-infer's options of one value given
twice."""

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
    with pytest.raises(DataError, match=r"shear\.nii\.gz: the sform is sheared \(axes 0 and 1 are 45 degrees from perpendicular"):
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


def _patch_int16(path, offset, value):
    raw = bytearray(gzip.open(path).read())
    raw[offset:offset + 2] = np.int16(value).tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(bytes(raw))


@pytest.mark.parametrize("name,offset", [("qform_code", 252), ("sform_code", 254)])
@pytest.mark.parametrize("code", [99, 6, -1])
def test_a_transform_code_outside_the_standard_is_refused_naming_the_file(tmp_path, name, offset, code):
    # nibabel resets such a code to 0 on load and ignores the transform, niftilib uses a positive
    # one: a reader that picked either would orient the image by a guess
    path = _image(tmp_path / "code.nii.gz", qform=1)
    _patch_int16(path, offset, code)
    assert int(_stored(path)[name]) == code
    with pytest.raises(DataError, match=rf"code\.nii\.gz: {name} {code} is not a NIfTI transform code \(0-5\)"):
        read_geometry(path)


@pytest.mark.parametrize("code", [3, 4, 5])
def test_the_template_transform_codes_are_read(tmp_path, code):
    path = _image(tmp_path / "template.nii.gz", sform=code)
    assert read_geometry(path).axcodes == ("L", "P", "S")


@pytest.mark.parametrize("kind,suffix,words", [
    (nib.AnalyzeImage, ".hdr", "an Analyze 7.5 image ("),  # nibabel reads it as SPM's variant
    (nib.AnalyzeImage, ".img", "an Analyze 7.5 image ("),
    (nib.Nifti1Pair, ".hdr", "a NIfTI .hdr/.img pair; give it as one .nii or .nii.gz file"),
    (nib.Nifti1Pair, ".img", "a NIfTI .hdr/.img pair; give it as one .nii or .nii.gz file"),
])
def test_two_file_formats_are_refused_naming_the_file(tmp_path, kind, suffix, words):
    # an Analyze .hdr had leaked "no field of name sform_code", its .img was read as a 0-D header
    nib.save(kind(np.zeros((8, 6, 3), np.int16), AFFINE), str(tmp_path / "pair.hdr"))
    with pytest.raises(DataError) as caught:
        read_volume(tmp_path / f"pair{suffix}")
    assert str(caught.value).startswith(f"{tmp_path / f'pair{suffix}'}: {words}")
    assert "\n" not in str(caught.value) and "sform_code" not in str(caught.value).split("(no sform")[0]


def test_a_scaling_that_overflows_is_named_not_blamed_on_the_data(tmp_path, recwarn):
    path = _image(tmp_path / "slope.nii.gz", data=np.full((8, 6, 3), 30000, np.int16),
                  edit=lambda h: h.set_slope_inter(1e36, 0.0))
    with pytest.raises(DataError, match=r"slope\.nii\.gz: the image's stored values are finite, but scaled by "
                                        r"scl_slope 1e\+36 and scl_inter 0 they overflow float32"):
        read_volume(path)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # numpy's overflow warning


def _patch_int16_raw(path, offset, value):
    raw = bytearray(gzip.open(path).read())
    raw[offset:offset + 2] = np.int16(value).tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(bytes(raw))


@pytest.mark.parametrize("offset,value,words", [
    (40, 9, "dim[0] is 9, not a number of dimensions (1-7): the header is corrupt"),
    (46, 0, "dim[3] is 0: the header gives the image no voxels along axis 3 (dim [8, 6, 0])"),
])
def test_a_corrupt_dim_field_is_named(tmp_path, offset, value, words):
    # nibabel had taken dim[0] 9 for the other byte order ("vox offset 0 too low"), and a zero
    # dim[3] made a "1-D image with shape (0,)"
    path = _image(tmp_path / "dim.nii.gz")
    _patch_int16_raw(path, offset, value)
    with pytest.raises(DataError) as caught:
        read_volume(path)
    assert str(caught.value) == f"{path}: {words}"


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
        with pytest.raises(DataError, match=rf"{name}: its affine places the volume up to .* mm \(.* voxels\) away from "):
            read_labels(stored(name, shift, degrees), like=reference)


def test_upper_case_extensions_are_found_and_named_as_lower_case(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "CASE.NII.GZ")
    _image(tmp_path / "other.nii")
    (tmp_path / "other.nii").rename(folder / "other.Nii")
    assert [(p.name, str(out)) for p, out in find_inputs(folder)] == [
        ("CASE.NII.GZ", "CASE_pred.nii.gz"), ("other.Nii", "other_pred.nii.gz")]
    # and read: nibabel's load looked for other.nii (it rewrites a mixed-case extension)
    _image(tmp_path / "mixed.nii.gz")
    (tmp_path / "mixed.nii.gz").rename(folder / "mixed.Nii.Gz")
    for name in ("CASE.NII.GZ", "other.Nii", "mixed.Nii.Gz"):
        assert np.array_equal(read_volume(folder / name).data, read_volume(folder / "CASE.NII.GZ").data), name


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


def test_parallel_axes_a_near_limit_shear_and_a_sheared_sform_beside_a_qform(tmp_path, caplog):
    parallel = AFFINE.copy()
    parallel[:3, 1] = parallel[:3, 0]
    with pytest.raises(DataError, match=r"the sform's axes 0 and 1 are parallel; the affine is degenerate"):
        read_geometry(_image(tmp_path / "parallel.nii.gz", parallel))
    over = AFFINE.copy()
    over[0, 1] = 0.0011 * SPACING  # |cos| 0.0011, 0.063 degrees
    with pytest.raises(DataError, match=r"0\.063 degrees from perpendicular, more than the 0\.057 allowed"):
        read_geometry(_image(tmp_path / "over.nii.gz", over))
    under = AFFINE.copy()
    under[0, 1] = 0.0009 * SPACING
    assert read_geometry(_image(tmp_path / "under.nii.gz", under)).spacing_from == "sform"

    def perpendicular_qform(header):
        header.set_qform(AFFINE, code=1)

    sheared = AFFINE.copy()
    sheared[0, 1] = 0.01 * SPACING
    path = _image(tmp_path / "both.nii.gz", sheared, edit=perpendicular_qform)
    g = read_geometry(path)
    assert g.spacing_from == "qform" and np.allclose(g.affine, AFFINE, atol=1e-4)
    assert any("the sform is sheared" in w and "using the qform (code 1)" in w for w in g.warnings)


def test_an_unnormalised_qform_quaternion_is_named(tmp_path):
    path = _image(tmp_path / "q.nii.gz", qform=1, sform=0)
    raw = bytearray(gzip.open(path).read())
    raw[256:268] = np.array([0.70711, 0.70711, 0.0], "<f4").tobytes()  # quatern_b, c, d: b^2 + c^2 > 1
    with gzip.open(path, "wb") as handle:
        handle.write(bytes(raw))
    with pytest.raises(DataError, match=r"q\.nii\.gz: the qform's quaternion is not normalised"):
        read_volume(path)


def test_written_labels_drop_the_header_extensions(tmp_path):
    def comment(header):
        header.extensions.append(nib.nifti1.Nifti1Extension(6, b"PatientName=DOE^JOHN"))

    volume = read_volume(_image(tmp_path / "in.nii.gz", edit=comment))
    assert len(volume.image.header.extensions) == 1
    out = save_labels(np.zeros(volume.data.shape, np.uint8), volume.image, tmp_path / "out.nii.gz", volume.geometry)
    assert len(nib.load(str(out)).header.extensions) == 0


def test_label_cine_and_prediction_names_are_skipped_in_any_case(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("case.nii.gz", "case_GT.nii.gz", "case_4D.nii.gz", "old_PRED.nii.gz"):
        _image(folder / name)
    assert [p.name for p, _ in find_inputs(folder)] == ["case.nii.gz"]


def test_a_bad_output_folder_is_named_before_the_model_loads_and_exits_1(tmp_path, capsys):
    from sdnet_infer.cli import main as infer_main

    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    image = _image(tmp_path / "image.nii.gz")
    for output, problem in (("file", "a file, not a folder"), ("dangling", f"a broken symbolic link to {tmp_path / 'gone'}")):
        capsys.readouterr()
        assert infer_main(["-i", str(image), "-o", str(tmp_path / output), "-m", str(tmp_path / "no-model")]) == 1
        assert capsys.readouterr().err == f"Error: {tmp_path / output}: {problem} (--output takes a folder)\n"
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize("option,first,second", [("-i", "a.nii.gz", "b.nii.gz"), ("--input", "a.nii.gz", "b.nii.gz"),
                                                  ("-o", "out1", "out2"), ("-m", "m1", "m2"), ("--model", "m1", "m2"),
                                                  ("--threads", "1", "2"), ("--batch-size", "4", "8")])
def test_infer_refuses_an_option_of_one_value_given_twice(tmp_path, capsys, monkeypatch, option, first, second):
    # argparse kept the last: '-i A -i B' segmented B alone, without a word
    from sdnet_infer.cli import main as infer_main

    monkeypatch.chdir(tmp_path)  # the values are paths here
    given = {"-i": "a.nii.gz", "-o": str(tmp_path / "out"), "-m": str(tmp_path / "model")}
    short = {"--input": "-i", "--model": "-m"}.get(option, option)
    args = [word for key, value in given.items() if key != short for word in (key, value)]
    with pytest.raises(SystemExit) as done:
        infer_main([option, first, *args, option, second])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert done.value.code == 2 and len(errors) == 1 and "Traceback" not in err, err
    names = {"-i": "-i/--input", "--input": "-i/--input", "-o": "-o/--output", "-m": "-m/--model",
             "--model": "-m/--model"}.get(option, option)
    assert errors[0].startswith(f"sdnet-infer: error: argument {names}: given 2 times; it takes one value")
    assert ("give a folder of them" in errors[0]) == (names == "-i/--input")
    assert not (tmp_path / "out").exists()


def test_infer_takes_providers_and_flags_repeated(tmp_path, capsys):
    # --provider is repeatable; -q, --no-qc and -v repeated mean themselves: the command line is
    # read and the run goes on to the missing model (exit code 1, not 2)
    from sdnet_infer.cli import main as infer_main

    image = _image(tmp_path / "image.nii.gz")
    code = infer_main(["-i", str(image), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "no-model"),
                       "--provider", "CPUExecutionProvider", "--provider", "CPUExecutionProvider",
                       "-q", "-q", "--no-qc", "--no-qc"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("Error: ") and "given" not in err, err


def test_no_qc_json_when_no_volume_was_assessed(tmp_path):
    class Quality:
        volumes = []

        def report(self):
            raise AssertionError("nothing was assessed")

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "qc.json").write_text("{}")  # an earlier run's
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "empty.nii.gz").write_bytes(b"")
    records = predict_files(folder, tmp_path / "out", lambda b: b, size=32, target=2.5, quality=Quality())
    assert records[0]["error"] and not (tmp_path / "out" / "qc.json").exists()


def test_a_vox_offset_inside_the_header_is_refused(tmp_path):
    """vox_offset 0 in a single file: nibabel reads the 352 header bytes as voxels and shifts the
    whole image (a segmentation of Dice near 0, once written with no warning); 1-351 nibabel
    refuses naming NIfTI-1 even for a NIfTI-2 file; inside an extension it reads from there."""
    path = _image(tmp_path / "v0.nii.gz")
    _patch_float(path, 108, 0.0)
    with pytest.raises(DataError, match=r"v0\.nii\.gz: vox_offset 0 lies inside the 352-byte header of a single NIfTI-1"):
        read_volume(path)
    plain = tmp_path / "v0.nii"
    plain.write_bytes(gzip.open(path).read())
    with pytest.raises(DataError, match=r"v0\.nii: vox_offset 0 lies inside"):
        read_labels(plain)
    _patch_float(path, 108, 100.0)
    with pytest.raises(DataError, match=r"vox_offset 100 lies inside the 352-byte header"):
        read_volume(path)
    # NIfTI-2: its header is 540 bytes, so 352 is inside it; 544 is where nibabel writes
    two = tmp_path / "n2.nii.gz"
    nib.save(nib.Nifti2Image(np.arange(144, dtype=np.int16).reshape(8, 6, 3), AFFINE), str(two))
    assert read_volume(two).data.shape == (8, 6, 3)
    raw = bytearray(gzip.open(two).read())
    assert int(np.frombuffer(raw[168:176], "<i8")[0]) == 544
    raw[168:176] = np.int64(352).tobytes()
    with gzip.open(two, "wb") as handle:
        handle.write(bytes(raw))
    with pytest.raises(DataError, match=r"vox_offset 352 lies inside the 544-byte header of a single NIfTI-2 file"):
        read_volume(two)
    # an offset inside the first header extension
    def comment(header):
        header.extensions.append(nib.nifti1.Nifti1Extension(6, b"x" * 200))

    ext = _image(tmp_path / "ext.nii.gz", edit=comment)
    assert read_volume(ext).data.shape == (8, 6, 3)
    _patch_float(ext, 108, 368.0)
    with pytest.raises(DataError, match=r"vox_offset 368 lies inside the header extension that starts at byte 352"):
        read_volume(ext)


def test_a_negative_pixdim_under_a_qform_is_named(tmp_path):
    path = _image(tmp_path / "q.nii.gz", qform=1, sform=0)
    _patch_float(path, 80, -SPACING)  # pixdim[1]
    with pytest.raises(DataError, match=r"q\.nii\.gz: pixdim\[1:4\] \(-1\.5, 1\.5, 10\) has a negative "
                                        r"voxel size, and the qform"):
        read_volume(path)


def test_a_gzipped_file_named_nii_is_named_so(tmp_path):
    path = _image(tmp_path / "x.nii.gz")
    (tmp_path / "x.nii").write_bytes(path.read_bytes())
    with pytest.raises(DataError, match=r"x\.nii: the file is gzip-compressed but named \.nii"):
        read_volume(tmp_path / "x.nii")
    (tmp_path / "y.nii.gz").write_bytes(gzip.open(path).read())
    with pytest.raises(DataError, match=r"y\.nii\.gz: the file is named \.gz but is not gzip-compressed"):
        read_volume(tmp_path / "y.nii.gz")
    (tmp_path / "z.nii.gz").write_bytes(b"not a nifti file")  # not NIfTI at all: no advice to rename
    with pytest.raises(DataError, match=r"z\.nii\.gz: cannot read the image .*may be truncated or not NIfTI"):
        read_volume(tmp_path / "z.nii.gz")


def test_a_label_map_given_as_the_image_is_refused(tmp_path):
    labels = np.zeros((8, 6, 3), np.uint8)
    labels[2:5, 2] = 1
    labels[2:5, 3] = 3
    path = _image(tmp_path / "case_seg.nii.gz", data=labels)
    with pytest.raises(DataError, match=r"case_seg\.nii\.gz: the image holds only the values 0, 1, 3: a label map \(a segmentation\) "
                                         r"or an image quantised to at most 16 levels"):
        read_volume(path)
    assert read_labels(path).data.max() == 3  # as labels it reads
    # floats that are whole numbers count; an image with more levels or fractions does not
    _image(tmp_path / "f.nii.gz", data=labels.astype(np.float32) * 2)
    with pytest.raises(DataError, match="only the values 0, 2, 6"):
        read_volume(tmp_path / "f.nii.gz")
    read_volume(_image(tmp_path / "ok.nii.gz", data=labels.astype(np.float32) * 2.5))
    read_volume(_image(tmp_path / "wide.nii.gz", data=labels.astype(np.int16) * 6))  # 0, 6, 18


def test_near_integer_labels_are_shown_with_their_digits(tmp_path):
    labels = np.zeros((8, 6, 3), np.float32)
    labels[2:5, 2:4] = 2 * (1 - 1e-6)
    with pytest.raises(DataError, match=r"labels 1\.999998 outside"):
        read_labels(_image(tmp_path / "gt.nii.gz", data=labels))
    labels[2:5, 2:4] = np.nextafter(np.float32(2), np.float32(3))  # 2.0000002: 7 digits would show 2
    with pytest.raises(DataError, match=r"labels 2\.0000002 outside"):
        read_labels(_image(tmp_path / "gt.nii.gz", data=labels))
    labels[2:5, 2:4] = 421
    with pytest.raises(DataError, match=r"labels 421 outside"):
        read_labels(_image(tmp_path / "gt.nii.gz", data=labels))
