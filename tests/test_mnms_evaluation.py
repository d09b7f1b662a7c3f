"""evaluate --run and predict --run on a run trained on the four-vendor phantom in the M&Ms layout:
the test patients of vendors A, B (labelled) and C (unlabelled) and the held-out vendor D's,
scored per vendor from the 4-D files, predictions in M&Ms' label values; the scoring path's
golden check (references scored against themselves); and the errors that stop or skip a case."""

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from sdnet_infer.io import DataError, labels_in_convention, parse_label_map
from sdnet_infer.labels import LABEL_CONVENTIONS, LV, MYO, RV
from sdnet_infer.predict import predict_files
from sdnet_tf.apps.evaluation import MNMS_CASE_COLUMNS, score_mnms_predictions
from sdnet_tf.apps.mnms_cases import VENDOR_COLUMNS, prediction_path
from sdnet_tf.apps.train import train_run
from sdnet_tf.config import load_config
from sdnet_tf.data.mnms import find_patients, to_mnms_labels
from sdnet_tf.data.phantom import write_patient
from sdnet_tf.data.preprocess import one_hot, preprocess_frame

ROLES = {"A": "labelled", "B": "labelled", "C": "unlabelled", "D": "test"}
PATIENTS = {"A": 1, "B": 1, "C": 1, "D": 3}  # 3 per vendor: 1 test patient each; D's 3 all held out


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def mnms_run(mnms_cohort_12, tmp_path_factory):
    """A tiny SDNet (32 x 32 at 6 mm) trained for 4 iterations on the 12-patient phantom:
    vendors A and B labelled, C unlabelled, D held out (``sdnet-mnms-phantom-quick``'s roles)."""
    root = tmp_path_factory.mktemp("mnms-run")
    config = load_config("sdnet-mnms-phantom-quick", [
        "model.input_size=32", "model.unet_filters=4", "model.unet_depth=2", "model.segmentor_filters=8",
        "model.discriminator_filters=4", "train.epochs=1", "train.iterations_per_epoch=4", "train.image_summaries=0",
        f"data.path={mnms_cohort_12}", "data.spacing=6.0", "data.resolution_range=[4.278, 7.187]",
        f"data.cache_dir={root / 'cache'}"])
    train_run(config, root / "run", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def evaluated(mnms_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("mnms-evaluation")
    result = CliRunner().invoke(main, ["evaluate", "--run", str(mnms_run), "-o", str(out), "--quiet"])
    return out, result


def test_evaluate_run_scores_the_test_and_held_out_patients_per_vendor(mnms_run, mnms_cohort_12, evaluated):
    out, result = evaluated
    assert result.exit_code == 0, result.output
    data = json.loads((mnms_run / "data.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == []
    expected = sorted(data["test_patients"] + data["held_out_patients"])
    assert summary["run"]["patients"] == expected and summary["run"]["labels"] == "mnms"
    assert summary["patients"] == 6 and summary["cases"] == 12  # ED and ES of each
    assert not set(data["validation_patients"]) & {r["Patient"] for r in _rows(out / "cases.csv")}
    per_vendor = summary["per_vendor"]
    assert list(per_vendor) == ["A", "B", "C", "D"]
    for vendor, entry in per_vendor.items():
        assert entry["role"] == ROLES[vendor] and entry["patients"] == PATIENTS[vendor], (vendor, entry)
        assert entry["cases"] == 2 * PATIENTS[vendor]
        for structure in ("LV", "MYO", "RV", "mean"):
            dice = entry["Dice"][structure]["mean"]
            assert dice is None or 0.0 <= dice <= 1.0
    cases = _rows(out / "cases.csv")
    assert list(cases[0]) == MNMS_CASE_COLUMNS
    vendor_of = {p.code: p.vendor for p in find_patients(mnms_cohort_12)}
    assert all(r["Vendor"] == vendor_of[r["Patient"]] and r["Phase"] in ("ED", "ES") for r in cases)
    assert list(_rows(out / "vendors.csv")[0]) == VENDOR_COLUMNS
    assert "vendor" in result.output and "unlabelled" in result.output  # the table
    # the predictions: 4-D like the references, in M&Ms' label values, ED and ES only
    patients = {p.code: p for p in find_patients(mnms_cohort_12)}
    for code in expected:
        written = nib.load(str(prediction_path(out / "predictions", code)))
        gt = nib.load(str(patients[code].gt))
        assert written.shape == gt.shape and np.allclose(written.affine, gt.affine)
        labels = np.asarray(written.dataobj)
        assert set(np.unique(labels)) <= {0, 1, 2, 3}
        labelled = [t for t in range(labels.shape[-1]) if labels[..., t].any()]
        assert set(labelled) <= {patients[code].ed, patients[code].es}


def test_references_scored_against_themselves_give_dice_one_per_vendor(mnms_cohort_12, tmp_path):
    """The golden check of the scoring path: each reference, copied as a prediction (M&Ms'
    values, 4-D), read back, mapped and scored -> Dice 1 and HD95 0 for every vendor."""
    patients = [p for p in find_patients(mnms_cohort_12) if p.code in ("PH0001", "PH0004", "PH0008")]
    for patient in patients:
        target = prediction_path(tmp_path / "pred", patient.code)
        target.parent.mkdir(parents=True)
        shutil.copy(patient.gt, target)
    summary = score_mnms_predictions(tmp_path / "pred", patients, tmp_path / "out", ROLES)
    assert summary["errors"] == [] and summary["cases"] == 6
    assert summary["per_vendor"]["C"] == {"role": "unlabelled", "patients": 0, "cases": 0}
    for vendor, count in (("A", 1), ("D", 2)):
        entry = summary["per_vendor"][vendor]
        assert entry["patients"] == count
        for structure in ("LV", "MYO", "RV", "mean"):
            assert entry["Dice"][structure]["mean"] == 1.0 and entry["HD95"][structure]["mean"] == 0.0
        assert entry["SliceDice"]["mean"] == 1.0
    # a prediction in ACDC's values is scored as one (LV and RV swapped): the map is applied
    swapped = prediction_path(tmp_path / "pred", "PH0001")
    image = nib.load(str(swapped))
    nib.save(nib.Nifti1Image(to_mnms_labels(np.asarray(image.dataobj)), image.affine, image.header), str(swapped))
    summary = score_mnms_predictions(tmp_path / "pred", patients[:1], tmp_path / "out2", ROLES)
    assert summary["per_vendor"]["A"]["Dice"]["LV"]["mean"] == 0.0 == summary["per_vendor"]["A"]["Dice"]["RV"]["mean"]


def test_label_conventions_round_trip():
    acdc = np.array([0, RV, MYO, LV], np.uint8)
    mnms = labels_in_convention(acdc, "mnms")
    assert mnms.tolist() == [0, 3, 2, 1] and to_mnms_labels(acdc).tolist() == mnms.tolist()
    back = parse_label_map("mnms")  # what a reader of M&Ms files applies
    assert [back.get(int(v), 0) for v in mnms] == acdc.tolist()
    assert np.array_equal(labels_in_convention(acdc, "acdc"), acdc)
    assert LABEL_CONVENTIONS["mnms"][LV] == 1
    with pytest.raises(DataError, match="unknown label convention"):
        labels_in_convention(acdc, "mmwhs")


def test_predict_files_writes_the_chosen_convention(tmp_path):
    """A perfect segmentation of an ACDC-layout phantom frame: written in M&Ms' values, an LV
    voxel of the reference is 1 and an RV voxel 3."""
    folder = write_patient(tmp_path / "cohort", seed=0, number=4)  # 1.59 mm pixels: resampling is exact
    image_path = folder / "patient004_frame01.nii.gz"
    reference = np.asarray(nib.load(str(folder / "patient004_frame01_gt.nii.gz")).dataobj)
    image = nib.load(str(image_path))
    _, masks, _ = preprocess_frame(np.asarray(image.dataobj, np.float32), image.header.get_zooms(),
                                   labels=reference, size=128, target=1.37)
    records = predict_files(image_path, tmp_path / "mnms", lambda slices: one_hot(masks), size=128, labels="mnms")
    assert records[0]["error"] is None and records[0]["labels"] == "mnms"
    written = np.asarray(nib.load(records[0]["output"]).dataobj)
    assert np.array_equal(written, to_mnms_labels(reference))
    assert np.all(written[reference == LV] == 1) and np.all(written[reference == RV] == 3)
    assert records[0]["voxels"]["1"] == int((reference == LV).sum())


def test_predict_run_writes_mnms_labels_and_says_so(mnms_run, mnms_cohort_12, evaluated, tmp_path):
    """predict --run on a held-out patient's 4-D cine: M&Ms' values, and at ED exactly what
    evaluate --run wrote for that frame (the same model, reading and restoring)."""
    out, _ = evaluated
    patient = next(p for p in find_patients(mnms_cohort_12) if p.code == "PH0004")
    result = CliRunner().invoke(main, ["predict", "-i", str(patient.image), "-o", str(tmp_path / "pred"),
                                       "--run", str(mnms_run), "--no-qc", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "M&Ms' (1 LV, 2 MYO, 3 RV)" in result.output
    records = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert records[0]["labels"] == "mnms"
    predicted = np.asarray(nib.load(str(tmp_path / "pred" / "PH0004_sa_pred.nii.gz")).dataobj)
    evaluated_labels = np.asarray(nib.load(str(prediction_path(out / "predictions", "PH0004"))).dataobj)
    assert np.array_equal(predicted[..., patient.ed], evaluated_labels[..., patient.ed])


def test_a_missing_data_folder_is_one_line_and_a_bad_case_is_skipped(mnms_run, mnms_cohort_12, tmp_path):
    moved = tmp_path / "moved-run"
    shutil.copytree(mnms_run, moved)
    data = json.loads((moved / "data.json").read_text())
    data["data"] = str(tmp_path / "gone")
    (moved / "data.json").write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["evaluate", "--run", str(moved), "-o", str(tmp_path / "a"), "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{tmp_path / 'gone'}: the run's data folder is not there; pass it with --data" in result.output
    # --data: a copy of the cohort whose CSV lost the row of one of the two validation patients
    lost, kept = data["validation_patients"]
    cohort = tmp_path / "cohort"
    shutil.copytree(mnms_cohort_12, cohort)
    csv_path = next(cohort.glob("*.csv"))
    csv_path.write_text("".join(line for line in csv_path.read_text().splitlines(keepends=True)
                                if f",{lost}," not in line))
    result = CliRunner().invoke(main, ["evaluate", "--run", str(moved), "-o", str(tmp_path / "b"), "--quiet",
                                       "--data", str(cohort), "--subset", "validation"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "1 patient or frame could not be scored" in result.output
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert len(summary["errors"]) == 1 and f"no row for {lost} in {csv_path}" in summary["errors"][0]
    assert summary["patients"] == 1 and summary["run"]["patients"] == sorted([lost, kept])
    assert sum(entry["patients"] for entry in summary["per_vendor"].values()) == 1
