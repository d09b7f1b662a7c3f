"""Evaluation, figures, latent analysis and the run report, end to end on a tiny phantom run,
plus the perfect-prediction round trip through the un-cropping path and the file writer."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from sdnet_infer.predict import predict_files
from sdnet_tf.config import load_config
from sdnet_tf.data.phantom import write_cohort, write_patient
from sdnet_tf.data.preprocess import one_hot, preprocess_frame
from sdnet_tf.apps.evaluation import CASE_COLUMNS, SLICE_COLUMNS, evaluate_folder, evaluate_run
from sdnet_tf.apps.figures import STEPS, arithmetic_variants, decode, decompose, step_correlation, traversal
from sdnet_tf.apps.latent import analyse_run, capacity, style_classifier
from sdnet_tf.metrics.clinical import CLINICAL_INDICES
from sdnet_tf.metrics.overlap import ACDC_COLUMNS
from sdnet_tf.apps.report import build_report
from sdnet_tf.apps.train import train_run

SPACING = 5.0  # 32 pixels of 5 mm hold the whole phantom heart


def _header(path):
    with open(path, newline="") as handle:
        return next(csv.reader(handle))


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("phantom"), patients=6, seed=0)


@pytest.fixture(scope="module")
def trained_run(cohort, tmp_path_factory):
    """A tiny SDNet (32 x 32 at 5 mm) with the LV-volume head, trained for 6 iterations on a
    6-patient phantom cohort."""
    root = tmp_path_factory.mktemp("runs")
    config = load_config(None, [
        "data.dataset=acdc", f"data.path={cohort}", f"data.spacing={SPACING}", f"data.cache_dir={root / 'cache'}",
        "model.input_size=32", "model.unet_filters=4", "model.unet_depth=2", "model.segmentor_filters=8",
        "model.discriminator_filters=4", "model.lv_volume_head=true", "train.iterations_per_epoch=3", "train.epochs=2",
        "train.image_summaries=0", "train.jit_compile=false"])
    run = root / "run"
    train_run(config, run, progress=False)
    return run


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    return out, evaluate_run(trained_run, out)


def test_evaluate_run_writes_the_documented_tables(trained_run, evaluated):
    out, summary = evaluated
    description = json.loads((trained_run / "data.json").read_text())
    assert description["orientation"] == "LPS"  # the orientation predict and export bring inputs into
    splits = description["splits"][0]
    assert summary["run"]["patients"] == splits["test"] and summary["patients"] == len(splits["test"])
    assert summary["cases"] == 2 * len(splits["test"])  # ED and ES
    assert _header(out / "acdc_metrics.csv") == ACDC_COLUMNS
    assert _header(out / "cases.csv") == CASE_COLUMNS
    assert _header(out / "slices.csv") == SLICE_COLUMNS
    clinical_header = _header(out / "clinical.csv")
    assert clinical_header[0] == "Patient" and {f"{i} pred" for i in CLINICAL_INDICES} <= set(clinical_header)
    rows = _rows(out / "cases.csv")
    assert {r["Phase"] for r in rows} == {"ED", "ES"}
    for row in rows:
        for cls in ("LV", "RV", "MYO"):
            assert 0.0 <= float(row[f"Dice {cls}"]) <= 1.0 or row[f"Dice {cls}"] == "nan"
    written = json.loads((out / "summary.json").read_text())
    assert set(written["per_class"]) == {"LV", "RV", "MYO"}
    assert set(written["per_class"]["LV"]) == {"all", "ED", "ES"}
    assert set(written["per_class"]["LV"]["ED"]) == {"Dice", "Volume", "Err", "HD", "HD95", "ASSD", "SliceDice"}
    assert set(written["clinical"]) == set(CLINICAL_INDICES)
    assert written["validity_percent"]["Valid7 ref"] == 100.0  # phantom references are anatomically valid
    predicted = sorted(p.name for p in (out / "predictions").rglob("*_pred.nii.gz"))
    assert len(predicted) == summary["cases"]


def _perfect(volume, labels, spacing):
    """A probabilities function that returns the one-hot preprocessed reference of this frame."""
    _, masks, _ = preprocess_frame(volume, spacing, labels=labels, size=128, target=1.37)

    def probabilities(slices):
        assert slices.shape[0] == masks.shape[0]
        return one_hot(masks)

    return probabilities


def test_perfect_prediction_round_trips_and_scores_perfectly(tmp_path):
    """Coarser than 1.37 mm, so resampling and un-cropping give back the labels exactly."""
    folder = write_patient(tmp_path / "cohort", seed=0, number=4)  # 1.59 mm pixels
    image_path = folder / "patient004_frame01.nii.gz"
    reference = nib.load(str(folder / "patient004_frame01_gt.nii.gz"))
    labels = np.asarray(reference.dataobj)
    image = nib.load(str(image_path))
    volume = np.asarray(image.dataobj, np.float32)
    out = tmp_path / "pred"
    records = predict_files(image_path, out, _perfect(volume, labels, image.header.get_zooms()), size=128)
    assert records[0]["error"] is None
    written = nib.load(str(out / "patient004_frame01_pred.nii.gz"))
    assert np.array_equal(np.asarray(written.dataobj), labels)
    assert written.shape == image.shape and np.allclose(written.affine, image.affine)
    assert written.header.get_zooms() == image.header.get_zooms()
    assert written.get_data_dtype() == np.uint8

    summary = evaluate_folder(out, folder)
    row = _rows(out / "cases.csv")[0]
    assert row["Phase"] == "ED" and row["Patient"] == "patient004"
    for cls in ("LV", "RV", "MYO"):
        assert float(row[f"Dice {cls}"]) == 1.0
        assert float(row[f"HD {cls}"]) == 0.0 and float(row[f"ASSD {cls}"]) == 0.0
        assert float(row[f"Err {cls}(ml)"]) == 0.0
        assert summary["per_class"][cls]["all"]["SliceDice"]["mean"] == 1.0
    assert summary["validity_percent"]["Valid7 pred"] == summary["validity_percent"]["Valid7 ref"] == 100.0


def test_evaluate_reports_a_missing_reference_and_scores_the_others(tmp_path):
    folder = write_patient(tmp_path / "cohort", seed=0, number=4)
    preds = tmp_path / "pred"
    preds.mkdir()
    for gt in folder.glob("*_gt.nii.gz"):  # the references themselves, as predictions
        (preds / gt.name.replace("_gt", "_pred")).write_bytes(gt.read_bytes())
    (preds / "patient999_frame01_pred.nii.gz").write_bytes((folder / "patient004_frame01_gt.nii.gz").read_bytes())
    result = CliRunner().invoke(main, ["evaluate", "-p", str(preds), "-r", str(folder), "--quiet"])
    assert result.exit_code == 1, result.output
    summary = json.loads((preds / "summary.json").read_text())
    assert summary["cases"] == 2 and len(summary["errors"]) == 1 and "patient999" in summary["errors"][0]
    assert summary["dice_mean_3d"]["mean"] == 1.0
    clinical = _rows(preds / "clinical.csv")  # ED and ES of patient 4, named by its Info.cfg
    assert len(clinical) == 1 and float(clinical[0]["LV_EF pred"]) == float(clinical[0]["LV_EF ref"]) > 0


def test_a_data_folder_given_that_is_not_there_is_named_and_a_failed_evaluation_leaves_no_folder(tmp_path):
    # --data was given: "pass it with --data" would send the user round in a circle
    from sdnet_tf.data.arrays import DataError
    from sdnet_tf.inference import run_cohort

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "data.json").write_text(json.dumps({"dataset": "acdc", "data": str(tmp_path / "gone"),
                                                            "splits": [{}, {}, {}], "split": 0}))
    with pytest.raises(DataError, match="gone: the run's data folder is not there; pass it with --data"):
        run_cohort(tmp_path / "run")
    with pytest.raises(DataError, match=r"elsewhere \(--data\): no such folder; give the folder of the run's"):
        run_cohort(tmp_path / "run", tmp_path / "elsewhere")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match=r"afile \(--data\): a file, not a folder"):
        run_cohort(tmp_path / "run", tmp_path / "afile")
    assert run_cohort(tmp_path / "run", tmp_path)[0] == tmp_path
    # a run that cannot be evaluated leaves no empty output folder behind (ACDC and M&Ms runs)
    for dataset in ("acdc", "mnms"):
        (tmp_path / "run" / "data.json").write_text(json.dumps({"dataset": dataset, "data": str(tmp_path)}))
        with pytest.raises(DataError, match="no config.yaml"):
            evaluate_run(tmp_path / "run", tmp_path / f"out-{dataset}")
        assert not (tmp_path / f"out-{dataset}").exists()


def test_step_correlation_and_traversal_layout(trained_run):
    linear = STEPS[:, None, None] * np.arange(1, 5, dtype=float).reshape(1, 2, 2)  # intensity grows with z
    assert np.allclose(step_correlation(linear), 1.0)
    assert np.allclose(step_correlation(-linear), -1.0)
    assert np.all(step_correlation(np.ones((7, 2, 2))) == 0.0)  # constant pixels: no correlation
    from sdnet_tf.inference import load_run

    model, _ = load_run(trained_run)
    image = np.random.default_rng(0).uniform(-1, 1, (32, 32, 1)).astype(np.float32)
    grid = traversal(model, image)
    assert grid.shape == (model.nz, len(STEPS), 32, 32)
    anatomy, mean, _ = decompose(model, image[None])
    z = mean.copy()
    z[0, 2] = STEPS[5]  # row 2, step 5: dimension 2 at +2, the others at the posterior mean
    assert np.allclose(grid[2, 5], decode(model, anatomy, z)[0], atol=1e-5)


def test_arithmetic_variants_edit_the_right_channels():
    anatomy = np.zeros((16, 16, 4), np.float32)
    anatomy[4:8, 4:8, 2] = 1  # on the heart
    anatomy[0:2, 0:2, 0] = 1  # elsewhere
    anatomy[8:10, 4:8, 1] = 1  # partly on the heart
    labels = np.zeros((16, 16), np.uint8)
    labels[4:9, 4:8] = 3  # all of s2, half of s1, none of s0
    variants = dict(arithmetic_variants(anatomy, labels, shift=3))
    assert np.array_equal(variants["original"], anatomy)
    assert np.array_equal(variants["s2 moved"][..., 2], np.roll(anatomy[..., 2], (3, 3), (0, 1)))
    assert np.array_equal(variants["s2 <-> s1"][..., 2], anatomy[..., 1])
    assert variants["s2 removed"][..., 2].sum() == 0 and variants["s2 removed"][..., 0].sum() == 4
    assert sorted(variants["shuffled"].sum((0, 1))) == sorted(anatomy.sum((0, 1)))


def test_figures_cli_writes_every_figure(trained_run, cohort, tmp_path):
    image = cohort / "patient002" / "patient002_frame01.nii.gz"
    result = CliRunner().invoke(main, ["figures", str(trained_run), "-o", str(tmp_path), "-i", f"{image}:3",
                                       "-i", str(image)])
    assert result.exit_code == 0, result.output
    for name in ("anatomy_channels", "reconstructions", "z_traversal", "swaps", "anatomy_arithmetic",
                 "segmentation"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    bad = CliRunner().invoke(main, ["figures", str(trained_run), "-o", str(tmp_path), "-i", f"{image}:99"])
    assert bad.exit_code == 1 and "slice 99" in bad.output


def test_capacity_and_style_classifier_golden():
    logvars = np.log(np.array([[1.0, 0.01], [1.0, 0.03]]))
    assert np.allclose(capacity(logvars), [1.0, 0.02])
    rng = np.random.default_rng(0)
    centres = {"a": [3, 0], "b": [-3, 0], "c": [0, 3]}
    labels = np.array(list("aaabbbbccc") * 4)
    z = np.array([centres[k] for k in labels]) + rng.normal(0, 0.3, (len(labels), 2))
    result = style_classifier(z[:20], labels[:20], z[20:], labels[20:])
    assert result["accuracy"] == 1.0 and result["classes"] == ["a", "b", "c"]
    assert result["chance"] == pytest.approx(np.mean(labels[20:] == "b"))  # b is the commonest training label
    noise = style_classifier(rng.normal(size=(20, 2)), labels[:20], rng.normal(size=(20, 2)), labels[20:])
    assert noise["accuracy"] < 0.8  # nothing to learn from noise


def test_latent_analysis_and_report(trained_run, evaluated, tmp_path):
    results = analyse_run(trained_run, tmp_path / "latent")
    assert results["label"] == "scanner style" and len(results["capacity"]["mean_posterior_variance"]) == 8
    assert 0.0 <= results["classifier"]["accuracy"] <= 1.0
    assert json.loads((tmp_path / "latent" / "latent.json").read_text())["nz"] == 8
    out, _ = evaluated
    report_dir = tmp_path / "report"
    (report_dir / "evaluation").mkdir(parents=True)
    for name in ("summary.json", "cases.csv"):  # reuse the evaluation instead of predicting again
        (report_dir / "evaluation" / name).write_bytes((out / name).read_bytes())
    md, page = build_report(trained_run, report_dir)
    text = md.read_text()
    for heading in ("## Run", "## Segmentation metrics", "## Figures", "## What z holds", "## Reproduce"):
        assert heading in text
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert len(links) >= 8 and all((report_dir / link).is_file() for link in links)
    assert "| LV | ED |" in text
    html = page.read_text()
    assert html.count("data:image/png;base64,") == len(links) and 'src="http' not in html


@pytest.mark.parametrize("command", ["figures", "report", "latent"])
def test_unwritable_output_is_one_line(trained_run, tmp_path, command):
    (tmp_path / "file.txt").write_text("a file, not a folder")
    out = tmp_path / "file.txt" / "out"
    result = CliRunner().invoke(main, [command, str(trained_run), "-o", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "Error" in line]
    assert len(errors) == 1 and str(out) in errors[0], result.output


def test_the_lv_volume_head_trains_and_evaluate_reports_its_volume_error_in_ml(cohort, trained_run, evaluated):
    # the multi-task head of the SDNet paper (Section 5.2): trained by the supervised step,
    # scored by evaluate --run against each reference frame's LV volume
    out, summary = evaluated
    history = (trained_run / "history.csv").read_text().splitlines()
    assert "train_supervised/lv_volume" in history[0].split(",")
    rows = _rows(out / "lv_volume_head.csv")
    assert len(rows) == summary["cases"] == len(summary["lv_volume_head"]["frames"])
    for row in rows:
        patient, phase = row["case"].rsplit("_", 1)
        info = dict(line.split(": ") for line in (cohort / patient / "Info.cfg").read_text().splitlines() if line)
        image = nib.load(cohort / patient / f"{patient}_frame{int(info[phase]):02d}_gt.nii.gz")
        reference = np.sum(np.asarray(image.dataobj) == 3) * np.prod(image.header.get_zooms()[:3]) / 1000.0
        assert float(row["reference_ml"]) == pytest.approx(reference, abs=1e-3)
        assert float(row["error_ml"]) == pytest.approx(float(row["predicted_ml"]) - reference, abs=2e-3)
    assert summary["lv_volume_head"]["absolute_error_ml"]["n"] == len(rows)
