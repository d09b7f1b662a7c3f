"""evaluate -p/-r on tiny synthetic label volumes (24 x 24 x 3): file names in any case, the
same-grid check in mm whatever the header's units, the predictions' label convention, and bad
paths reported in one line."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from sdnet_infer.io import DataError
from support.geometry_cases import save
from sdnet_tf.apps.evaluation import evaluate_folder

SPACING, THICKNESS = 1.5, 8.0
AFFINE = np.diag([-SPACING, -SPACING, THICKNESS, 1.0])
MNMS = np.array([0, 3, 2, 1], np.uint8)  # ACDC (1 RV, 2 MYO, 3 LV) <-> M&Ms (1 LV, 2 MYO, 3 RV)


def _labels():
    """A heart-like mask in ACDC's values: an LV disc (3) in a myocardial ring (2), an RV beside (1)."""
    y, x = np.mgrid[:24, :24]
    r = np.hypot(y - 12, x - 14)
    slice_ = np.zeros((24, 24), np.uint8)
    slice_[r < 7] = 2
    slice_[r < 4.5] = 3
    slice_[(np.hypot(y - 12, x - 3) < 5) & (r >= 7)] = 1
    return np.stack([slice_, slice_, np.roll(slice_, 1, axis=0)], axis=-1)


def _one_error_line(result, *words):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and "Usage:" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for word in words:
        assert word in lines[0], result.output
    return lines[0]


def _evaluate(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args), "--quiet"])


# ------------------------------------------------------------------------------ file names
def test_nifti_files_are_found_whatever_the_case_of_their_extension(tmp_path):
    labels = _labels()
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    refs.mkdir(), preds.mkdir()
    # nibabel writes (and reads) a mixed-case extension as its lower case, so those files are
    # renamed after writing: "preds/b_PRED.Nii" and "preds/c_pred.Nii.Gz" were found and then
    # failed as "No such file or directory: b_PRED.nii"
    for name in ("refs/a_gt.NII.GZ", "preds/a_pred.NII.GZ", "refs/b_gt.nii", "preds/b_PRED.Nii", "refs/c_gt.nIi",
                 "preds/c_pred.Nii.Gz"):
        stored = name.rsplit(".", 2 if name.lower().endswith(".gz") else 1)[0] + (
            ".nii.gz" if name.lower().endswith(".gz") else ".nii")
        save(labels, AFFINE, (SPACING, SPACING, THICKNESS), tmp_path / stored, dtype=np.uint8)
        (tmp_path / stored).rename(tmp_path / name)
    summary = evaluate_folder(preds, refs, tmp_path / "out")
    assert summary["cases"] == 3 and summary["errors"] == [] and summary["dice_mean_3d"]["mean"] == 1.0


@pytest.mark.parametrize("twins", [("preds/x_pred.nii.gz", "preds/x_pred.nii"), ("refs/x_gt.nii.gz", "refs/x_gt.nii")])
def test_two_files_of_one_case_refuse_that_case_and_the_others_are_scored(tmp_path, twins):
    # they had aborted the whole batch: nothing scored
    labels = _labels()
    (tmp_path / "refs").mkdir(), (tmp_path / "preds").mkdir()
    for name in ("refs/x_gt.nii.gz", "preds/x_pred.nii.gz", "refs/y_gt.nii.gz", "preds/y_pred.nii.gz", *twins):
        save(labels, AFFINE, (SPACING, SPACING, THICKNESS), tmp_path / name, dtype=np.uint8)
    summary = evaluate_folder(tmp_path / "preds", tmp_path / "refs", tmp_path / "out")
    assert summary["cases"] == 1 and summary["dice_mean_3d"]["mean"] == 1.0
    (error,) = summary["errors"]
    text = json.dumps(error)
    assert "case 'x' also at" in text and "none of them is scored" in text
    assert all(twin.split("/")[1] in text for twin in twins)


def test_a_reference_in_mnms_values_read_as_acdc_is_scored_with_a_warning(tmp_path):
    # LV and RV scored against each other (Dice 0.000 / 0.0001) without a word
    from sdnet_tf.apps.evaluation import enclosed_by_myo

    labels = _labels()
    shares = enclosed_by_myo(labels)
    assert shares[3] == 1.0 and shares[1] < 0.5  # the LV inside the ring, the RV beside it
    (tmp_path / "refs").mkdir(), (tmp_path / "preds").mkdir()
    save(MNMS[labels], AFFINE, (SPACING, SPACING, THICKNESS), tmp_path / "refs/x_gt.nii.gz", dtype=np.uint8)
    save(labels, AFFINE, (SPACING, SPACING, THICKNESS), tmp_path / "preds/x_pred.nii.gz", dtype=np.uint8)
    summary = evaluate_folder(tmp_path / "preds", tmp_path / "refs", tmp_path / "out")
    (warning,) = summary["warnings"]
    assert warning.startswith(f"{tmp_path / 'refs/x_gt.nii.gz'}: label 1 borders MYO on 100% of its edge")
    assert "give --label-map mnms" in warning
    mapped = evaluate_folder(tmp_path / "preds", tmp_path / "refs", tmp_path / "out2", label_map={1: 3, 2: 2, 3: 1})
    assert mapped["warnings"] == [] and mapped["dice_mean_3d"]["mean"] == 1.0


# ------------------------------------------------------------------------------ the same grid, in mm
def _rotated(affine, degrees):
    """``affine`` turned by ``degrees`` about the z axis (the origin kept)."""
    t = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    out = affine.copy()
    out[:3, :3] = rotation[:3, :3] @ affine[:3, :3]
    return out


def test_a_prediction_off_its_references_grid_in_a_metre_header_is_refused_naming_both_files(tmp_path):
    """0.9 mm is 0.0009 in a metre header: under a tolerance in the file's own units it passed."""
    labels, metre = _labels(), 1e-3
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    refs.mkdir(), preds.mkdir()
    true = AFFINE.copy()
    true[:3, 3] = (120.0, 80.0, -40.0)  # mm
    shifted = true.copy()
    shifted[0, 3] += 0.9
    for case, pred_affine in (("same", true), ("shift", shifted), ("turned", _rotated(true, 20))):
        for folder, suffix, affine in ((refs, "gt", true), (preds, "pred", pred_affine)):
            stored = affine.copy()
            stored[:3] *= metre  # the whole grid written in metres
            save(labels, stored, (SPACING * metre, SPACING * metre, THICKNESS * metre),
                 folder / f"{case}_{suffix}.nii.gz", units="meter", dtype=np.uint8)
    result = _evaluate("-p", preds, "-r", refs, "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cases"] == 1 and summary["dice_mean_3d"]["mean"] == 1.0
    errors = sorted(summary["errors"])
    assert len(errors) == 2
    assert errors[0].startswith(f"{preds / 'shift_pred.nii.gz'}: its affine places the volume up to 0.9 mm (0.6 "
                                f"voxels) away from {refs / 'shift_gt.nii.gz'}'s")
    assert errors[1].startswith(f"{preds / 'turned_pred.nii.gz'}: its affine places the volume up to")
    assert f"voxels) away from {refs / 'turned_gt.nii.gz'}'s" in errors[1]
    failed = [line for line in result.output.splitlines() if line.startswith("FAILED")]
    assert sorted(failed) == [f"FAILED {e}" for e in errors], result.output  # one line each


def test_a_micron_header_pair_with_float32_noise_is_on_the_same_grid(tmp_path):
    """One grid (ACDC's orientation tilted 10 degrees and turned 1) stored as the reference's sform and
    as the prediction's qform, in microns: the quaternion's float32 precision moves the
    slice column by 0.005 microns, above 1e-3 in the file's own units, 6e-7 of the column."""
    import nibabel as nib

    labels, micron = _labels(), 1e3
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    refs.mkdir(), preds.mkdir()
    t = np.deg2rad(10)
    tilt = np.eye(4)
    tilt[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]  # 10 degrees about x
    grid = _rotated(tilt @ AFFINE, 1)
    grid[:3, 3] = (-123.4567, 98.7654, -54.3211)  # mm
    grid[:3] *= micron
    for path, code in ((refs / "a_gt.nii.gz", "sform"), (preds / "a_pred.nii.gz", "qform")):
        img = nib.Nifti1Image(labels, grid)
        img.header.set_xyzt_units(xyz="micron")
        img.set_qform(grid, code=1 if code == "qform" else 0)  # the image's methods, so that saving keeps the codes
        img.set_sform(grid if code == "sform" else None, code=2 if code == "sform" else 0)
        nib.save(img, str(path))
        assert (nib.load(str(path)).header["sform_code"] > 0) == (code == "sform")
    summary = evaluate_folder(preds, refs, tmp_path / "out")
    assert summary["errors"] == [] and summary["cases"] == 1 and summary["dice_mean_3d"]["mean"] == 1.0


# ------------------------------------------------------------------------------ the predictions' labels
def _folders(tmp_path, pred_values=None, ref_values=None, record=None):
    """One case whose prediction (the reference moved one pixel) and reference are stored with
    ``*_values`` (a lookup from ACDC's values, e.g. ``MNMS``), and a ``predictions.json`` whose
    record names ``record`` as ``predict`` writes it (none when None)."""
    labels = _labels()
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    refs.mkdir(parents=True), preds.mkdir()
    pred = np.roll(labels, 1, axis=1)
    for data, values, path in ((labels, ref_values, refs / "a_gt.nii.gz"),
                               (pred, pred_values, preds / "a_pred.nii.gz")):
        save(data if values is None else values[data], AFFINE, (SPACING, SPACING, THICKNESS), path, dtype=np.uint8)
    if record is not None:
        (preds / "predictions.json").write_text(json.dumps(
            [{"input": "a.nii.gz", "output": str(preds / "a_pred.nii.gz"), "error": None, "labels": record}]))
    return preds, refs


def _scores(out):
    summary = json.loads((out / "summary.json").read_text())
    return {c: summary["per_class"][c]["all"] for c in ("LV", "RV", "MYO")}, summary["labels"]


def test_predictions_in_mnms_labels_score_as_the_same_masks_in_acdc_labels(tmp_path):
    preds, refs = _folders(tmp_path / "acdc")
    result = _evaluate("-p", preds, "-r", refs, "-o", tmp_path / "acdc-out")
    assert result.exit_code == 0, result.output
    expected, labels = _scores(tmp_path / "acdc-out")
    assert labels == {"predictions": "acdc", "predictions_from": "default", "references": "acdc"}
    assert 0.3 < expected["LV"]["Dice"]["mean"] < 0.95 and expected["LV"] != expected["RV"]  # a swap would show

    # as predict writes them for a run trained on M&Ms: M&Ms' values, and predictions.json says so
    preds, refs = _folders(tmp_path / "recorded", pred_values=MNMS, record="mnms")
    result = _evaluate("-p", preds, "-r", refs, "-o", tmp_path / "recorded-out")
    assert result.exit_code == 0, result.output
    scores, labels = _scores(tmp_path / "recorded-out")
    assert scores == expected
    assert result.output.startswith("predictions read in M&Ms' (1 LV, 2 MYO, 3 RV) convention (")
    assert labels == {"predictions": "mnms", "predictions_from": str(preds / "predictions.json"),
                      "references": "acdc"}

    # both in M&Ms' values, references mapped by --label-map
    preds, refs = _folders(tmp_path / "both", pred_values=MNMS, ref_values=MNMS, record="mnms")
    result = _evaluate("-p", preds, "-r", refs, "-o", tmp_path / "both-out", "--label-map", "mnms")
    assert result.exit_code == 0, result.output
    assert _scores(tmp_path / "both-out") == (
        expected, {"predictions": "mnms", "predictions_from": str(preds / "predictions.json"), "references": "mnms"})

    # no predictions.json: the option says it
    preds, refs = _folders(tmp_path / "given", pred_values=MNMS)
    result = _evaluate("-p", preds, "-r", refs, "-o", tmp_path / "given-out", "--prediction-labels", "MNMS")
    assert result.exit_code == 0, result.output
    assert _scores(tmp_path / "given-out") == (
        expected, {"predictions": "mnms", "predictions_from": "given", "references": "acdc"})


def test_prediction_labels_that_disagree_with_predictions_json_are_one_line(tmp_path):
    preds, refs = _folders(tmp_path, pred_values=MNMS, record="mnms")
    result = _evaluate("-p", preds, "-r", refs, "-o", tmp_path / "out", "--prediction-labels", "acdc")
    _one_error_line(result, str(preds / "predictions.json"), "'mnms'", "'acdc'")
    assert not (tmp_path / "out").exists()
    (preds / "predictions.json").write_text("[{")  # unreadable: the option decides, else an error
    result = _evaluate("-p", preds, "-r", refs, "-o", tmp_path / "out")
    _one_error_line(result, str(preds / "predictions.json"), "--prediction-labels")
    result = _evaluate("-p", preds, "-r", refs, "-o", tmp_path / "out", "--prediction-labels", "mnms")
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------ bad paths, one line
@pytest.mark.parametrize("command", [
    ["evaluate", "-p", "{file}", "-r", "{dir}"],
    ["evaluate", "-p", "{dir}", "-r", "{file}"],
    ["evaluate", "-p", "{dir}", "-r", "{dir}", "-o", "{file}"],
    ["predict", "-i", "{dir}", "-o", "{file}", "--run", "{dir}"],
    ["export", "{dir}", "-o", "{file}"],
    ["phantom", "{file}"],
], ids=["evaluate-p", "evaluate-r", "evaluate-o", "predict-o", "export-o", "phantom"])
def test_a_file_given_for_a_folder_is_one_line_naming_it(tmp_path, command):
    (tmp_path / "file.nii.gz").write_text("a file")
    args = [a.format(file=tmp_path / "file.nii.gz", dir=tmp_path) for a in command]
    result = CliRunner().invoke(main, args)
    line = _one_error_line(result, f"{tmp_path / 'file.nii.gz'}: a file, not a folder")
    assert result.exit_code == 1 and line.startswith(f"Error: {tmp_path / 'file.nii.gz'}: "), line


def test_a_symbolic_link_loop_given_for_a_folder_is_named_as_one(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    result = _evaluate("-p", tmp_path / "loop", "-r", tmp_path)
    _one_error_line(result, f"{tmp_path / 'loop'}: a symbolic link loop")
    assert result.exit_code == 1
    with pytest.raises(DataError, match=r"loop: a symbolic link loop$"):
        evaluate_folder(tmp_path / "loop", tmp_path)
    with pytest.raises(DataError, match=r"afile: a file, not a folder$"):
        (tmp_path / "afile").write_text("")
        evaluate_folder(tmp_path, tmp_path / "afile")


def test_a_sub_folder_of_predicts_output_reads_the_list_above_it(tmp_path):
    """Scoring one vendor's or patient's folder (-p OUT/vendorA): predict wrote OUT/predictions.json."""
    preds, refs = _folders(tmp_path, pred_values=MNMS)
    sub = preds / "vendorA"
    sub.mkdir()
    (preds / "a_pred.nii.gz").rename(sub / "a_pred.nii.gz")
    (preds / "predictions.json").write_text(json.dumps(
        [{"input": "a.nii.gz", "output": str(sub / "a_pred.nii.gz"), "error": None, "labels": "mnms"},
         {"input": "b.nii.gz", "output": None, "error": "b.nii.gz: no such file", "labels": "mnms"}]))
    result = _evaluate("-p", sub, "-r", refs, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert _scores(tmp_path / "out")[1] == {"predictions": "mnms", "predictions_from": str(preds / "predictions.json"),
                                            "references": "acdc"}


def test_the_default_convention_is_said_and_one_list_recording_two_is_named_once(tmp_path):
    preds, refs = _folders(tmp_path)
    result = CliRunner().invoke(main, ["evaluate", "-p", str(preds), "-r", str(refs), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "predictions read in ACDC's (1 RV, 2 MYO, 3 LV) convention: no predictions.json" in result.output
    (preds / "predictions.json").write_text(json.dumps(
        [{"output": "x", "labels": "acdc"}, {"output": "y", "labels": "mnms"}]))
    line = _one_error_line(_evaluate("-p", preds, "-r", refs, "-o", tmp_path / "out2"))
    assert line == (f"Error: {preds / 'predictions.json'}: records predictions in both 'acdc' and 'mnms' labels; "
                    "score each convention's predictions separately")


def test_an_acdc_reference_and_the_same_labels_written_by_an_itk_tool_are_one_grid(tmp_path):
    """ACDC stores diag(-1, -1, 1) with the voxel size in pixdim; ITK-based tools (nnU-Net) write
    the same grid with the size in the affine. A shift under a tenth of a voxel along any axis
    (half a millimetre across 8 mm slices) is the same grid; half a voxel is not."""
    labels = _labels()
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    refs.mkdir(), preds.mkdir()
    save(labels, np.diag([-1.0, -1.0, 1.0, 1.0]), (SPACING, SPACING, THICKNESS), refs / "a_gt.nii.gz", dtype=np.uint8)
    save(labels, AFFINE, (SPACING, SPACING, THICKNESS), preds / "a_pred.nii.gz", dtype=np.uint8)
    for case, shift in (("b", (0.0, 0.0, 0.05 * THICKNESS)), ("c", (0.5 * SPACING, 0.0, 0.0))):
        save(labels, np.diag([-1.0, -1.0, 1.0, 1.0]), (SPACING, SPACING, THICKNESS), refs / f"{case}_gt.nii.gz",
             dtype=np.uint8)
        moved = AFFINE.copy()
        moved[:3, 3] = shift
        save(labels, moved, (SPACING, SPACING, THICKNESS), preds / f"{case}_pred.nii.gz", dtype=np.uint8)
    summary = evaluate_folder(preds, refs, tmp_path / "out")
    assert summary["cases"] == 2  # a (ITK-style) and b (a twentieth of a slice)
    assert len(summary["errors"]) == 1 and "c_pred.nii.gz: its affine places the volume up to 0.75 mm" in summary["errors"][0]


def test_when_no_case_can_be_scored_no_output_folder_is_left_behind(tmp_path):
    labels = _labels()
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    refs.mkdir(), preds.mkdir()
    save(labels, AFFINE, (SPACING, SPACING, THICKNESS), preds / "lonely_pred.nii.gz", dtype=np.uint8)
    result = _evaluate("-p", preds, "-r", refs, "-o", tmp_path / "out" / "scores")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "lonely_pred.nii.gz" in result.output
    assert not (tmp_path / "out").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made stays, empty or not
    assert _evaluate("-p", preds, "-r", refs, "-o", tmp_path / "kept").exit_code == 1
    assert (tmp_path / "kept").is_dir()


@pytest.mark.parametrize("quiet", [True, False])
def test_a_case_that_fails_is_named_once_when_it_was_the_only_one(tmp_path, quiet):
    labels = _labels()
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    refs.mkdir(), preds.mkdir()
    save(labels, AFFINE, (SPACING, SPACING, THICKNESS), preds / "patient001_frame01_pred.nii.gz", dtype=np.uint8)
    save(labels[:20], AFFINE, (SPACING, SPACING, THICKNESS), refs / "patient001_frame01_gt.nii.gz", dtype=np.uint8)
    args = ["evaluate", "-p", str(preds), "-r", str(refs), "-o", str(tmp_path / "out")] + (["--quiet"] if quiet else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.count("patient001_frame01_pred.nii.gz") == 1, result.output
    assert "no case could be scored" in result.output


def test_cases_without_any_structure_are_scored_with_an_undefined_dice_not_a_traceback(tmp_path):
    # an all-background prediction of an all-background reference: Dice is 0 / 0
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    refs.mkdir(), preds.mkdir()
    empty = np.zeros((24, 24, 3), np.uint8)
    save(empty, AFFINE, (SPACING, SPACING, THICKNESS), refs / "patient001_frame01_gt.nii.gz", dtype=np.uint8)
    save(empty, AFFINE, (SPACING, SPACING, THICKNESS), preds / "patient001_frame01_pred.nii.gz", dtype=np.uint8)
    result = _evaluate("-p", preds, "-r", refs, "-o", tmp_path / "out")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "mean 3-D Dice undefined" in result.output


def test_a_reference_without_labels_is_scored_with_a_warning_naming_it(tmp_path, caplog):
    """An all-background ``_gt`` scores Dice 0 for every structure predicted: most likely the wrong
    file, so it is named on stderr and in the summary, and the case is still scored."""
    labels = _labels()
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    refs.mkdir(), preds.mkdir()
    for case, reference in (("a", labels), ("empty", np.zeros_like(labels))):
        save(reference, AFFINE, (SPACING, SPACING, THICKNESS), refs / f"{case}_gt.nii.gz", dtype=np.uint8)
        save(labels, AFFINE, (SPACING, SPACING, THICKNESS), preds / f"{case}_pred.nii.gz", dtype=np.uint8)
    summary = evaluate_folder(preds, refs, tmp_path / "out")
    warning = (f"{refs / 'empty_gt.nii.gz'}: the reference has no labels (every voxel is background); "
               "empty_pred.nii.gz is scored against it (Dice 0 for any structure it predicts, undefined for the others)")
    assert summary["cases"] == 2 and summary["errors"] == [] and summary["warnings"] == [warning]
    assert warning in caplog.text
    a = evaluate_folder(preds, refs, tmp_path / "out2")  # the warning is the file's, once per run
    assert a["warnings"] == [warning]


def test_a_prediction_of_one_time_point_stored_4d_is_scored_against_its_3d_reference(tmp_path):
    # predict keeps a 4-D input of one time point 4-D (X, Y, Z, 1); evaluate refused it as "4-D,
    # expected 3-D"; a 4-D file of two time points is still refused
    labels = _labels()
    (tmp_path / "refs").mkdir(), (tmp_path / "preds").mkdir()
    for case, prediction in (("one", labels[..., None]), ("two", np.stack([labels, labels], -1))):
        save(labels, AFFINE, (SPACING, SPACING, THICKNESS), tmp_path / "refs" / f"{case}_gt.nii.gz", dtype=np.uint8)
        save(prediction, AFFINE, (SPACING, SPACING, THICKNESS, 1.0), tmp_path / "preds" / f"{case}_pred.nii.gz",
             dtype=np.uint8)
    summary = evaluate_folder(tmp_path / "preds", tmp_path / "refs", tmp_path / "out")
    assert summary["cases"] == 1 and summary["dice_mean_3d"]["mean"] == 1.0
    (error,) = summary["errors"]
    assert "two_pred.nii.gz" in json.dumps(error) and "4-D" in json.dumps(error)
