"""Fixtures of the runtime tests: a tiny SDNet trained on a 10-patient phantom cohort, its run
directory and its float32 export, shared by the quality-control and reduced-precision tests."""

import json

import keras
import numpy as np
import pytest

from export.onnx_export import export_run
from sdnet_tf.config import save_config
from sdnet_tf.data.acdc import find_patients, patient_splits, preprocess_cohort
from sdnet_tf.data.phantom import write_patient
from sdnet_tf.data.preprocess import one_hot
from support.helpers import SMALL, built_once, small_config

SPACING = 5.0  # 32 pixels of 5 mm: the tiny model sees the whole heart
ITERATIONS = 300


def _train_tiny_sdnet(cohort, run, cache):
    """Train the tiny SDNet on the training patients of split 0 and write a run directory.

    Quality control needs a model that segments and reconstructs phantom slices, not SDNet's
    schedule: one joint update per iteration (per-class Dice, L1 reconstruction, KL at 0.01)
    costs a fifth of the schedule's five. After 300 iterations of batch 8 (about 25 s on 2
    busy cores) and recomputed BatchNorm statistics, the validation patients' 3-D Dice measured
    0.81-0.91 (LV) and 0.44-0.76 (MYO) and their reconstruction error 0.13-0.14.
    """
    import tensorflow as tf

    from sdnet_tf import losses
    from sdnet_tf.models import SDNet
    from sdnet_tf.training.batchnorm import batchnorm_layers, recalibrate, recalibration_batches

    config = small_config()
    config.data.dataset, config.data.path, config.data.spacing = "acdc", str(cohort), SPACING
    config.data.cache_dir = str(cache)
    config.model.unet_filters = config.model.segmentor_filters = 8
    patients = find_patients(cohort)
    splits = patient_splits(patients)
    arrays, _ = preprocess_cohort(cohort, None, 32, progress=False, spacing=SPACING)
    images = np.concatenate([arrays[n]["images"] for n in splits[0]["training"]]).astype(np.float32)
    masks = one_hot(np.concatenate([arrays[n]["labels"] for n in splits[0]["training"]]))
    keras.utils.set_random_seed(1)
    model = SDNet(**{**SMALL, "unet_filters": 8, "segmentor_filters": 8}, seed=1)
    model.build()
    optimizer = keras.optimizers.Adam(3e-3)
    trained = [v for name, net in model.networks().items() if name != "discriminator" for v in net.trainable_variables]

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            anatomy, z, mean, logvar = model.decompose(x, training=True)
            loss = (losses.dice_loss(model.segmentor(anatomy, training=True), y, mode="per_class")
                    + losses.l1_loss(model.reconstruct(anatomy, z), x) + 0.01 * losses.gaussian_kl(mean, logvar))
        optimizer.apply(tape.gradient(loss, trained), trained)

    rng = np.random.default_rng(0)
    for _ in range(ITERATIONS):
        batch = rng.choice(len(images), 8)
        step(images[batch], masks[batch])

    def forward(x):
        anatomy, _, _, _ = model.decompose(x, training=True, sample=False)
        model.segmentor(anatomy, training=True)

    # BatchNorm statistics of the final weights: the moving averages of a few hundred fast
    # updates describe earlier weights (sdnet_tf/training/batchnorm.py)
    layers = batchnorm_layers(model.anatomy_encoder, model.modality_encoder, model.segmentor)
    recalibrate(forward, layers, recalibration_batches(images, 8, 16, rng))
    run.mkdir()
    model.save(run / "model.keras")
    save_config(config, run / "config.yaml")
    (run / "data.json").write_text(json.dumps({"dataset": "acdc", "data": str(cohort), "splits": splits, "split": 0,
                                               "orientation": "LPS"}))
    return splits[0]


@pytest.fixture(scope="session")
def cohort(phantom_cohort_8, tmp_path_factory):
    """The 10-patient phantom cohort of seed 0: the shared 8 patients linked, patients 9 and 10
    written (a patient is a function of the seed and its number). Its split 0 holds out 2
    validation and 2 test patients (4 frames each) where the 8-patient cohort's holds 1 and 1.
    Written once per test session, for both worker processes (tests/conftest.py, built_once)."""

    def build(folder):
        folder.mkdir()
        for patient in sorted(phantom_cohort_8.glob("patient*")):
            (folder / patient.name).symlink_to(patient)
        for number in (9, 10):
            write_patient(folder, seed=0, number=number)

    return built_once(tmp_path_factory, "phantom10", build)


@pytest.fixture(scope="session")
def trained(cohort, tmp_path_factory):
    """(run directory, export folder, the split's patients) of the tiny SDNet, trained and
    exported once per test session for both worker processes (the quality-control, precision
    and export modules may run in either)."""

    def build(root):
        root.mkdir()
        _train_tiny_sdnet(cohort, root / "run", root / "cache")
        lines = []
        export_run(root / "run", root / "export", log=lines.append)
        assert any("quality control calibrated" in line for line in lines), lines

    root = built_once(tmp_path_factory, "qc", build)
    data = json.loads((root / "run" / "data.json").read_text())
    return root / "run", root / "export", data["splits"][data["split"]]
