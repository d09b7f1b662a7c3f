"""The geometry reader's rule (voxel size, units, slice axis, orientation), the same labels for
every storage of one physical image, evaluate's grid checks and label maps, and failures that are
one line with no partial file left behind."""

import errno
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from support.stand_in import StandIn
from support.geometry_cases import CASES, SAME_ARRAY, agreement, flipped_affine, physical_affine, save, to_plain, write_cases
from sdnet_infer.geometry import DataError, check_orientation, read_geometry
from sdnet_infer.io import parse_label_map, read_volume
from sdnet_infer.predict import predict_files
from sdnet_tf.data.acdc import find_patients
from sdnet_tf.data.phantom import patient_volumes, write_patient
from support.helpers import ROOT

REAL = ROOT.parent / "shared" / "data" / "acdc-training"
if not REAL.is_dir():
    REAL = Path("/work/shared/data/acdc-training")
ACDC_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def frame():
    """One phantom ED frame: (image (H, W, S) int16, labels, in-plane spacing mm, slice thickness mm)."""
    cine, labels, params, ed, _ = patient_volumes(seed=0, number=2)
    return cine[..., ed - 1], labels[ed], params["spacing"], params["slice_thickness"]


@pytest.fixture(scope="module")
def cases(frame, tmp_path_factory):
    image, _, spacing, thickness = frame
    return write_cases(image, spacing, thickness, tmp_path_factory.mktemp("cases"))


# ------------------------------------------------------------------------------ the reader's rule
def test_acdc_style_header_takes_pixdim_and_keeps_the_array(frame, cases):
    image, _, spacing, thickness = frame
    g = read_geometry(cases["plain"])
    assert g.spacing_from == "pixdim" and g.axcodes == ("L", "P", "S") and g.is_identity
    assert g.spacing == pytest.approx((spacing, spacing, thickness), rel=1e-6) and g.slice_axis == 2
    assert g.warnings == ()
    volume = read_volume(cases["plain"])
    assert np.array_equal(volume.data, image.astype(np.float32))  # no flip, no copy of another layout


def test_sform_only_voxel_size_is_used_with_a_warning_naming_the_file(frame, cases, caplog):
    _, _, spacing, thickness = frame
    with caplog.at_level(logging.WARNING, logger="sdnet_infer.geometry"):
        g = read_geometry(cases["sform_spacing"])
    assert g.spacing_from == "sform" and g.spacing == pytest.approx((spacing, spacing, thickness))
    assert len(g.warnings) == 1 and str(cases["sform_spacing"]) in g.warnings[0] and "using the sform" in g.warnings[0]
    assert g.warnings[0] in caplog.text


@pytest.mark.parametrize("units,scale", [("meter", 1e-3), ("micron", 1e3), ("mm", 1.0), ("unknown", 1.0)])
def test_spatial_units_are_converted_to_mm(tmp_path, units, scale):
    path = save(np.ones((8, 6, 3)), ACDC_AFFINE, (1.5 * scale, 1.5 * scale, 10 * scale), tmp_path / "a.nii.gz",
                units=units)
    assert read_geometry(path).spacing == pytest.approx((1.5, 1.5, 10.0), rel=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.5, np.nan, np.inf])
def test_zero_negative_or_non_finite_voxel_size_is_a_named_error(tmp_path, bad):
    path = tmp_path / "bad.nii.gz"
    img = nib.Nifti1Image(np.ones((8, 6, 3), np.int16), ACDC_AFFINE)
    img.header["pixdim"][1:4] = (bad, 1.5, 10.0)  # nibabel's set_zooms refuses some of these
    nib.save(img, str(path))
    with pytest.raises(DataError, match=r"bad\.nii\.gz: voxel size .* cannot be known"):
        read_geometry(path)


def test_zero_spacing_is_refused_without_nibabel_s_anonymous_warning(cases, capfd):
    with pytest.raises(DataError, match="zero_spacing.nii.gz"):
        read_volume(cases["zero_spacing"])
    assert "setting 0 dims to 1" not in capfd.readouterr().err


def test_slice_first_array_comes_back_in_the_training_layout(frame, cases):
    image = frame[0]
    g = read_geometry(cases["slice_first"])
    assert g.slice_axis == 0 and g.shape == (image.shape[2], *image.shape[:2])
    volume = read_volume(cases["slice_first"])
    assert np.array_equal(volume.data, image.astype(np.float32))
    assert volume.zooms == pytest.approx(read_volume(cases["plain"]).zooms)
    assert np.array_equal(g.from_training(volume.data), image.transpose(2, 0, 1))


def test_flipped_copy_comes_back_unflipped(frame, cases):
    volume = read_volume(cases["flipped"])
    assert volume.geometry.axcodes == ("R", "A", "S")
    assert np.array_equal(volume.data, frame[0].astype(np.float32))


def test_slice_axis_from_the_affine_when_voxels_are_isotropic(tmp_path):
    affine = np.zeros((4, 4))
    affine[0, 1], affine[1, 2], affine[2, 0], affine[3, 3] = -1.2, -1.2, 1.2, 1.0  # axis 0 runs head-foot
    g = read_geometry(save(np.ones((3, 8, 6)), affine, (1.2, 1.2, 1.2), tmp_path / "iso.nii.gz"))
    assert g.slice_axis == 0 and g.training_shape == (8, 6, 3)


BY_AFFINE = r"the axis the affine points head-foot \(axis 2, 256 voxels\)"
BY_VOXEL_SIZE = r"the axis its voxel size makes the slice axis \(axis 2, 256 voxels of 10 mm\)"


@pytest.mark.parametrize("shape, zooms, name, chosen", [
    # a (192, 256, 10) frame transposed slice first, isotropic pixdim, ACDC's placeholder affine kept
    ((10, 192, 256), (1.445, 1.445, 1.445), "transposed", BY_AFFINE),
    # a cine (192, 256, 10 slices) x 2 frames stored time first: its first three axes are time, rows, columns
    ((2, 192, 256, 10), (1.0, 1.445, 1.445, 10.0), "time_first", BY_AFFINE),
    # an ACDC frame (216, 256, 10) saved slice first (numpy's order) with its header kept: pixdim's
    # 10 mm now falls on the 256-voxel axis
    ((10, 216, 256), (1.5625, 1.5625, 10.0), "slice_first", BY_VOXEL_SIZE),
    # the same frame as a channel-first tensor (1, 216, 256, 10) with its header kept
    ((1, 216, 256, 10), (1.5625, 1.5625, 10.0, 1.0), "channel_first", BY_VOXEL_SIZE),
])
def test_a_slice_axis_that_leaves_no_cardiac_slice_is_refused(tmp_path, shape, zooms, name, chosen):
    """Read as the affine or pixdim says, axis 2 would give 256 slices of 10 x 192 (or 2 x 192,
    10 x 216, 1 x 216) voxels; the voxel sizes' choice had not been checked."""
    path = save(np.zeros(shape), ACDC_AFFINE, zooms, tmp_path / f"{name}.nii.gz")
    with pytest.raises(DataError, match=rf"{name}\.nii\.gz: cannot tell the slice axis: .*{chosen} would make 256 "
                                        r"slices of .* narrower than any cardiac image"):
        read_geometry(path)


def _rotation(axis, degrees):
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(4)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


@pytest.mark.parametrize("tilt, refused", [(0, False), (30, False), (38, True), (40, True), (50, True),
                                           (60, False)])
@pytest.mark.parametrize("about", [0, 1])
def test_a_thin_slice_stack_tilted_near_45_degrees_is_refused_not_cut_by_a_guess(tmp_path, tilt, refused, about):
    # 1.5625 x 1.5625 x 2 mm: no axis is 1.5 times thicker, so the axis nearest head-foot decides;
    # at 50 degrees that is an in-plane axis, and 40 and 50 degrees differ by a few of angulation
    affine = _rotation(about, tilt) @ np.diag([1.5625, 1.5625, 2.0, 1.0])
    path = save(np.zeros((96, 96, 50)), affine, (1.5625, 1.5625, 2.0), tmp_path / "thin.nii.gz")
    if refused:
        with pytest.raises(DataError, match=r"thin\.nii\.gz: cannot tell the slice axis: .* too close to choose"):
            read_geometry(path)
    else:
        assert read_geometry(path).slice_axis == (2 if tilt < 45 else 1 - about)


def _thin_tilted(path, tilt=40, data=None):
    """The 1.5625 x 1.5625 x 2 mm stack above tilted ``tilt`` degrees about L-R: refused at 40."""
    data = np.zeros((96, 96, 50)) if data is None else data
    return save(data, _rotation(0, tilt) @ np.diag([1.5625, 1.5625, 2.0, 1.0]), (1.5625, 1.5625, 2.0), path,
                dtype=data.dtype)


def test_a_given_slice_axis_reads_a_stack_the_rule_refuses_and_orients_it_as_the_rule_would(tmp_path):
    from sdnet_infer.geometry import parse_slicing

    tilted = _thin_tilted(tmp_path / "thin.nii.gz")
    with pytest.raises(DataError, match=r"too close to choose .* give the slice axis \(--slice-axis 0, 1 or 2\)"):
        read_geometry(tilted)
    given = read_geometry(tilted, slicing=parse_slicing("2"))
    assert given.slice_axis == 2 and given.training_shape == (96, 96, 50)
    assert np.linalg.det(_training_frame(given)) == pytest.approx(1.0, abs=1e-6)  # right-handed: never mirrored
    # where the rule decides, giving its axis changes nothing; giving another moves the slices there
    for tilt in (0, 30):
        path = _thin_tilted(tmp_path / f"t{tilt}.nii.gz", tilt)
        auto, same = read_geometry(path), read_geometry(path, slicing=2)
        assert np.array_equal(auto.transform, same.transform) and auto.slice_axis == same.slice_axis == 2
        assert read_geometry(path, slicing=0).training_shape[2] == 96
    # a narrow stack the shape check refuses is read as given (the user knows its axis)
    narrow = save(np.zeros((10, 192, 256)), ACDC_AFFINE, (1.445, 1.445, 1.445), tmp_path / "narrow.nii.gz")
    with pytest.raises(DataError, match=r"or give the slice axis \(--slice-axis 0, 1 or 2\) if it is right"):
        read_geometry(narrow)
    assert read_geometry(narrow, slicing=2).training_shape == (10, 192, 256)


@pytest.mark.parametrize("text, parsed", [("auto", "auto"), (" Auto ", "auto"), ("axial", "axial"), ("0", 0),
                                          ("2", 2), (1, 1)])
def test_slice_axis_choices_are_parsed(text, parsed):
    from sdnet_infer.geometry import parse_slicing

    assert parse_slicing(text) == parsed and type(parse_slicing(text)) is type(parsed)


@pytest.mark.parametrize("text", ["3", "-1", "1.0", "z", "", True, None])
def test_other_slice_axis_choices_are_refused(tmp_path, text):
    from sdnet_infer.geometry import parse_slicing

    with pytest.raises(ValueError, match=r"expected auto, axial, or a stored axis 0, 1 or 2"):
        parse_slicing(text)
    if not isinstance(text, str) or text:
        with pytest.raises(ValueError, match=r"or a stored axis 0, 1 or 2"):
            read_geometry(_thin_tilted(tmp_path / "thin.nii.gz", 0), slicing=text)


def test_predict_and_sdnet_infer_take_the_slice_axis_and_record_it(tmp_path, monkeypatch):
    import sdnet_infer.model
    import sdnet_tf.inference as inference
    from sdnet_infer.cli import main as infer

    folder = tmp_path / "in"
    folder.mkdir()
    _thin_tilted(folder / "thin.nii.gz", data=np.random.default_rng(0).integers(0, 200, (96, 96, 50)).astype(np.int16))
    monkeypatch.setattr(inference, "load_run", lambda run: (SimpleNamespace(num_classes=3),
                                                            SimpleNamespace(data=SimpleNamespace(spacing=2.5))))
    monkeypatch.setattr(inference, "KerasRuntime", StandIn)
    monkeypatch.setattr(sdnet_infer.model, "SDNetRuntime", StandIn)
    for name, command in [("predict", lambda out, *extra: CliRunner().invoke(
            main, ["predict", "-i", str(folder), "-o", str(out), "--run", str(tmp_path / "run"), "--no-qc", "--quiet",
                   *extra]).exit_code),
                          ("sdnet-infer", lambda out, *extra: infer(["-i", str(folder), "-o", str(out), "-m",
                                                                     str(tmp_path / "model"), "--no-qc", "-q", *extra]))]:
        assert command(tmp_path / f"{name}-auto") == 1, name  # refused: too close to choose
        record = json.loads((tmp_path / f"{name}-auto" / "predictions.json").read_text())[0]
        assert "--slice-axis" in record["error"] and record["slicing"] == "auto"
        assert command(tmp_path / f"{name}-given", "--slice-axis", "2") == 0, name
        record = json.loads((tmp_path / f"{name}-given" / "predictions.json").read_text())[0]
        assert record["error"] is None and record["slicing"] == 2 and record["slice_axis"] == 2
        written = nib.load(str(tmp_path / f"{name}-given" / "thin_pred.nii.gz"))
        assert written.shape == (96, 96, 50)
        assert np.allclose(written.affine, nib.load(str(folder / "thin.nii.gz")).affine)


def test_evaluate_takes_the_slice_axis_for_both_files_and_refuses_it_with_a_run(frame, tmp_path):
    labels = np.zeros((96, 96, 50), np.uint8)
    labels[30:60, 30:60, 10:40] = 3
    for folder, suffix in (("refs", "gt"), ("preds", "pred")):
        (tmp_path / folder).mkdir()
        _thin_tilted(tmp_path / folder / f"a_{suffix}.nii.gz", data=labels)
    args = ["evaluate", "-p", str(tmp_path / "preds"), "-r", str(tmp_path / "refs"), "-o", str(tmp_path / "out"),
            "--quiet"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code != 0 and "--slice-axis" in refused.output
    scored = CliRunner().invoke(main, args + ["--slice-axis", "2"])
    assert scored.exit_code == 0, scored.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["per_class"]["LV"]["all"]["Dice"]["mean"] == pytest.approx(1.0) and summary["slicing"] == 2
    # the axis given is the reference's: a prediction stored slice first (its affine updated) is
    # found along the same direction and scored; one axis number for both had cut it the wrong way
    reference = nib.load(str(tmp_path / "refs" / "a_gt.nii.gz"))
    order = (2, 0, 1)
    moved = np.eye(4)
    moved[:3, :3] = reference.affine[:3, :3][:, order]
    moved[:3, 3] = reference.affine[:3, 3]
    (tmp_path / "preds" / "a_pred.nii.gz").unlink()
    save(np.transpose(labels, order), moved, tuple(np.array([1.5625, 1.5625, 2.0])[list(order)]),
         tmp_path / "preds" / "a_pred.nii.gz", dtype=np.uint8)
    again = CliRunner().invoke(main, args + ["--slice-axis", "2"])
    assert again.exit_code == 0, again.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["per_class"]["LV"]["all"]["Dice"]["mean"] == pytest.approx(1.0) and summary["errors"] == []
    with_run = CliRunner().invoke(main, ["evaluate", "--run", str(tmp_path / "run"), "-o", str(tmp_path / "o2"),
                                         "--slice-axis", "1"])
    assert with_run.exit_code != 0 and "--slice-axis is for --predictions/--references" in with_run.output


def _training_frame(geometry):
    """The world directions (3, 3) of the training array's rows, columns and slices."""
    columns = geometry.affine[:3, :3] / np.linalg.norm(geometry.affine[:3, :3], axis=0)
    frame = np.zeros((3, 3))
    for stored, (target, flip) in enumerate(geometry.transform):
        frame[:, int(target)] = flip * columns[:, stored]
    return frame


def test_no_orientation_of_a_stack_shows_the_network_mirrored_slices(tmp_path):
    # the training frame (rows to the left, columns posterior, slices superior) is right-handed;
    # a stack whose slice normal is nearest A-P was relabelled by an odd permutation, and its
    # slices were shown mirrored (a 2-degree change of angulation, 44 to 46 about L-R, did it)
    rng = np.random.default_rng(0)
    cases = [_rotation(0, a) for a in (44, 46, 134, 136, -46, 90)] + [_rotation(1, a) for a in (46, 91, 136)]
    for _ in range(40):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        rotation = np.eye(4)
        rotation[:3, :3] = q * np.sign(np.linalg.det(q))
        cases.append(rotation)
    for i, rotation in enumerate(cases):
        affine = rotation @ np.diag([1.5, 1.5, 8.0, 1.0])
        geometry = read_geometry(save(np.zeros((40, 40, 6)), affine, (1.5, 1.5, 8.0), tmp_path / f"r{i}.nii.gz"))
        assert geometry.slice_axis == 2
        assert np.linalg.det(_training_frame(geometry)) == pytest.approx(1.0, abs=1e-6), i


def _related_by(a, b):
    """How array ``b`` follows from ``a``: (quarter turns in-plane, mirrored, slices reversed), or None."""
    for turns in range(4):
        for mirrored in (False, True):
            for reversed_ in (False, True):
                x = np.rot90(a, turns, axes=(0, 1))
                x = x[::-1] if mirrored else x
                x = x[..., ::-1] if reversed_ else x
                if x.shape == b.shape and np.array_equal(x, b):
                    return turns, mirrored, reversed_
    return None


@pytest.mark.parametrize("about", [0, 1])
def test_two_degrees_of_angulation_across_a_boundary_rotate_the_slices_and_never_mirror_them(tmp_path, about):
    # at 44 degrees about L-R or A-P the slice normal is nearest head-foot, at 46 nearest the
    # other axis: the slices were then seen from the other side, mirrored (the RV's Dice fell
    # from 0.71-0.86 to 0.13-0.33 on four ACDC frames)
    data = np.random.default_rng(1).integers(0, 100, (24, 20, 6))
    base = np.diag([-1.5, -1.5, 8.0, 1.0])
    arrays = [read_volume(save(data, _rotation(about, tilt) @ base, (1.5, 1.5, 8.0),
                               tmp_path / f"t{tilt}.nii.gz")).data for tilt in (44, 46)]
    turns, mirrored, reversed_ = _related_by(*arrays)
    assert not mirrored and not reversed_  # the same slices, at most turned in-plane


def test_an_axis_near_a_diagonal_is_a_warning_and_puts_the_volume_up_for_review(tmp_path, caplog):
    from sdnet_infer.qc import describe, header_review

    base = np.diag([-1.5, -1.5, 8.0, 1.0])
    near = read_geometry(save(np.zeros((24, 20, 6)), _rotation(2, 43) @ base, (1.5, 1.5, 8.0),
                              tmp_path / "near.nii.gz"))
    assert near.orientation_boundary.startswith(f"{tmp_path / 'near.nii.gz'}: axis 0 runs 2.0 degrees from the diagonal")
    assert near.orientation_boundary in near.warnings
    assert "near.nii.gz: axis 0 runs 2.0 degrees" in caplog.text
    reviewed = header_review({"status": "ok", "reasons": []}, near)
    assert reviewed["status"] == "review" and [r["check"] for r in reviewed["reasons"]] == ["orientation_boundary"]
    assert "toss-up" in describe(reviewed["reasons"][0])
    clear = read_geometry(save(np.zeros((24, 20, 6)), _rotation(2, 30) @ base, (1.5, 1.5, 8.0),
                               tmp_path / "clear.nii.gz"))
    assert clear.orientation_boundary is None
    assert header_review({"status": "ok", "reasons": []}, clear) == {"status": "ok", "reasons": []}


def test_a_narrow_isotropic_stack_with_few_slices_is_still_read_by_its_affine(tmp_path):
    """Narrow in-plane (under 50 mm) but more voxels across than slices: a crop, not a transposed array."""
    g = read_geometry(save(np.zeros((30, 30, 12)), ACDC_AFFINE, (1.2, 1.2, 1.2), tmp_path / "crop.nii.gz"))
    assert g.slice_axis == 2 and g.training_shape == (30, 30, 12)


def test_undecidable_slice_axis_is_refused(tmp_path):
    img = nib.Nifti1Image(np.ones((8, 6, 5), np.int16), None)
    img.header.set_zooms((1.2, 1.2, 1.2))
    img.header.set_sform(None, code=0)
    img.header.set_qform(None, code=0)
    nib.save(img, str(tmp_path / "iso.nii.gz"))
    with pytest.raises(DataError, match=r"iso\.nii\.gz: cannot tell the slice axis"):
        read_geometry(tmp_path / "iso.nii.gz")


def test_placeholder_affine_that_contradicts_the_voxel_sizes_is_refused(tmp_path):
    """A slice-first array, pixdim (10, 1.5, 1.5), with ACDC's diag(-1, -1, 1) left unpermuted."""
    path = save(np.ones((3, 8, 6)), ACDC_AFFINE, (10.0, 1.5, 1.5), tmp_path / "odd.nii.gz")
    with pytest.raises(DataError, match=r"odd\.nii\.gz: the affine runs axis 0 along x.* disagree.*--slice-axis"):
        read_geometry(path)
    # given the axis, it is read, with a warning that the placeholder runs it along x, not head-foot
    given = read_geometry(path, slicing=0)
    assert given.slice_axis == 0 and given.training_shape == (8, 6, 3)
    assert [w for w in given.warnings if "odd.nii.gz: the slice axis given (axis 0) runs along x" in w]
    assert read_geometry(save(np.ones((8, 6, 3)), ACDC_AFFINE, (1.5, 1.5, 10.0), tmp_path / "fine.nii.gz"),
                         slicing=2).warnings == ()


# ------------------------------------------------------------ a header that lost its voxel size
def _acdc_like(path, data=None):
    """An ACDC-style frame: sform diag(-1, -1, 1) code 2, qform code 0, pixdim (1.5, 1.5, 10) mm."""
    data = np.arange(8 * 6 * 3, dtype=np.int16).reshape(8, 6, 3) if data is None else data
    return save(data, ACDC_AFFINE, (1.5, 1.5, 10.0), path, units="mm")


# nibabel sets pixdim from the unit affine, 1 x 1 x 1, when the header is not passed or when the
# affine changes (a crop, a reorientation); Nifti1Image(data, img.affine, img.header) keeps it
NAIVE_COPIES = {
    "no_header": lambda img: nib.Nifti1Image(np.asarray(img.dataobj), img.affine),
    "cropped": lambda img: img.slicer[1:-1],
    "canonical": nib.as_closest_canonical,
}


ROTATED_UNIT = np.array([[np.cos(0.5), -np.sin(0.5), 0, 0], [np.sin(0.5), np.cos(0.5), 0, 0], [0, 0, 1, 0],
                         [0, 0, 0, 1.0]])


def _lost(path, warnings):
    return [w for w in warnings if w.startswith(f"{path}: voxel size 1 x 1 x 1 mm from pixdim")]


@pytest.mark.parametrize("copy", NAIVE_COPIES)
def test_a_copy_that_lost_its_voxel_size_is_read_with_a_warning_naming_it(tmp_path, caplog, copy):
    # the copy was segmented at 1 x 1 x 1 mm without a word
    original = _acdc_like(tmp_path / "patient001_frame01.nii.gz")
    path = tmp_path / f"{copy}.nii.gz"
    nib.save(NAIVE_COPIES[copy](nib.load(str(original))), str(path))
    assert tuple(nib.load(str(path)).header["pixdim"][1:4]) == (1.0, 1.0, 1.0)
    assert read_geometry(original).warnings == ()
    with caplog.at_level(logging.WARNING, logger="sdnet_infer.geometry"):
        g = read_geometry(path)
    assert g.spacing == (1.0, 1.0, 1.0) and g.slice_axis == 2  # read at the wrong size: only a warning can say
    assert len(g.warnings) == 1 and _lost(path, g.warnings) == list(g.warnings)
    assert "so the header has probably lost its voxel size and the segmentation may be wrong" in g.warnings[0]
    assert "check pixdim against the original file's" in g.warnings[0] and g.warnings[0] in caplog.text
    assert read_geometry(path, slicing="axial").warnings == ()  # whole-heart volumes are often 1 mm isotropic


def test_a_copy_with_the_header_keeps_its_voxel_size_and_no_warning(tmp_path):
    original = nib.load(str(_acdc_like(tmp_path / "original.nii.gz")))
    path = tmp_path / "copy.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(original.dataobj), original.affine, original.header), str(path))
    g = read_geometry(path)
    assert g.spacing == (1.5, 1.5, 10.0) and g.warnings == ()


@pytest.mark.parametrize("affine,zooms,units,warned", [
    (ACDC_AFFINE, (1.0, 1.0, 1.0), "mm", True),  # a genuine 1 mm volume with a unit affine: the header cannot tell
    (np.eye(4), (1.0, 1.0, 1.0), "unknown", True),
    (ACDC_AFFINE, (0.001, 0.001, 0.001), "meter", True),  # 1 mm after the unit conversion
    (ACDC_AFFINE, (1.0, 1.0, 1.000001), "mm", True),  # within 1e-6
    (ACDC_AFFINE, (1.0, 1.0, 1.00001), "mm", False),
    (ACDC_AFFINE, (1.0, 1.0, 1.2), "mm", False),
    (ACDC_AFFINE, (1.5, 1.5, 10.0), "mm", False),
    (np.diag([-1000.0, -1000.0, 1000.0, 1.0]), (1000.0, 1000.0, 1000.0), "micron", False),  # the affine says 1 mm
    (ROTATED_UNIT, (1.0, 1.0, 1.0), "mm", True),  # unit columns, not axis-aligned
], ids=["1mm", "eye-unknown-units", "metre", "within-1e-6", "1e-5-off", "1.2mm-slices", "acdc", "affine-says-1mm",
        "rotated"])
def test_the_lost_voxel_size_rule(tmp_path, affine, zooms, units, warned):
    path = save(np.ones((8, 6, 3)), affine, zooms, tmp_path / "volume.nii.gz", units=units)
    g = read_geometry(path)
    assert bool(_lost(path, g.warnings)) == warned, g
    assert read_geometry(path, slicing="axial").warnings == ()


def _folder_with_a_lost_voxel_size(frame, tmp_path):
    """A folder holding an ACDC-like frame (original.nii.gz) and its copy saved without its
    header (copy.nii.gz, pixdim 1, 1, 1): (folder, the copy's path)."""
    image, _, spacing, thickness = frame
    folder = tmp_path / "in"
    folder.mkdir()
    original = save(image, ACDC_AFFINE, (spacing, spacing, thickness), folder / "original.nii.gz", units="mm")
    copy = folder / "copy.nii.gz"
    nib.save(NAIVE_COPIES["no_header"](nib.load(str(original))), str(copy))
    return folder, copy


def test_predictions_json_and_the_log_carry_the_lost_voxel_size(frame, tmp_path, caplog):
    folder, copy = _folder_with_a_lost_voxel_size(frame, tmp_path)
    with caplog.at_level(logging.WARNING, logger="sdnet_infer.geometry"):
        records = predict_files(folder, tmp_path / "out", _disc_model(96), size=96, target=2.5)
    stored = {Path(r["input"]).name: r for r in json.loads((tmp_path / "out" / "predictions.json").read_text())}
    assert stored["original.nii.gz"]["warnings"] == [] and stored["original.nii.gz"]["error"] is None
    assert len(_lost(copy, stored["copy.nii.gz"]["warnings"])) == 1 and stored["copy.nii.gz"]["error"] is None
    assert stored["copy.nii.gz"]["spacing"] == [1.0, 1.0, 1.0] and len(records) == 2
    assert _lost(copy, stored["copy.nii.gz"]["warnings"])[0] in caplog.text


def test_quality_control_puts_a_lost_voxel_size_up_for_review(frame, tmp_path):
    from sdnet_infer.qc import QC_FILE, QualityControl, describe

    folder, copy = _folder_with_a_lost_voxel_size(frame, tmp_path)
    records = predict_files(folder, tmp_path / "out", _disc_model(96), size=96, target=2.5, quality=QualityControl())
    by_name = {Path(r["input"]).name: r for r in records}
    assert "lost_voxel_size" in by_name["copy.nii.gz"]["qc_reasons"] and by_name["copy.nii.gz"]["qc"] == "review"
    assert "lost_voxel_size" not in by_name["original.nii.gz"]["qc_reasons"]
    volumes = {Path(v["input"]).name: v for v in json.loads((tmp_path / "out" / QC_FILE).read_text())["volumes"]}
    reasons = [r for r in volumes["copy.nii.gz"]["reasons"] if r["check"] == "lost_voxel_size"]
    assert volumes["copy.nii.gz"]["status"] == "review" and len(reasons) == 1
    assert reasons[0]["warning"] == _lost(copy, by_name["copy.nii.gz"]["warnings"])[0]
    # sdnet-infer's per-file line describes every reason (this one raised KeyError there)
    assert describe(reasons[0]) == "voxel size 1 x 1 x 1 mm, probably lost from the header (see the warning)"
    assert not [r for r in volumes["original.nii.gz"]["reasons"] if r["check"] == "lost_voxel_size"]


def test_sdnet_tf_predict_reports_the_lost_voxel_size(tmp_path, monkeypatch, caplog):
    import sdnet_tf.inference as inference

    image = tmp_path / "copy.nii.gz"
    nib.save(NAIVE_COPIES["no_header"](nib.load(str(_acdc_like(tmp_path / "original.nii.gz")))), str(image))
    monkeypatch.setattr(inference, "load_run", lambda run: (SimpleNamespace(num_classes=3),
                                                            SimpleNamespace(data=SimpleNamespace(spacing=2.5))))
    monkeypatch.setattr(inference, "KerasRuntime", StandIn)
    with caplog.at_level(logging.WARNING, logger="sdnet_infer.geometry"):
        result = CliRunner().invoke(main, ["predict", "-i", str(image), "-o", str(tmp_path / "out"), "--run",
                                           str(tmp_path / "run"), "--no-qc", "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())[0]
    assert len(_lost(image, record["warnings"])) == 1 and record["warnings"][0] in caplog.text


def test_sdnet_infer_prints_the_lost_voxel_size(tmp_path):
    # a stand-in for the exported model; the warning goes to stderr with the file named
    image = tmp_path / "copy.nii.gz"
    original = _acdc_like(tmp_path / "original.nii.gz")
    nib.save(NAIVE_COPIES["no_header"](nib.load(str(original))), str(image))
    script = textwrap.dedent("""
        import sys
        import sdnet_infer.model
        from support.stand_in import StandIn

        sdnet_infer.model.SDNetRuntime = StandIn
        from sdnet_infer.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "runtime"), str(ROOT / "tests"),
                                                   os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script, "-i", str(image), "-o", str(tmp_path / "out"), "-m",
                             str(tmp_path / "model"), "--no-qc"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"WARNING: {image}: voxel size 1 x 1 x 1 mm from pixdim" in result.stderr, result.stderr


def test_orientation_codes_are_checked():
    assert check_orientation("lps") == "LPS"
    for bad in ("LLS", "XYZ", "LP"):
        with pytest.raises(DataError, match="not an axis code"):
            check_orientation(bad)


@pytest.mark.skipif(not REAL.is_dir(), reason="the real ACDC training data is not here")
def test_real_acdc_header_takes_pixdim_and_an_identity_transform(tmp_path):
    path = REAL / "patient001" / "patient001_frame01.nii.gz"
    g = read_geometry(path)
    header = nib.load(str(path)).header
    assert g.spacing_from == "pixdim" and g.is_identity and g.slice_axis == 2 and g.warnings == ()
    assert g.spacing == tuple(float(z) for z in header.get_zooms()[:3])
    image = np.asarray(nib.load(str(path)).dataobj)
    plain = read_volume(path)
    cases = write_cases(image, g.spacing[0], g.spacing[2], tmp_path / "cases", dtype=image.dtype)
    for case in set(CASES) - {"zero_spacing"}:  # the user's report, on a real ACDC frame
        volume = read_volume(cases[case])
        assert np.array_equal(volume.data, plain.data), case
        assert volume.zooms == pytest.approx(plain.zooms, rel=1e-6), case
    with pytest.raises(DataError, match="zero_spacing"):
        read_volume(cases["zero_spacing"])


# ------------------------------------------------------------------------ one image, many storages
def _disc_model(size):
    """A stand-in network: LV on an off-centre disc of the preprocessed grid (so a mirrored or
    mis-scaled input gives a different physical answer); MYO on the bright pixels around it."""
    yy, xx = np.mgrid[:size, :size]
    lv = ((yy - 0.58 * size) ** 2 + (xx - 0.4 * size) ** 2 <= (0.16 * size) ** 2).astype(np.float32)

    def probabilities(slices):
        bright = (slices[..., 0] > 0.3).astype(np.float32) * (1 - lv)
        return np.stack([bright, np.broadcast_to(lv, bright.shape), np.zeros_like(bright)], -1)

    return probabilities


def test_every_storage_of_one_image_gives_the_same_labels_in_physical_space(frame, cases, tmp_path):
    _, _, spacing, thickness = frame
    records = predict_files(cases["plain"].parent, tmp_path / "out", _disc_model(96), size=96, target=2.5)
    by_case = {Path(r["input"]).name.split(".")[0]: r for r in records}
    assert set(by_case) == set(CASES)
    assert "zero_spacing.nii.gz: voxel size" in by_case["zero_spacing"]["error"]
    assert not (tmp_path / "out" / "zero_spacing_pred.nii.gz").exists()
    plain = np.asarray(nib.load(str(tmp_path / "out" / "plain_pred.nii.gz")).dataobj)
    voxel_ml = spacing * spacing * thickness / 1000  # the true voxel size of every copy's array
    plain_ml = (plain == 3).sum() * voxel_ml
    assert plain_ml > 20 and (plain == 2).any()
    for case in set(CASES) - {"zero_spacing", "plain"}:
        assert by_case[case]["error"] is None, by_case[case]["error"]
        out = nib.load(str(tmp_path / "out" / f"{case}_pred.nii.gz"))
        src = nib.load(str(cases[case]))
        assert out.shape == src.shape and np.allclose(out.affine, src.affine)  # on the input's own grid
        labels = to_plain(case, np.asarray(out.dataobj))
        assert agreement(labels, plain) >= 0.99, case
        if case in SAME_ARRAY:
            assert (labels == 3).sum() * voxel_ml == pytest.approx(plain_ml, rel=0.02), case


# -------------------------------------------------------------------------------------- evaluate
@pytest.fixture
def scored_folder(frame, tmp_path):
    """References of three cases in the ACDC layout, and predictions equal to them."""
    _, labels, spacing, thickness = frame
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    for case in ("a", "b", "c"):
        save(labels, ACDC_AFFINE, (spacing, spacing, thickness), (refs.mkdir(exist_ok=True) or refs)
             / f"{case}_gt.nii.gz", dtype=np.uint8)
        save(labels, ACDC_AFFINE, (spacing, spacing, thickness), (preds.mkdir(exist_ok=True) or preds)
             / f"{case}_pred.nii.gz", dtype=np.uint8)
    return refs, preds, labels, (spacing, thickness)


def test_evaluate_refuses_a_prediction_on_another_grid_and_scores_the_others(scored_folder):
    """b and e hold the reference's voxels stored flipped and slice first, their affines updated
    to match: the same grid, scored. c has another voxel size, d another shape, f lies half a
    voxel off: refused, naming both files."""
    refs, preds, labels, (spacing, thickness) = scored_folder
    true = physical_affine(labels.shape, spacing, thickness)
    save(labels[::-1, ::-1], flipped_affine(true, labels.shape), (spacing, spacing, thickness),
         preds / "b_pred.nii.gz", dtype=np.uint8)
    save(labels, ACDC_AFFINE, (spacing * 1.1, spacing * 1.1, thickness), preds / "c_pred.nii.gz", dtype=np.uint8)
    save(labels, ACDC_AFFINE, (spacing, spacing, thickness), refs / "d_gt.nii.gz", dtype=np.uint8)
    save(labels[:-2], ACDC_AFFINE, (spacing, spacing, thickness), preds / "d_pred.nii.gz", dtype=np.uint8)
    slice_first = true[:, [2, 0, 1, 3]]
    save(labels.transpose(2, 0, 1), slice_first, (thickness, spacing, spacing), refs / "e_gt.nii.gz", dtype=np.uint8)
    save(labels, true, (spacing, spacing, thickness), preds / "e_pred.nii.gz", dtype=np.uint8)
    off = true.copy()
    off[0, 3] += 0.5 * spacing
    save(labels, ACDC_AFFINE, (spacing, spacing, thickness), refs / "f_gt.nii.gz", dtype=np.uint8)
    save(labels, off, (spacing, spacing, thickness), preds / "f_pred.nii.gz", dtype=np.uint8)
    result = CliRunner().invoke(main, ["evaluate", "-p", str(preds), "-r", str(refs), "--quiet"])
    assert result.exit_code == 1, result.output
    summary = json.loads((preds / "summary.json").read_text())
    assert summary["cases"] == 3 and summary["dice_mean_3d"]["mean"] == 1.0  # a, b, e
    errors = sorted(summary["errors"])
    assert len(errors) == 3
    assert "c_pred.nii.gz: voxel size" in errors[0] and "c_gt.nii.gz" in errors[0]
    assert "d_pred.nii.gz: shape" in errors[1] and "d_gt.nii.gz" in errors[1]
    assert f"f_pred.nii.gz: its affine places the volume up to {0.5 * spacing:.3g} mm (0.5 voxels)" in errors[2]
    assert "f_gt.nii.gz" in errors[2]


def test_evaluate_label_map_reads_references_in_another_convention(scored_folder):
    refs, preds, labels, (spacing, thickness) = scored_folder
    mnms = np.array([0, 3, 2, 1], np.uint8)[labels]  # M&Ms: 1 LV, 2 MYO, 3 RV
    for case in ("a", "b", "c"):
        save(mnms, ACDC_AFFINE, (spacing, spacing, thickness), refs / f"{case}_gt.nii.gz", dtype=np.uint8)
    for option, lv in ((["--label-map", "mnms"], 1.0), (["--label-map", "1:3,2:2,3:1"], 1.0), ([], 0.0)):
        result = CliRunner().invoke(main, ["evaluate", "-p", str(preds), "-r", str(refs), "--quiet", *option])
        assert result.exit_code == 0, result.output
        summary = json.loads((preds / "summary.json").read_text())
        assert summary["per_class"]["LV"]["all"]["Dice"]["mean"] == lv, option


def test_label_map_parsing():
    assert parse_label_map("MnMs") == {1: 3, 2: 2, 3: 1} and parse_label_map(None) is None
    assert parse_label_map("1:3,3:1") == {1: 3, 3: 1}
    for bad in ("1-3", "1:7", "lv"):
        with pytest.raises(DataError, match="label map"):
            parse_label_map(bad)


# --------------------------------------------------------------------- failures are one line
def _one_error_line(result, *words):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "Error" in line or "nterrupt" in line]
    assert len(errors) == 1, result.output
    for word in words:
        assert word in errors[0], result.output
    return errors[0]


def test_unwritable_evaluate_output_is_one_line(scored_folder, tmp_path):
    refs, preds, _, _ = scored_folder
    (tmp_path / "file.txt").write_text("a file, not a folder")
    out = tmp_path / "file.txt" / "out"
    result = CliRunner().invoke(main, ["evaluate", "-p", str(preds), "-r", str(refs), "-o", str(out), "--quiet"])
    _one_error_line(result, str(out))


class _FullDisk:
    """A csv writer on a disk that fills up (or a user who presses Ctrl-C) after the header."""

    error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __init__(self, handle, *args, **kwargs):
        self.handle = handle

    def writeheader(self):
        self.handle.write("Name,partial")
        self.handle.flush()

    def writerow(self, row):
        raise self.error


@pytest.mark.parametrize("error,code,words", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), 1, ["acdc_metrics.csv", "no space left on device"]),
    (KeyboardInterrupt(), 130, ["acdc_metrics.csv", "interrupted while writing"])], ids=["full-disk", "interrupt"])
def test_a_failed_write_is_one_line_and_leaves_no_partial_file(scored_folder, monkeypatch, error, code, words):
    import sdnet_tf.apps.evaluation as evaluation

    refs, preds, _, _ = scored_folder
    monkeypatch.setattr(_FullDisk, "error", error)
    monkeypatch.setattr(evaluation.csv, "DictWriter", _FullDisk)
    result = CliRunner().invoke(main, ["evaluate", "-p", str(preds), "-r", str(refs), "--quiet"])
    assert result.exit_code == code
    _one_error_line(result, *words)
    assert not list(preds.glob("*.tmp*")) and not (preds / "acdc_metrics.csv").exists()


def test_unwritable_train_run_directory_is_one_line_before_training(tmp_path):
    (tmp_path / "file.txt").write_text("")
    run = tmp_path / "file.txt" / "run"
    result = CliRunner().invoke(main, ["train", "synthetic", "--set", "model.input_size=32", "--epochs", "1",
                                       "-o", str(run), "--quiet"])
    _one_error_line(result, str(run))


# ------------------------------------------------------------------------------ data folder, quiet
def test_data_folder_above_training_is_found_and_named(tmp_path, caplog):
    training = tmp_path / "ACDC" / "database" / "training"
    write_patient(training, seed=0, number=1)
    with caplog.at_level(logging.INFO, logger="sdnet_tf.data"):
        patients = find_patients(tmp_path / "ACDC")
    assert [p.folder.parent for p in patients] == [training]
    assert f"using {training}" in caplog.text
    assert [p.folder.parent for p in find_patients(tmp_path / "ACDC" / "database")] == [training]


def _cli_subprocess(*args, prelude=""):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "runtime"), env.get("PYTHONPATH", "")])
    script = f"import sys, cli\n{prelude}\nsys.exit(cli.main())"
    return subprocess.run([sys.executable, "-c", script, *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


# a warning logged from inside preprocessing's per-patient loop, while its progress bar is drawn
WARN_IN_THE_BAR = """
import logging
from sdnet_tf.data import acdc
_frame_slices = acdc._frame_slices
def _warning_then_slices(patient, *args, **kwargs):
    logging.getLogger("sdnet_tf.data").warning("a warning while patient%03d is preprocessed", patient.number)
    return _frame_slices(patient, *args, **kwargs)
acdc._frame_slices = _warning_then_slices
"""


def test_commands_print_no_tensorflow_log_lines_by_default():
    result = _cli_subprocess("summary")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "total" in result.stdout
    assert result.stderr.strip() == "", result.stderr


def test_preprocess_prints_no_tensorflow_log_lines_by_default(phantom_cohort_8, tmp_path):
    # stderr is a pipe here, not a terminal: the progress bar is still drawn, and a log line
    # written while it is must start a line of its own, not continue the bar's
    result = _cli_subprocess("preprocess", "--data", phantom_cohort_8, "--set", "model.input_size=32",
                             "--set", f"data.cache_dir={tmp_path / 'cache'}", prelude=WARN_IN_THE_BAR)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "8 patients from" in result.stdout
    lines = re.split(r"[\r\n]", result.stderr)
    noise = [line for line in lines if any(word in line for word in ("absl", "oneDNN", "cuda", "tensorflow/", "TF-TRT"))]
    assert noise == [], result.stderr
    assert any(line.startswith("preprocessing:") for line in lines), result.stderr  # the bar
    warnings = [line for line in lines if "a warning while patient" in line]
    assert len(warnings) == 2 * 8, result.stderr  # ED and ES of each patient
    assert all(re.match(r"\d\d:\d\d:\d\d WARNING sdnet_tf.data: a warning while", w) for w in warnings), warnings


def test_a_full_disk_stops_the_batch_naming_the_output_and_leaves_no_partial_file(cases, tmp_path, monkeypatch):
    import sdnet_infer.io as io

    def full_disk(image, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.nib, "save", full_disk)
    with pytest.raises(OSError) as caught:
        predict_files(cases["plain"], tmp_path / "out", _disc_model(96), size=96, target=2.5)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "out" / "plain_pred.nii.gz")
    assert io.describe_os_error(caught.value).endswith("plain_pred.nii.gz: no space left on device")
    assert list((tmp_path / "out").iterdir()) == []


def test_training_data_with_zero_spacing_is_refused_by_name(tmp_path):
    folder = write_patient(tmp_path / "data", seed=0, number=1)
    path = folder / "patient001_frame01.nii.gz"
    img = nib.load(str(path))
    img.header["pixdim"][1] = 0.0
    nib.save(img, str(path))
    result = CliRunner().invoke(main, ["preprocess", "--data", str(tmp_path / "data"),
                                       "--set", "model.input_size=64", "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{path}: voxel size (0, " in result.output, result.output


# ------------------------------------------------------------------------- defects of the first user test
def test_inputs_with_one_output_name_are_refused_naming_both_and_the_others_go_on(cases, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    img = nib.load(str(cases["plain"]))
    for name in ("x.nii.gz", "x.nii", "y.nii.gz"):
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), str(folder / name))
    records = predict_files(folder, tmp_path / "out", _disc_model(96), size=96, target=2.5)
    by_name = {Path(r["input"]).name: r for r in records}
    assert by_name["y.nii.gz"]["error"] is None
    for name, other in (("x.nii", "x.nii.gz"), ("x.nii.gz", "x.nii")):
        error = by_name[name]["error"]
        assert error and "\n" not in error and str(folder / name) in error and str(folder / other) in error
        assert "x_pred.nii.gz" in error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.json", "y_pred.nii.gz"]


def _oblique(spacing, thickness, degrees=25.0):
    t = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return rotation @ np.diag([-spacing, -spacing, thickness, 1.0])


def test_an_oblique_sform_gives_the_stored_voxel_size_without_float32_noise(tmp_path):
    affine = _oblique(1.5625, 10.0)
    path = save(np.ones((216, 256, 3)), affine, (1.5625, 1.5625, 10.0), tmp_path / "oblique.nii.gz")
    g = read_geometry(path)
    assert g.spacing_from == "sform" and g.spacing == (1.5625, 1.5625, 10.0) and g.warnings == ()
    assert read_volume(path).zooms == (1.5625, 1.5625, 10.0)
    # norms that differ from pixdim are used, rounded to 7 significant digits
    path = save(np.ones((216, 256, 3)), _oblique(1.2, 8.0), (1.0, 1.0, 1.0), tmp_path / "other.nii.gz")
    assert read_geometry(path).spacing == (1.2, 1.2, 8.0)


def test_float_noise_in_the_voxel_size_cannot_move_the_resampled_size_across_a_tie():
    from sdnet_infer.preprocess import resampled_shape

    for n, spacing, target in ((216, 1.5625, 3.0), (40, 0.78125, 2.5), (40, 1.40625, 2.5), (150, 1.5625, 1.25)):
        exact = resampled_shape((n, n), (spacing, spacing), target)
        assert (n * spacing / target) % 1 == 0.5 and exact[0] % 2 == 0  # a tie, rounded to even
        for noisy in (spacing * (1 - 1e-12), spacing * (1 + 1e-12)):  # the geometry reader leaves no more
            assert resampled_shape((n, n), (noisy, noisy), target) == exact, (n, spacing, noisy)


@pytest.mark.parametrize("scale,words", [(1e-3, "in-plane voxel size 0.0015625 x 0.0015625 mm"),
                                         (1e3, "in-plane voxel size 1562.5 x 1562.5 mm")])
def test_implausible_voxel_size_is_refused_naming_the_header_fields(tmp_path, scale, words):
    path = save(np.ones((16, 12, 3)), np.diag([-1.5625 * scale, -1.5625 * scale, 10 * scale, 1.0]),
                (1.5625 * scale, 1.5625 * scale, 10 * scale), tmp_path / "unknown_units.nii.gz", units="unknown")
    with pytest.raises(DataError) as caught:
        read_geometry(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {words}") and "\n" not in message
    assert "the sform's column norms" in message and "xyzt_units 0 (unknown" in message and "0.05-20 mm" in message
    path = save(np.ones((16, 12, 3)), ACDC_AFFINE, (1.5, 1.5, 150.0), tmp_path / "thick.nii.gz", units="mm")
    with pytest.raises(DataError, match=r"thick.nii.gz: slice spacing 150 mm \(from pixdim\[1:4\], xyzt_units 2"):
        read_geometry(path)


def test_the_resampler_refuses_an_absurd_output_size():
    from sdnet_infer.preprocess import preprocess_frame

    with pytest.raises(DataError, match=r"^big: resampling \(256, 216\) pixels of 30 x 30 mm to 1.37 mm would make"):
        preprocess_frame(np.ones((256, 216, 2), np.float32), (30.0, 30.0), source="big")


def test_symlinked_folders_are_walked_once_by_predict_and_evaluate(scored_folder, cases, tmp_path):
    from sdnet_infer.predict import find_inputs

    refs, preds, _, _ = scored_folder
    linked = tmp_path / "linked"
    (linked / "sub").mkdir(parents=True)
    (linked / "patient_a").symlink_to(cases["plain"].parent, target_is_directory=True)
    (linked / "sub" / "loop").symlink_to(linked, target_is_directory=True)  # a loop: walked once
    (linked / "refs").symlink_to(refs, target_is_directory=True)
    found = {str(relative) for _, relative in find_inputs(linked)}
    assert {f"patient_a/{case}_pred.nii.gz" for case in CASES} <= found
    assert not any("loop" in name for name in found)
    result = CliRunner().invoke(main, ["evaluate", "-p", str(preds), "-r", str(linked), "--quiet",
                                       "-o", str(tmp_path / "scores")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "scores" / "summary.json").read_text())["cases"] == 3


def test_predictions_json_gives_shape_spacing_and_slice_axis_in_the_stored_order(frame, cases, tmp_path):
    _, _, spacing, thickness = frame
    records = predict_files(cases["slice_first"], tmp_path / "out", _disc_model(96), size=96, target=2.5)
    stored = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert stored == json.loads(json.dumps(records)) and records[0]["error"] is None
    record = records[0]
    assert record["shape"] == list(nib.load(str(cases["slice_first"])).shape) and record["slice_axis"] == 0
    assert record["spacing"] == pytest.approx([thickness, spacing, spacing], rel=1e-5)
    assert record["orientation"] == "".join(read_geometry(cases["slice_first"]).axcodes)


def test_a_truncated_nii_is_a_one_line_error(cases, tmp_path):
    img = nib.load(str(cases["plain"]))
    path = tmp_path / "trunc.nii"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as caught:
        read_volume(path)
    assert str(caught.value).startswith(f"{path}: cannot read the image") and "\n" not in str(caught.value)
    assert "\n" not in str(DataError("a\n - b")) and str(DataError("a\n - b")) == "a - b"


def test_one_scored_volume_is_singular(scored_folder):
    refs, preds, _, _ = scored_folder
    for case in ("b", "c"):
        (preds / f"{case}_pred.nii.gz").unlink()
    result = CliRunner().invoke(main, ["evaluate", "-p", str(preds), "-r", str(refs), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("1 volume scored: mean 3-D Dice 1.000")


def test_a_nifti2_input_gets_a_nifti2_prediction(cases, tmp_path):
    img = nib.load(str(cases["plain"]))
    two = nib.Nifti2Image(np.asarray(img.dataobj), img.affine)
    two.header.set_qform(None, code=0)
    two.header.set_sform(img.affine, code=2)
    two.header.set_zooms(img.header.get_zooms())
    (tmp_path / "in").mkdir()
    nib.save(two, str(tmp_path / "in" / "two.nii.gz"))
    records = predict_files(tmp_path / "in", tmp_path / "out", _disc_model(96), size=96, target=2.5)
    assert records[0]["error"] is None
    out = nib.load(str(tmp_path / "out" / "two_pred.nii.gz"))
    assert isinstance(out, nib.Nifti2Image) and out.header["sizeof_hdr"] == 540 and out.get_data_dtype() == np.uint8
    assert np.allclose(out.affine, two.affine) and out.header.get_zooms() == two.header.get_zooms()


def test_predict_files_says_how_many_inputs_before_the_first_is_read(frame, tmp_path):
    # a progress bar can show from the start, not only once the first volume is done
    folder, _ = _folder_with_a_lost_voxel_size(frame, tmp_path)
    (folder / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    events = []
    model = _disc_model(96)

    def probabilities(images):
        events.append("segment")
        return model(images)

    predict_files(folder, tmp_path / "out", probabilities, size=96, target=2.5,
                  report=lambda index, total, record: events.append(("report", index, total)),
                  started=lambda total: events.append(("started", total)))
    assert events[0] == ("started", 3), events
    assert [e for e in events if e != "segment"][1:] == [("report", i, 3) for i in (1, 2, 3)]


def _both_forms(path, sform, qform):
    img = nib.Nifti1Image(np.zeros((40, 40, 8), np.int16), sform)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("change, warned", [("same", None), ("turned", "axes up to 90 degrees apart"),
                                            ("moved", "origins 5 mm apart"), ("tiny", None)])
def test_an_sform_and_a_qform_that_disagree_are_named_and_the_sform_is_used(tmp_path, caplog, change, warned):
    sform = np.diag([-1.5, -1.5, 8.0, 1.0])
    qform = sform.copy()
    if change == "turned":  # rows and columns exchanged
        qform[:3, [0, 1]] = qform[:3, [1, 0]]
    elif change == "moved":
        qform[:3, 3] += (3.0, 4.0, 0.0)
    elif change == "tiny":  # a hundredth of a voxel
        qform[0, 3] += 0.015
    with caplog.at_level(logging.WARNING):
        g = read_geometry(_both_forms(tmp_path / f"{change}.nii.gz", sform, qform))
    assert np.allclose(g.affine, sform, atol=1e-5)  # the sform, whatever the qform says
    named = [w for w in g.warnings if "the sform and the qform place the image differently" in w]
    if warned is None:
        assert named == []
    else:
        assert len(named) == 1 and warned in named[0] and named[0].startswith(f"{tmp_path / change}.nii.gz: ")
        assert named[0] in caplog.text
