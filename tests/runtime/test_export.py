"""ONNX export and the TensorFlow-free runtime: sidecar, parity with Keras, hashes, NIfTI output."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from support.helpers import ROOT, SMALL, small_config
from export.onnx_export import export_run
from sdnet_infer import ExportError, SDNetRuntime
from sdnet_infer.predict import predict_volume
from sdnet_tf.config import save_config
from sdnet_tf.data.phantom import write_patient
from sdnet_tf.data.preprocess import preprocess_frame
from sdnet_tf.inference import load_run, probabilities_fn
from sdnet_tf.models import SDNet

SPACING = 5.0  # 32 pixels of 5 mm: the tiny test model sees the whole heart


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with an untrained but seeded tiny SDNet (BatchNorm statistics moved off 0/1)."""
    run = tmp_path_factory.mktemp("run")
    config = small_config()
    config.data.spacing = SPACING
    keras.utils.set_random_seed(3)
    model = SDNet(**SMALL, seed=3)
    model.build()
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.linspace(-0.2, 0.2, n).astype(np.float32))
            layer.moving_variance.assign(np.linspace(0.5, 1.5, n).astype(np.float32))
    model.save(run / "model.keras")
    save_config(config, run / "config.yaml")
    return run


@pytest.fixture(scope="module")
def export_dir(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    export_run(run_dir, out)
    return out


@pytest.fixture(scope="module")
def phantom_patient(tmp_path_factory):
    return write_patient(tmp_path_factory.mktemp("phantom"), seed=4, number=2)


def _phantom_slices(phantom_patient, size=32):
    data = nib.load(str(phantom_patient / "patient002_frame01.nii.gz"))
    slices, _, _ = preprocess_frame(np.asarray(data.dataobj, np.float32), data.header.get_zooms(), size=size,
                                    target=SPACING)
    return slices[..., None]


def test_sidecar_lists_models_hashes_and_preprocessing(export_dir):
    meta = json.loads((export_dir / "sdnet-export.json").read_text())
    assert set(meta["models"]) == {"segment", "anatomy", "modality", "decoder"}
    assert meta["preprocessing"]["spacing_mm"] == SPACING and meta["preprocessing"]["size"] == 32
    assert meta["labels"] == {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}
    assert meta["opset"] == 17 and {"tensorflow", "keras", "tf2onnx", "onnx"} <= set(meta["versions"])
    seg = meta["models"]["segment"]
    assert [i["name"] for i in seg["inputs"]] == ["image"]
    assert meta["layout"] == "NCHW"
    assert seg["inputs"][0]["shape"] == [None, 1, 32, 32] and seg["inputs"][0]["dtype"] == "float32"
    outputs = {o["name"]: o for o in seg["outputs"]}
    assert outputs["probabilities"]["shape"] == [None, 32, 32, 3] and outputs["labels"]["dtype"] == "uint8"
    assert outputs["anatomy"]["shape"] == [None, 32, 32, 8]  # the binary anatomy factor, for quality control
    for entry in meta["models"].values():
        assert len(entry["sha256"]) == 64 and (export_dir / entry["file"]).is_file()
        assert all(i["shape"][0] is None for i in entry["inputs"])  # dynamic batch


def _export_untrained(tmp_path, **model):
    """An untrained tiny SDNet with ``model`` options saved as a run in tmp_path/run and exported
    to tmp_path/export."""
    config = small_config()
    config.data.spacing = SPACING
    for key, value in model.items():
        setattr(config.model, key, value)
    network = SDNet(**SMALL, **model, seed=3)
    network.build()
    (tmp_path / "run").mkdir()
    network.save(tmp_path / "run" / "model.keras")
    save_config(config, tmp_path / "run" / "config.yaml")
    export_run(tmp_path / "run", tmp_path / "export")


def test_argmax_binarisation_exports_with_parity(tmp_path):
    # model.binarisation=argmax: the one-hot anatomy converts to ONNX and matches Keras
    _export_untrained(tmp_path, binarisation="argmax")
    images = np.random.default_rng(0).uniform(-1, 1, (5, 32, 32, 1)).astype(np.float32)
    runtime = SDNetRuntime(tmp_path / "export")
    anatomy, _, _ = runtime.decompose(images)
    np.testing.assert_array_equal(anatomy.sum(-1), np.ones((5, 32, 32)))
    loaded, _ = load_run(tmp_path / "run")
    assert np.abs(runtime.segment(images) - np.asarray(loaded.segment(images, training=False))).max() <= 1e-4


@pytest.mark.parametrize("decoder,lv_volume_head", [
    ("adain", False), pytest.param("film", True, marks=pytest.mark.slow)])
def test_the_family_variants_export_with_parity_and_their_decoder_reads_z(tmp_path, decoder, lv_volume_head):
    # model.decoder=adain (M&Ms 2020): reflection padding and instance statistics convert to
    # ONNX; model.lv_volume_head (2019, 5.2): the sixth network does not disturb the export.
    # Segmentation and reconstruction match Keras, and z changes the reconstruction
    # Fixed initial weights: instance normalisation divides by each channel's spatial spread,
    # so where a random initialisation leaves a channel nearly constant it magnifies float32
    # round-off (over 8 random initialisations the AdaIN reconstruction differed from Keras
    # by 0 to 8.9e-5, and by 1.3e-4 once in earlier runs; segmentation is not affected)
    keras.utils.set_random_seed(0)
    _export_untrained(tmp_path, decoder=decoder, lv_volume_head=lv_volume_head)
    images = np.random.default_rng(0).uniform(-1, 1, (5, 32, 32, 1)).astype(np.float32)
    runtime = SDNetRuntime(tmp_path / "export")
    loaded, _ = load_run(tmp_path / "run")
    assert np.abs(runtime.segment(images) - np.asarray(loaded.segment(images, training=False))).max() <= 1e-4
    anatomy, mean, _ = runtime.decompose(images)
    z = np.random.default_rng(1).normal(size=mean.shape).astype(np.float32)
    decoded = runtime.decode(anatomy, z)
    assert np.abs(decoded - np.asarray(loaded.reconstruct(anatomy, z))).max() <= 1e-4
    assert np.abs(runtime.decode(anatomy, z[::-1]) - decoded).max() > 1e-3


def test_sixteen_anatomy_channels_export_with_parity(tmp_path):
    # the multimodal experiments' C = 16 (configs/sdnet-mmwhs.yaml): segmentation, z and decoder
    keras.utils.set_random_seed(0)
    _export_untrained(tmp_path, anatomy_channels=16)
    images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 1)).astype(np.float32)
    runtime = SDNetRuntime(tmp_path / "export")
    loaded, _ = load_run(tmp_path / "run")
    assert np.abs(runtime.segment(images) - np.asarray(loaded.segment(images, training=False))).max() <= 1e-4
    anatomy, mean, _ = runtime.decompose(images)
    assert anatomy.shape == (4, 32, 32, 16)
    _, _, expected_mean, _ = loaded.decompose(images, training=False, sample=False)
    assert np.abs(mean - np.asarray(expected_mean)).max() <= 1e-4
    assert np.abs(runtime.decode(anatomy, mean) - np.asarray(loaded.reconstruct(anatomy, mean))).max() <= 1e-4


def test_the_miccai2018_precursor_exports_with_parity_and_predicts_the_myocardium(tmp_path, phantom_patient, capsys):
    # model.kind sdnet2018: one probability channel (MYO, ACDC label 2), z from the image alone
    # and deterministic (no log-variance), the decoder reading the binarised mask; predict writes
    # labels 0 and 2 only and skips the quality control, which needs all three structures
    from sdnet_infer.preprocess import from_one_hot
    from sdnet_tf.apps.train import build_sdnet
    from sdnet_tf.config import load_config

    config = load_config("sdnet2018-acdc", ["model.input_size=32", "model.unet_filters=4",
                                            "model.discriminator_filters=4", f"data.spacing={SPACING}"])
    keras.utils.set_random_seed(5)
    network = build_sdnet(config)
    network.build()
    (tmp_path / "run").mkdir()
    network.save(tmp_path / "run" / "model.keras")
    save_config(config, tmp_path / "run" / "config.yaml")
    export_run(tmp_path / "run", tmp_path / "export")
    meta = json.loads((tmp_path / "export" / "sdnet-export.json").read_text())
    assert meta["probability_channels"] == ["MYO"] and meta["labels"] == {"0": "background", "2": "MYO"}
    assert not meta["qc"]["calibrated"] and "MYO only" in meta["qc"]["reason"]
    assert [i["name"] for i in meta["models"]["modality"]["inputs"]] == ["image"]
    runtime = SDNetRuntime(tmp_path / "export")
    loaded, _ = load_run(tmp_path / "run")
    images = np.concatenate([_phantom_slices(phantom_patient),
                             np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 1)).astype(np.float32)])
    probabilities = runtime.segment(images)
    assert probabilities.shape == (len(images), 32, 32, 1)
    assert np.abs(probabilities - np.asarray(loaded.segment(images, training=False))).max() <= 1e-4
    anatomy, z, logvar = runtime.decompose(images)
    mask, expected_z = loaded.decompose(images, training=False)
    assert logvar is None and np.abs(z - np.asarray(expected_z)).max() <= 1e-4
    np.testing.assert_array_equal(anatomy, np.round(np.asarray(mask)))
    decoded = runtime.decode(anatomy, z)
    assert np.abs(decoded - np.asarray(loaded.reconstruct(anatomy, z, training=False))).max() <= 1e-4
    labels = predict_volume(np.stack([s[..., 0] for s in images], axis=-1), (SPACING, SPACING), runtime.segment,
                            size=32, target=SPACING)
    assert set(np.unique(labels)) <= {0, 2}
    np.testing.assert_array_equal(from_one_hot(probabilities), np.where(probabilities[..., 0] > 0.5, 2, 0))
    from sdnet_infer.cli import main as infer_main

    assert infer_main(["-i", str(phantom_patient / "patient002_frame01.nii.gz"), "-o", str(tmp_path / "out"),
                       "-m", str(tmp_path / "export")]) == 0
    assert "quality control: skipped, the model segments MYO only" in capsys.readouterr().err
    written = np.asarray(nib.load(str(tmp_path / "out" / "patient002_frame01_pred.nii.gz")).dataobj)
    assert set(np.unique(written)) <= {0, 2}
    # sdnet-tf predict with the run: the same labels, quality control skipped in one line
    result = CliRunner().invoke(main, ["predict", "-i", str(phantom_patient / "patient002_frame01.nii.gz"),
                                       "-o", str(tmp_path / "keras"), "--run", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "quality control: skipped, the model segments MYO only" in result.output
    keras_labels = np.asarray(nib.load(str(tmp_path / "keras" / "patient002_frame01_pred.nii.gz")).dataobj)
    assert (keras_labels == written).mean() > 0.999
    # the commands that read SDNet's anatomy channels and modality encoder refuse it in one line
    for command in (["figures", str(tmp_path / "run"), "-o", str(tmp_path / "f")],
                    ["latent", str(tmp_path / "run"), "-o", str(tmp_path / "l")],
                    ["report", str(tmp_path / "run"), "-o", str(tmp_path / "r")],
                    ["modality-classifier", str(tmp_path / "run"), "-o", str(tmp_path / "m")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code != 0 and isinstance(result.exception, (SystemExit, type(None))), \
            (command, result.output)
        assert "a MICCAI 2018 precursor run (model.kind sdnet2018)" in result.output, (command, result.output)
        assert not (tmp_path / command[-1]).exists(), command


@pytest.mark.parametrize("source", ["random", "phantom"])
def test_parity_with_keras(run_dir, export_dir, phantom_patient, source):
    model, _ = load_run(run_dir)
    if source == "random":
        images = np.random.default_rng(0).uniform(-1, 1, (7, 32, 32, 1)).astype(np.float32)
    else:
        images = _phantom_slices(phantom_patient)
    runtime = SDNetRuntime(export_dir, batch_size=4)  # batches of 4 exercise the dynamic dimension
    probs = runtime.segment(images)
    expected = np.asarray(model.segment(images, training=False))
    assert np.abs(probs - expected).max() <= 1e-4
    agreement = np.mean(np.argmax(probs, -1) == np.argmax(expected, -1))
    assert agreement >= 0.9999

    anatomy, mean, logvar = runtime.decompose(images)
    k_anatomy, _, k_mean, k_logvar = model.decompose(images, training=False, sample=False)
    assert np.abs(anatomy - np.asarray(k_anatomy)).max() <= 1e-4
    assert np.abs(mean - np.asarray(k_mean)).max() <= 1e-4
    assert np.abs(logvar - np.asarray(k_logvar)).max() <= 1e-4
    z = np.random.default_rng(1).normal(size=mean.shape).astype(np.float32)
    decoded = runtime.decode(anatomy, z)
    assert np.abs(decoded - np.asarray(model.reconstruct(k_anatomy, z))).max() <= 1e-4


def test_onnx_labels_output_matches_probabilities(export_dir, phantom_patient):
    import onnxruntime as ort

    from sdnet_infer.preprocess import from_one_hot

    session = ort.InferenceSession(str(export_dir / "segment.onnx"), providers=["CPUExecutionProvider"])
    images = np.moveaxis(_phantom_slices(phantom_patient), -1, 1)  # the default export is NCHW
    probs, labels = session.run(["probabilities", "labels"], {"image": images})
    assert labels.dtype == np.uint8 and np.array_equal(labels, from_one_hot(probs))


def test_decompose_reuses_the_anatomy_of_segment_exactly(export_dir, phantom_patient):
    slices = _phantom_slices(phantom_patient)
    fresh = SDNetRuntime(export_dir)
    expected = fresh.decompose(slices)
    assert "anatomy" in fresh._sessions  # a slice segment() has not seen goes through anatomy.onnx
    runtime = SDNetRuntime(export_dir)
    runtime.segment(slices)
    anatomy, mean, logvar = runtime.decompose(slices)
    assert "anatomy" not in runtime._sessions  # the U-Net ran once, inside segment.onnx
    assert set(np.unique(anatomy)) <= {0.0, 1.0}
    for got, want in zip((anatomy, mean, logvar), expected):
        np.testing.assert_array_equal(got, want)
    # the kept factors are used once: the same slices again go through anatomy.onnx
    np.testing.assert_array_equal(runtime.decompose(slices[:2])[0], expected[0][:2])
    assert "anatomy" in runtime._sessions
    # bit-packing round trip of a binary map with ones in it (this untrained model's are all zero);
    # a map that is not binary is not kept
    images = runtime._to_layout(slices[:3])
    binary = (np.random.default_rng(0).random((3, 32, 32, 8)) > 0.5).astype(np.float32)
    runtime._anatomy.keep(images, binary)
    np.testing.assert_array_equal(runtime._anatomy_of(images), binary)
    runtime._anatomy.keep(images, binary * 0.5)
    assert not len(runtime._anatomy)


def test_modified_onnx_is_refused(export_dir, tmp_path, phantom_patient):
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    path = copy / "decoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="decoder.onnx: SHA-256 .* does not match"):
        SDNetRuntime(copy)
    from sdnet_infer.cli import main as infer_main

    assert infer_main(["-i", str(phantom_patient), "-o", str(tmp_path / "out"), "-m", str(copy)]) == 1
    assert not (tmp_path / "out").exists()


def test_missing_sidecar_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="no sdnet-export.json"):
        SDNetRuntime(tmp_path)


def test_runtime_runs_where_tensorflow_cannot_be_imported(export_dir, phantom_patient, tmp_path):
    """The runtime in a fresh interpreter whose import of tensorflow, keras or tf2onnx fails."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "tf_keras"):
                    raise ImportError(f"{name} is blocked in this test")
                return None
        sys.meta_path.insert(0, _Block())
    """))
    script = textwrap.dedent(f"""
        import sys
        try:
            import tensorflow
        except ImportError:
            pass
        else:
            raise SystemExit("tensorflow imported despite the block")
        from sdnet_infer.cli import main
        code = main(["-i", {str(phantom_patient)!r}, "-o", {str(tmp_path / 'out')!r}, "-m", {str(export_dir)!r}])
        assert not any(m.split(".")[0] in ("tensorflow", "keras", "tf2onnx") for m in sys.modules), "TF loaded"
        raise SystemExit(code)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), str(ROOT / "runtime")]))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on CPUExecutionProvider" in result.stderr or "on CUDAExecutionProvider" in result.stderr
    frames = sorted(p.name.replace(".nii.gz", "_pred.nii.gz") for p in phantom_patient.glob("*_frame??.nii.gz"))
    assert sorted(p.name for p in (tmp_path / "out").rglob("*_pred.nii.gz")) == frames and len(frames) == 2


def test_infer_and_predict_write_identical_labels(run_dir, export_dir, phantom_patient, tmp_path):
    from sdnet_infer.cli import main as infer_main

    image = phantom_patient / "patient002_frame01.nii.gz"
    assert infer_main(["-i", str(image), "-o", str(tmp_path / "onnx"), "-m", str(export_dir), "-q"]) == 0
    result = CliRunner().invoke(main, ["predict", "-i", str(image), "-o", str(tmp_path / "keras"),
                                       "--run", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    a = nib.load(str(tmp_path / "onnx" / "patient002_frame01_pred.nii.gz"))
    b = nib.load(str(tmp_path / "keras" / "patient002_frame01_pred.nii.gz"))
    src = nib.load(str(image))
    labels = np.asarray(a.dataobj)
    assert labels.dtype == np.uint8 and labels.shape == src.shape
    assert np.array_equal(labels, np.asarray(b.dataobj))
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and len(np.unique(labels)) > 1
    assert np.allclose(a.affine, src.affine) and a.header.get_zooms() == src.header.get_zooms()


def test_an_mnms_run_exports_infers_and_predicts_in_mnms_labels(run_dir, export_dir, phantom_patient, tmp_path,
                                                                 monkeypatch):
    """A run trained on M&Ms (its data.json's dataset) writes 1 LV, 2 MYO, 3 RV through predict
    --run and, its export's sidecar carrying label_convention, through sdnet-infer."""
    import export.onnx_export as onnx_export
    from sdnet_infer.cli import main as infer_main
    from sdnet_tf.data.mnms import to_mnms_labels

    acdc_table = {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}  # segment.onnx's labels output
    assert onnx_export.sidecar_labels(3, "mnms") == {
        "labels": acdc_table, "label_convention": "mnms",
        "written_labels": {"0": "background", "1": "LV", "2": "MYO", "3": "RV"}}
    assert onnx_export.sidecar_labels(1, "mnms")["written_labels"] == {"0": "background", "2": "MYO"}
    mnms_run = tmp_path / "mnms-run"
    shutil.copytree(run_dir, mnms_run)
    (mnms_run / "data.json").write_text(json.dumps({"dataset": "mnms", "orientation": "LPS"}))
    seen = {}
    monkeypatch.setattr(onnx_export, "export_model", lambda *args, **kwargs: seen.update(kwargs))
    export_run(mnms_run, tmp_path / "unused")
    assert seen["label_convention"] == "mnms"
    mnms_export = tmp_path / "mnms-export"
    shutil.copytree(export_dir, mnms_export)
    meta = json.loads((mnms_export / "sdnet-export.json").read_text())
    assert meta["label_convention"] == "acdc"
    (mnms_export / "sdnet-export.json").write_text(json.dumps({**meta, **onnx_export.sidecar_labels(3, "mnms")}))
    image = phantom_patient / "patient002_frame01.nii.gz"
    for name, folder in (("acdc", export_dir), ("mnms", mnms_export)):
        assert infer_main(["-i", str(image), "-o", str(tmp_path / name), "-m", str(folder), "-q", "--no-qc"]) == 0
    result = CliRunner().invoke(main, ["predict", "-i", str(image), "-o", str(tmp_path / "keras"),
                                       "--run", str(mnms_run), "--quiet", "--no-qc"])
    assert result.exit_code == 0 and "M&Ms' (1 LV, 2 MYO, 3 RV)" in result.output, result.output
    acdc, mnms, keras_mnms = (np.asarray(nib.load(str(tmp_path / name / "patient002_frame01_pred.nii.gz")).dataobj)
                              for name in ("acdc", "mnms", "keras"))
    assert len(np.unique(acdc)) > 1 and np.array_equal(mnms, to_mnms_labels(acdc))  # the untrained model: LV
    assert np.array_equal(keras_mnms, mnms)
    assert json.loads((tmp_path / "mnms" / "predictions.json").read_text())[0]["labels"] == "mnms"
    meta["label_convention"] = "mmwhs"
    (mnms_export / "sdnet-export.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="label_convention 'mmwhs'"):
        SDNetRuntime(mnms_export)


def test_keras_and_onnx_volume_predictions_agree_on_a_cine(run_dir, export_dir, phantom_patient):
    model, _ = load_run(run_dir)
    runtime = SDNetRuntime(export_dir)
    cine = nib.load(str(phantom_patient / "patient002_4d.nii.gz"))
    volume = np.asarray(cine.dataobj, np.float32)[..., :3]
    zooms = cine.header.get_zooms()[:2]
    a = runtime.segment_volume(volume, zooms)
    b = predict_volume(volume, zooms, probabilities_fn(model), size=32, target=SPACING)
    assert a.shape == volume.shape and np.array_equal(a, b)


def test_export_command_and_missing_model(run_dir, tmp_path):
    result = CliRunner().invoke(main, ["export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and "no such run directory" in result.output
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(run_dir / "config.yaml", partial)
    result = CliRunner().invoke(main, ["export", str(partial), "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and "no model.keras yet" in result.output


# ---------------------------------------------------------------------------- input geometry
def test_sidecar_records_the_training_orientation_and_old_ones_default_to_acdc(export_dir, tmp_path):
    meta = json.loads((export_dir / "sdnet-export.json").read_text())
    assert meta["preprocessing"]["orientation"] == "LPS" == SDNetRuntime(export_dir).orientation
    old = tmp_path / "old"
    shutil.copytree(export_dir, old)
    del meta["preprocessing"]["orientation"]
    (old / "sdnet-export.json").write_text(json.dumps(meta))
    assert SDNetRuntime(old).orientation == "LPS"


def test_every_storage_of_one_image_gives_the_same_labels_through_predict_and_infer(run_dir, export_dir,
                                                                                    phantom_patient, tmp_path):
    """Flipped, slice-first, sform-only voxel size, metres and microns: the plain copy's labels in
    physical space, identical from sdnet-tf predict and sdnet-infer; zero spacing: a named error."""
    from support.geometry_cases import CASES, SAME_ARRAY, agreement, to_plain, write_cases
    from sdnet_infer.cli import main as infer_main

    src = nib.load(str(phantom_patient / "patient002_frame01.nii.gz"))
    spacing, _, thickness = (float(z) for z in src.header.get_zooms())
    image = np.asarray(src.dataobj)
    write_cases(image, spacing, thickness, tmp_path / "cases")
    assert infer_main(["-i", str(tmp_path / "cases"), "-o", str(tmp_path / "onnx"), "-m", str(export_dir), "-q"]) == 1
    result = CliRunner().invoke(main, ["predict", "-i", str(tmp_path / "cases"), "-o", str(tmp_path / "keras"),
                                       "--run", str(run_dir), "--quiet"])
    assert result.exit_code == 1 and "zero_spacing.nii.gz: voxel size" in result.output, result.output
    for out in ("onnx", "keras"):
        records = json.loads((tmp_path / out / "predictions.json").read_text())
        failed = [r for r in records if r["error"]]
        assert len(failed) == 1 and "zero_spacing.nii.gz: voxel size" in failed[0]["error"]
    plain = np.asarray(nib.load(str(tmp_path / "keras" / "plain_pred.nii.gz")).dataobj)
    assert len(np.unique(plain)) > 1
    voxel_ml = spacing * spacing * thickness / 1000
    for case in set(CASES) - {"zero_spacing"}:
        keras_labels = np.asarray(nib.load(str(tmp_path / "keras" / f"{case}_pred.nii.gz")).dataobj)
        onnx_labels = np.asarray(nib.load(str(tmp_path / "onnx" / f"{case}_pred.nii.gz")).dataobj)
        assert np.array_equal(keras_labels, onnx_labels), case
        assert agreement(to_plain(case, keras_labels), plain) >= 0.99, case
        if case in SAME_ARRAY:
            for value in (1, 2, 3):
                assert (keras_labels == value).sum() * voxel_ml == pytest.approx((plain == value).sum() * voxel_ml,
                                                                                 rel=0.02, abs=1e-9), case
    # the volumes tell the voxel size apart: read as pixdim's 1 mm, the sform_spacing copy's LV would differ
    misread = SDNetRuntime(export_dir).segment_volume(image.astype(np.float32), (1.0, 1.0))
    assert abs((misread == 3).sum() / (plain == 3).sum() - 1) > 0.1


def _one_error_line(output, path):
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "Error" in line]
    assert len(errors) == 1 and str(path) in errors[0], output


def test_unwritable_output_is_one_line_for_predict_infer_and_export(run_dir, export_dir, phantom_patient, tmp_path,
                                                                   capsys):
    from sdnet_infer.cli import main as infer_main

    (tmp_path / "file.txt").write_text("a file, not a folder")
    out = tmp_path / "file.txt" / "out"
    image = phantom_patient / "patient002_frame01.nii.gz"
    result = CliRunner().invoke(main, ["predict", "-i", str(image), "-o", str(out), "--run", str(run_dir), "--quiet"])
    assert result.exit_code == 1
    _one_error_line(result.output, out)
    result = CliRunner().invoke(main, ["export", str(run_dir), "-o", str(out)])
    assert result.exit_code == 1
    _one_error_line(result.output, out)
    capsys.readouterr()
    assert infer_main(["-i", str(image), "-o", str(out), "-m", str(export_dir), "-q"]) == 1
    _one_error_line(capsys.readouterr().err, out)
    assert not (tmp_path / "file.txt").is_dir()


def test_export_opset_outside_what_tf2onnx_converts_is_refused_and_the_written_one_recorded(export_dir, tmp_path):
    import onnx
    from tf2onnx.constants import OPSET_TO_IR_VERSION

    from cli import ONNX_OPSETS
    from export.onnx_export import OPSETS

    assert ONNX_OPSETS == OPSETS and OPSETS[1] == max(OPSET_TO_IR_VERSION)
    for opset in ("5", "99", "0", "-1"):
        result = CliRunner().invoke(main, ["export", "nowhere", "-o", str(tmp_path / "x"), "--opset", opset])
        assert result.exit_code == 2 and "Invalid value for '--opset'" in result.output and "13<=x<=18" in result.output
        assert "Traceback" not in result.output and not (tmp_path / "x").exists()
    meta = json.loads((export_dir / "sdnet-export.json").read_text())
    for entry in meta["models"].values():
        model = onnx.load(str(export_dir / entry["file"]))
        written = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
        assert written == [meta["opset"]]


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_batch_size_below_one_is_a_usage_error_not_a_failed_image(value, tmp_path, capsys):
    from sdnet_infer.cli import main as infer_main

    result = CliRunner().invoke(main, ["predict", "-i", "x.nii.gz", "-o", str(tmp_path / "o"), "--run", "nowhere",
                                       "--batch-size", value])
    assert result.exit_code == 2 and "Invalid value for '--batch-size'" in result.output and "x>=1" in result.output
    with pytest.raises(SystemExit) as caught:
        infer_main(["-i", "x.nii.gz", "-o", str(tmp_path / "o"), "--model", "nowhere", "--batch-size", value])
    assert caught.value.code == 2 and "argument --batch-size: " in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_two_exports_into_one_folder_at_once_do_not_clash(tmp_path):
    """Each external-data export stages in a folder of its own (it once shared ``.NAME.staging``,
    so one export's clean-up removed the other's files mid-write)."""
    from concurrent.futures import ThreadPoolExecutor

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export.onnx_export import _save

    def proto(value):
        weight = numpy_helper.from_array(np.full((64, 64), value, np.float32), "w")
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
        return helper.make_model(graph)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda v: _save(proto(float(v)), tmp_path, "segment", True), range(8)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["segment.onnx", "segment.onnx.data"]  # no staging left
    saved = numpy_helper.to_array(onnx.load(str(tmp_path / "segment.onnx")).graph.initializer[0])
    assert np.unique(saved).size == 1 and saved.flat[0] in range(8)  # one export's weights, whole
