"""Quality control of predictions: golden values of the scores, and a tiny SDNet trained on the
phantom cohort that passes clean held-out volumes and puts corrupted ones up for review, through
sdnet-infer (the export's calibration) and sdnet-tf predict (the run's)."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage

from cli import main
from sdnet_infer.cli import main as infer_main
from sdnet_infer.labels import LV, MYO
from sdnet_infer.qc import (RULES, QualityControl, blood_pool_contrast, calibrate, describe, judge, latent_statistics,
                            mahalanobis, reconstruction_errors, volume_statistics)
from sdnet_infer.validity import SEVEN_CHECKS
from sdnet_tf.data.acdc import find_patients
from sdnet_tf.data.nifti import save_volume
from sdnet_tf.apps.quality import CALIBRATION_FILE

SPACING = 5.0  # 32 pixels of 5 mm: the tiny model sees the whole heart


# ------------------------------------------------------------------------------ golden values
def test_reconstruction_error_is_the_mean_absolute_error_per_slice():
    images = np.zeros((2, 2, 2), np.float32)
    images[1] = [[1.0, -1.0], [0.5, 0.0]]
    rebuilt = np.zeros((2, 2, 2, 1), np.float32)
    rebuilt[0, 0, 0, 0] = 0.4
    np.testing.assert_allclose(reconstruction_errors(images, rebuilt), [0.1, 0.625])
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_errors(images, rebuilt[:, :1])


def test_mahalanobis_distance_against_hand_computed_values():
    # z in 2-D with variances 4 and 1 and no correlation: distance sqrt((dz1 / 2)^2 + dz2^2)
    latent = {"mean": [1.0, -1.0], "covariance": [[4.0, 0.0], [0.0, 1.0]], "ridge": 0.0}
    z = np.array([[1.0, -1.0], [3.0, -1.0], [1.0, 1.0], [5.0, 2.0]])
    np.testing.assert_allclose(mahalanobis(z, latent), [0.0, 1.0, 2.0, np.sqrt(4.0 + 9.0)])
    # a correlation of 0.5 (unit variances): d^2 = (a^2 - a b + b^2) / 0.75
    correlated = {"mean": [0.0, 0.0], "covariance": [[1.0, 0.5], [0.5, 1.0]], "ridge": 0.0}
    np.testing.assert_allclose(mahalanobis([[1.0, 1.0], [1.0, -1.0]], correlated), np.sqrt([4 / 3, 4.0]))
    with pytest.raises(ValueError, match="2 dimensions"):
        mahalanobis(np.zeros((1, 3)), latent)


def test_latent_statistics_mean_covariance_and_relative_ridge():
    z = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
    stats = latent_statistics(z, ridge=0.01)
    assert stats["mean"] == [1.0, 2.0] and stats["slices"] == 4
    np.testing.assert_allclose(stats["covariance"], [[4 / 3, 0.0], [0.0, 16 / 3]])
    assert stats["ridge"] == pytest.approx(0.01 * (4 / 3 + 16 / 3) / 2)
    # a dimension that never varies: the ridge keeps the distance finite
    flat = latent_statistics(np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]]))
    assert np.isfinite(mahalanobis([[2.0, 1.5]], flat)).all()
    with pytest.raises(ValueError, match="N > nz"):
        latent_statistics(np.zeros((2, 2)))


def test_blood_pool_contrast_against_hand_computed_values():
    # a 10 x 10 x 2 volume: background 0 (128 voxels), MYO 100 (40), LV 300 (32, one of them
    # 1000): 5-95th percentile range 0 .. 300, medians 300 and 100, contrast 200 / 300
    labels = np.zeros((10, 10, 2), np.uint8)
    labels[2:8, 2:8] = MYO
    labels[3:7, 3:7] = LV
    image = np.where(labels == LV, 300.0, np.where(labels == MYO, 100.0, 0.0))
    image[4, 4, 0] = 1000.0
    low, high = np.percentile(image, [5, 95])
    assert (low, high) == (0.0, 300.0)
    assert blood_pool_contrast(image, labels) == pytest.approx(200 / 300, rel=1e-5)
    # labels painted on a uniform patch: no contrast; no MYO or a constant image: not measured
    assert blood_pool_contrast(np.where(labels > 0, 50.0, 0.0), labels) == 0.0
    assert blood_pool_contrast(image, np.where(labels == MYO, 0, labels)) is None
    assert blood_pool_contrast(np.ones_like(image), labels) is None
    with pytest.raises(ValueError, match="differ in shape"):
        blood_pool_contrast(image[..., :1], labels)


def _row(anatomy="valid", area=100.0, error=0.1, distance=2.0, image=True):
    return {"image": image, "anatomy": anatomy, "heart_area_mm2": area, "reconstruction_error": error,
            "z_distance": distance}


def test_volume_statistics_medians_shares_and_largest_area():
    rows = [_row(error=0.1, distance=1.0, area=50.0), _row("invalid", error=0.3, distance=5.0, area=300.0),
            _row("empty", area=0.0, error=0.2, distance=3.0), _row(error=0.4, distance=9.0, area=10.0),
            _row("empty", area=0.0, error=None, distance=None, image=False)]
    stats = volume_statistics(rows)
    assert stats == {"slices": 5, "image_slices": 4, "empty_slices": 2, "invalid_slices": 1,
                     "invalid_share": pytest.approx(1 / 3), "heart_area_mm2": 300.0,
                     "reconstruction_error": pytest.approx(0.25), "z_distance": 4.0}
    assert volume_statistics([_row("empty", area=0.0)])["invalid_share"] == 0.0


def test_calibration_rules_and_judgement():
    volumes = [{"image_slices": 10, "reconstruction_error": 0.10, "z_distance": 3.0, "invalid_share": 0.2,
                "heart_area_mm2": 800.0, "blood_pool_contrast": 0.3},
               {"image_slices": 8, "reconstruction_error": 0.14, "z_distance": 2.0, "invalid_share": 0.0,
                "heart_area_mm2": 1200.0, "blood_pool_contrast": 0.5}]
    calibration = calibrate(volumes, latent=None, patients=[5])
    assert calibration["thresholds"] == {"reconstruction_error": pytest.approx(0.21), "z_distance": 4.5,
                                         "invalid_share": pytest.approx(0.45), "heart_area_mm2": 200.0,
                                         "blood_pool_contrast": pytest.approx(0.15)}
    assert calibration["validation"] == {"volumes": 2, "slices": 18, "patients": [5], "observed": {
        "reconstruction_error": [0.1, 0.14], "z_distance": [2.0, 3.0], "invalid_share": [0.0, 0.2],
        "heart_area_mm2": [800.0, 1200.0], "blood_pool_contrast": [0.3, 0.5]}}
    assert set(calibration["rules"]) == set(RULES)
    thresholds = calibration["thresholds"]
    good = {"reconstruction_error": 0.2, "z_distance": 4.4, "invalid_share": 0.4, "heart_area_mm2": 250.0,
            "blood_pool_contrast": 0.2}
    assert judge(good, thresholds) == ("ok", [])
    bad = {"reconstruction_error": 0.3, "z_distance": 4.4, "invalid_share": 0.5, "heart_area_mm2": 150.0,
           "blood_pool_contrast": 0.0}
    status, reasons = judge(bad, thresholds)
    assert status == "review" and [r["check"] for r in reasons] == ["reconstruction_error", "invalid_share",
                                                                  "heart_area_mm2", "blood_pool_contrast"]
    assert describe(reasons[0]) == "reconstruction error 0.3 above 0.21"
    assert describe(reasons[2]) == "largest LV+MYO area 150 mm^2 below 200 mm^2"
    assert describe(reasons[3]) == "blood-pool contrast 0 below 0.15"
    # without a calibration only a volume without any LV or MYO is for review
    assert judge(bad) == ("ok", [])
    status, reasons = judge({**good, "heart_area_mm2": 0.0})
    assert status == "review" and describe(reasons[0]) == "no LV or MYO predicted in any slice"


class _ConstantModel:
    """decompose -> z = (mean intensity, 0); decode -> a constant 0.5 image."""

    def decompose(self, images):
        images = np.asarray(images)
        z = np.stack([images.mean(axis=(1, 2, 3)), np.zeros(len(images))], -1)
        return np.zeros(images.shape[:3] + (2,)), z, np.zeros_like(z)

    def decode(self, anatomy, z):
        return np.full(anatomy.shape[:3] + (1,), 0.5)


def test_slice_rows_validity_area_and_scores_on_hand_made_slices():
    rows_, cols = np.mgrid[:20, :20]
    r = np.hypot(rows_ - 10, cols - 10)
    heart = np.where(r < 3, LV, np.where(r < 5, MYO, 0)).astype(np.uint8)
    touching = heart.copy()
    touching[10, 6:10] = LV  # the LV cut through the MYO to the background
    labels = np.stack([heart, touching, np.zeros_like(heart)], -1)  # (H, W, S)
    slices = np.stack([np.full((8, 8), 0.5), np.full((8, 8), 0.5), np.full((8, 8), -1.0)]).astype(np.float32)
    slices[0, 0, 0], slices[1, 0, 0] = 0.7, -0.5  # (S, size, size); the third slice holds no image
    latent = {"mean": [0.5, 0.0], "covariance": [[0.01, 0.0], [0.0, 1.0]], "ridge": 0.0}
    quality = QualityControl(_ConstantModel(), {"calibrated": True, "thresholds": {}, "latent": latent})
    rows = quality.score_slices(slices, labels, (2.0, 1.5))
    assert [r["anatomy"] for r in rows] == ["valid", "invalid", "empty"]
    assert rows[1]["failed"] == ["frontier_between_lv_and_background"] and rows[2]["failed"] == []
    assert rows[0]["heart_area_mm2"] == pytest.approx(np.isin(heart, (LV, MYO)).sum() * 3.0)
    assert [r["image"] for r in rows] == [True, True, False]
    # one pixel of 64 off the decoder's 0.5, by 0.2 and by 1.0; z's first entry is the mean
    # intensity, 0.5 + 0.2 / 64 and 0.5 - 1 / 64, with a standard deviation of 0.1
    assert rows[0]["reconstruction_error"] == pytest.approx(0.2 / 64, rel=1e-4)
    assert rows[1]["reconstruction_error"] == pytest.approx(1 / 64, rel=1e-4)
    assert rows[0]["z_distance"] == pytest.approx(2 / 64, rel=1e-4)  # float32 images
    assert rows[1]["z_distance"] == pytest.approx(10 / 64, rel=1e-4)
    assert rows[2]["reconstruction_error"] is None and rows[2]["z_distance"] is None
    with pytest.raises(ValueError, match="do not match"):
        quality.score_slices(slices[:2], labels, (2.0, 1.5))


def test_a_cine_is_assessed_frame_by_frame_and_a_failing_assessment_flags_the_volume():
    labels = np.zeros((12, 12, 2, 3), np.uint8)  # (H, W, S, T)
    labels[4:8, 4:8, :, :2] = MYO
    labels[5:7, 5:7, :, :2] = LV
    slices = np.random.default_rng(0).uniform(-1, 1, (3, 2, 8, 8)).astype(np.float32)  # (T, S, size, size)
    result = QualityControl().assess(slices, labels, (1.5, 1.5))
    assert [(r["frame"], r["slice"]) for r in result["slices"]] == [(t, k) for t in range(3) for k in range(2)]
    assert [r["anatomy"] for r in result["slices"]] == ["valid"] * 4 + ["empty"] * 2
    assert result["status"] == "ok" and result["statistics"]["heart_area_mm2"] == 16 * 2.25
    flagged = QualityControl().assess_or_flag(slices[:2], labels, (1.5, 1.5), source="cine.nii.gz")
    assert flagged["status"] == "review" and flagged["reasons"][0]["check"] == "qc_failed"
    assert describe(flagged["reasons"][0]).startswith("quality control failed (cine.nii.gz: ValueError: slices")


def test_validity_is_the_runtime_module_re_exported():
    import sdnet_infer.validity as runtime_validity
    from sdnet_tf.metrics import validity

    assert validity.check_slice is runtime_validity.check_slice and validity.SEVEN_CHECKS == runtime_validity.SEVEN_CHECKS


# ------------------------------------------------------------------- a tiny SDNet on the phantom
def _frame(cohort, number, phase):
    """(image (H, W, S) float32, labels, the nibabel image) of a patient's ED or ES frame."""
    patient = next(p for p in find_patients(cohort) if p.number == number)
    index = patient.ed if phase == "ed" else patient.es
    image = nib.load(str(patient.frame(index)))
    labels = np.asarray(nib.load(str(patient.labels(index))).dataobj)
    return np.asarray(image.dataobj, np.float32), labels, image


@pytest.fixture(scope="module")
def volumes(trained, cohort, tmp_path_factory):
    """A folder of the test patients' clean ED and ES frames and three corrupted copies of the
    first one's ED frame: heavy Gaussian noise, the heart cut away, a smooth random texture."""
    _, _, split = trained
    folder = tmp_path_factory.mktemp("volumes")
    for number in split["test"]:
        for phase in ("ed", "es"):
            image, _, nifti = _frame(cohort, number, phase)
            save_volume(image, nifti.header.get_best_affine(), nifti.header.get_zooms(),
                        folder / f"clean_{number}_{phase}.nii.gz")
    image, labels, nifti = _frame(cohort, split["test"][0], "ed")
    zooms, affine = nifti.header.get_zooms(), nifti.header.get_best_affine()
    rng = np.random.default_rng(7)
    spread = float(np.percentile(image, 95) - np.percentile(image, 5))
    save_volume(image + rng.normal(0.0, 0.5 * spread, image.shape), affine, zooms, folder / "noise.nii.gz")
    # the heart and 10 mm around it replaced by the median of the tissue in the next 10 mm
    margin = int(round(10.0 / zooms[0]))
    heart = np.stack([ndimage.binary_dilation(labels[..., k] > 0, iterations=margin)
                      for k in range(labels.shape[-1])], -1)
    ring = np.stack([ndimage.binary_dilation(heart[..., k], iterations=margin) for k in range(heart.shape[-1])], -1)
    cut = image.copy()
    cut[heart] = np.median(image[ring & ~heart])
    save_volume(cut, affine, zooms, folder / "heart_cut.nii.gz")
    texture = ndimage.gaussian_filter(rng.normal(size=image.shape), sigma=(3, 3, 0))
    texture = (texture - texture.min()) / (texture.max() - texture.min()) * image.max()
    save_volume(texture, affine, zooms, folder / "texture.nii.gz")
    return folder


# the checks that must be among a corrupted volume's reasons (any one of a set); clean volumes are
# ok. Measured against the thresholds (reconstruction error 0.210, z distance 5.40, LV+MYO area
# 501 mm^2): the clean volumes at most 0.170 and 4.29, at least 1724 mm^2; the noisy one 0.341,
# the texture 0.269, the heart cut away 71 mm^2.
CORRUPTED = {"noise": {"reconstruction_error"}, "heart_cut": {"heart_area_mm2", "blood_pool_contrast"},
             "texture": {"reconstruction_error", "z_distance"}}


def _by_name(qc):
    return {v["input"].rsplit("/", 1)[-1].replace(".nii.gz", ""): v for v in qc["volumes"]}


def _check_statuses(by_name):
    clean = [name for name in by_name if name.startswith("clean_")]
    assert len(clean) == 4 and set(by_name) == set(clean) | set(CORRUPTED)
    for name in clean:
        assert by_name[name]["status"] == "ok", (name, by_name[name]["reasons"], by_name[name]["statistics"])
    for name, expected in CORRUPTED.items():
        volume = by_name[name]
        checks = {r["check"] for r in volume["reasons"]}
        assert volume["status"] == "review" and checks & expected, (name, checks, volume["statistics"])


def _clean(volumes):
    """The first clean volume, its name without the extension."""
    path = sorted(volumes.glob("clean_*.nii.gz"))[0]
    return path, path.name.replace(".nii.gz", "")


def test_infer_passes_clean_volumes_and_flags_corrupted_ones(trained, volumes, tmp_path, capsys):
    _, export, _ = trained
    qc_meta = json.loads((export / "sdnet-export.json").read_text())["qc"]
    assert qc_meta["calibrated"] and qc_meta["validation"]["volumes"] == 4 and qc_meta["latent"]["slices"] > 50
    assert set(qc_meta["thresholds"]) == set(RULES) and len(qc_meta["latent"]["mean"]) == 8  # nz
    assert infer_main(["-i", str(volumes), "-o", str(tmp_path / "out"), "-m", str(export)]) == 0
    err = capsys.readouterr().err
    qc = json.loads((tmp_path / "out" / "qc.json").read_text())
    by_name = _by_name(qc)
    print("\nthresholds", qc["thresholds"], "\nobserved on validation", qc_meta["validation"]["observed"])
    for name, volume in sorted(by_name.items()):
        print(name, volume["status"], [r["check"] for r in volume["reasons"]], volume["statistics"])
    assert qc["calibrated"] and qc["out_of_distribution"] and qc["thresholds"] == qc_meta["thresholds"]
    _check_statuses(by_name)
    clean_path, clean = _clean(volumes)
    records = {r["input"].rsplit("/", 1)[-1]: r for r in json.loads((tmp_path / "out" / "predictions.json").read_text())}
    assert records["noise.nii.gz"]["qc"] == "review" and records[clean_path.name]["qc"] == "ok"
    assert "reconstruction_error" in records["noise.nii.gz"]["qc_reasons"]
    assert "7 of 7 volumes written, 3 for review" in err and ", qc review: reconstruction error" in err
    rows = by_name[clean]["slices"]
    assert [r["slice"] for r in rows] == list(range(nib.load(str(clean_path)).shape[2]))
    assert all(r["anatomy"] in ("valid", "invalid", "empty") and r["reconstruction_error"] is not None
               and r["z_distance"] is not None and set(r["failed"]) <= set(SEVEN_CHECKS) for r in rows)
    assert all((r["anatomy"] == "invalid") == bool(r["failed"]) for r in rows)


def test_an_export_without_calibration_reports_validity_only(trained, volumes, tmp_path, capsys):
    _, export, _ = trained
    old = tmp_path / "old"
    shutil.copytree(export, old)
    meta = json.loads((old / "sdnet-export.json").read_text())
    del meta["qc"]
    (old / "sdnet-export.json").write_text(json.dumps(meta))
    assert infer_main(["-i", str(volumes), "-o", str(tmp_path / "out"), "-m", str(old)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("quality control:")]
    assert len(notes) == 1 and "export again for out-of-distribution scores" in notes[0]
    qc = json.loads((tmp_path / "out" / "qc.json").read_text())
    assert not qc["calibrated"] and not qc["out_of_distribution"] and qc["thresholds"] == {}
    for name, volume in _by_name(qc).items():
        assert all(r["reconstruction_error"] is None and r["z_distance"] is None for r in volume["slices"])
        # uncalibrated, only a volume without any LV or MYO is for review
        nothing = volume["statistics"]["heart_area_mm2"] == 0.0
        assert volume["status"] == ("review" if nothing else "ok"), name
        assert not (nothing and name.startswith("clean_")), name
    _, clean = _clean(volumes)
    assert any(r["anatomy"] != "empty" for r in _by_name(qc)[clean]["slices"])


def test_predict_calibrates_once_and_flags_the_same_volumes(trained, volumes, tmp_path):
    run, export, _ = trained
    result = CliRunner().invoke(main, ["predict", "-i", str(volumes), "-o", str(tmp_path / "out"), "--run", str(run),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert "calibrating the quality control" in result.output and "3 for review" in result.output
    cached = json.loads((run / CALIBRATION_FILE).read_text())
    onnx = json.loads((export / "sdnet-export.json").read_text())["qc"]
    for check, value in cached["qc"]["thresholds"].items():  # Keras and ONNX calibrate alike
        assert value == pytest.approx(onnx["thresholds"][check], rel=1e-3, abs=1e-4), check
    _check_statuses(_by_name(json.loads((tmp_path / "out" / "qc.json").read_text())))
    # the second time the calibration is read from the run directory
    clean_path, _ = _clean(volumes)
    result = CliRunner().invoke(main, ["predict", "-i", str(clean_path), "-o", str(tmp_path / "again"),
                                       "--run", str(run), "--quiet"])
    assert result.exit_code == 0 and "calibrating" not in result.output, result.output
    assert json.loads((tmp_path / "again" / "qc.json").read_text())["volumes"][0]["status"] == "ok"
    # no volume read, no quality-control report: the summary names none
    bad = tmp_path / "bad" / "text.nii.gz"
    bad.parent.mkdir()
    bad.write_text("not an image")
    result = CliRunner().invoke(main, ["predict", "-i", str(bad), "-o", str(tmp_path / "none"), "--run", str(run),
                                       "--quiet"])
    assert result.exit_code == 1 and "FAILED" in result.output, result.output
    assert "quality control in" not in result.output and not (tmp_path / "none" / "qc.json").exists(), result.output


def test_predict_without_the_runs_data_says_why_and_reports_validity(trained, volumes, tmp_path):
    run, _, _ = trained
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    (moved / CALIBRATION_FILE).unlink(missing_ok=True)
    description = json.loads((moved / "data.json").read_text())
    (moved / "data.json").write_text(json.dumps({**description, "data": str(tmp_path / "gone")}))
    clean_path, _ = _clean(volumes)
    result = CliRunner().invoke(main, ["predict", "-i", str(clean_path), "-o", str(tmp_path / "out"),
                                       "--run", str(moved), "--quiet"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("quality control:")]
    assert len(notes) == 1 and "gone: the run's data folder is not there" in notes[0], result.output
    assert "calibrating" not in result.output, result.output  # no calibration announced that cannot happen
    qc = json.loads((tmp_path / "out" / "qc.json").read_text())
    assert not qc["calibrated"] and qc["volumes"][0]["status"] == "ok" and not (moved / CALIBRATION_FILE).exists()


def test_a_model_without_decoder_is_calibrated_for_validity_and_heart_area_only(trained):
    from sdnet_infer import SDNetRuntime
    from sdnet_tf.apps.quality import calibrate_run

    run, export, _ = trained
    runtime = SDNetRuntime(export)

    class SegmentOnly:  # as a U-Net run behind sdnet_tf.inference.KerasRuntime
        segment, size, spacing, orientation = runtime.segment, runtime.size, runtime.spacing, runtime.orientation
        decompose = decode = None

    calibration = calibrate_run(run, SegmentOnly())
    assert set(calibration["thresholds"]) == {"invalid_share", "heart_area_mm2", "blood_pool_contrast"}
    assert calibration["latent"] is None
    onnx = json.loads((export / "sdnet-export.json").read_text())["qc"]
    assert calibration["thresholds"]["heart_area_mm2"] == onnx["thresholds"]["heart_area_mm2"]
    quality = QualityControl(SegmentOnly(), calibration)
    assert quality.model is None and "no out-of-distribution scores" in quality.note


def test_keras_runtime_reuses_the_anatomy_of_segment_exactly(trained, cohort):
    from sdnet_infer.preprocess import preprocess_frame
    from sdnet_tf.inference import KerasRuntime, load_run, probabilities_fn

    run, _, split = trained
    model, config = load_run(run)
    image, _, nifti = _frame(cohort, split["test"][0], "ed")
    slices = preprocess_frame(image, nifti.header.get_zooms()[:2], size=32, target=SPACING)[0][..., None]
    expected = KerasRuntime(model, config.data.spacing, "LPS").decompose(slices)
    runtime = KerasRuntime(model, config.data.spacing, "LPS", batch_size=4)
    np.testing.assert_allclose(runtime.segment(slices), probabilities_fn(model)(slices), atol=1e-6)
    assert len(runtime._anatomy) == len(slices)
    got = runtime.decompose(slices)
    assert len(runtime._anatomy) == 0  # each kept factor handed out once
    np.testing.assert_array_equal(got[0], expected[0])
    for a, b in zip(got[1:], expected[1:]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_infer_help_prints_and_a_link_loop_fails_alone_and_no_qc_leaves_no_stale_report(trained, volumes, tmp_path,
                                                                                           capsys):
    _, export, _ = trained
    with pytest.raises(SystemExit) as done:
        infer_main(["--help"])
    assert done.value.code == 0 and "--no-qc" in capsys.readouterr().out
    batch = tmp_path / "batch"
    batch.mkdir()
    clean, name = _clean(volumes)
    shutil.copy(clean, batch / clean.name)
    (batch / "loop_a.nii.gz").symlink_to(batch / "loop_b.nii.gz")
    (batch / "loop_b.nii.gz").symlink_to(batch / "loop_a.nii.gz")
    out = tmp_path / "out"
    assert infer_main(["-q", "-i", str(batch), "-o", str(out), "-m", str(export)]) == 1
    records = {r["input"].rsplit("/", 1)[-1]: r for r in json.loads((out / "predictions.json").read_text())}
    assert records[clean.name]["error"] is None and records[clean.name]["qc"] == "ok"
    assert records[clean.name]["model"] == {"export": str(export), "precision": "fp32"}  # traceable
    assert json.loads((out / "qc.json").read_text())["model"] == {"export": str(export), "precision": "fp32"}
    assert all(records[f"loop_{x}.nii.gz"]["error"] for x in "ab")
    assert (out / "qc.json").is_file()
    (batch / "loop_a.nii.gz").unlink()
    (batch / "loop_b.nii.gz").unlink()
    assert infer_main(["-q", "-i", str(batch), "-o", str(out), "-m", str(export), "--no-qc"]) == 0
    assert not (out / "qc.json").exists() and "qc" not in json.loads((out / "predictions.json").read_text())[0]


def test_predict_refuses_a_data_option_that_is_not_a_folder(trained, volumes, tmp_path):
    run, _, _ = trained
    clean, _ = _clean(volumes)
    result = CliRunner().invoke(main, ["predict", "-i", str(clean), "-o", str(tmp_path / "out"), "--run", str(run),
                                       "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "--data is not a folder" in result.output and "Traceback" not in result.output
