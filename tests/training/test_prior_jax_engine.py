"""The shape priors' and the U-Net's JAX engine: one NVAE step and one ACNN step equal to the
TensorFlow engine's, the finite-value guard, and runs that move between backends (a prior begun on
TensorFlow resumed on JAX and back, a U-Net with the shape loss trained on JAX, all through
the command line, with TensorFlow blocked in the JAX process).
"""

import json
import textwrap

import pytest

pytest.importorskip("jax")

import numpy as np  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from support import prior_step_parity  # noqa: E402
from cli import main  # noqa: E402
from support.helpers import SUPPORT, run_jax  # noqa: E402
from sdnet_tf.config import PriorConfig, save_config  # noqa: E402
from sdnet_tf.data.phantom import write_cohort  # noqa: E402
from sdnet_tf.inference import load_prior  # noqa: E402

# Measured on the 2-core CI machine: loss terms agree to 1.1e-7 relative, weights to 2.9e-6
# absolute after a step that moves them by up to 1e-3, the spectral vectors to 7.5e-8.
# Adamax's moments agree to 5e-5 relative where the gradient is real; where it is float32
# noise around zero (the biases feeding BatchNorm) they differ by up to 2.9e-6 absolute. A
# gradient element far below its tensor's largest is float32 noise of that tensor's sums: in
# ACNN's step one of 1,152 elements of a kernel's Adamax norm, 3e-4 beside elements up to 7.7,
# differs by 2.9e-5, so differences are also allowed up to 1e-5 of the tensor's largest value.
LOSS_RTOL = 1e-5
MODEL_RTOL, MODEL_ATOL = 1e-4, 2e-5
OPTIMIZER_RTOL, OPTIMIZER_ATOL, OPTIMIZER_SCALE = 1e-2, 2e-5, 1e-5


# slow for the NVAE (about 68 s of setup, mostly XLA compiling its step), like the prior runs
# moved between the backends below; ACNN's tiny autoencoder compiles in seconds, so its parity is
# the default run's numerical check of the priors' JAX engine (the default run also holds the
# TensorFlow-JAX parity of SDNet's iteration, test_jax_engine.py, and the TensorFlow engine's
# finite-value guard, test_shape_prior.py)
@pytest.fixture(scope="module", params=[pytest.param("nvae", marks=pytest.mark.slow), "acnn"])
def parity(request, tmp_path_factory):
    """One step and one skipped step of a prior on each backend from the same weights:
    ``(kind, tensorflow, jax, initial)``."""
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"prior-parity-{kind}")
    import keras

    drawn = keras.random.normal, keras.random.uniform, keras.random.randint
    try:
        tensorflow = prior_step_parity.run(tmp / "initial.npz", kind=kind)  # writes the initial weights for JAX
    finally:
        keras.random.normal, keras.random.uniform, keras.random.randint = drawn
    run_jax(tmp, [str(SUPPORT / "prior_step_parity.py"), str(tmp / "initial.npz"), str(tmp / "jax.npz"), kind])
    with np.load(tmp / "jax.npz") as data:
        jax = {k: data[k] for k in data.files}
    with np.load(tmp / "initial.npz") as data:
        initial = {k: data[k] for k in data.files}
    return kind, tensorflow, jax, initial


# the loss terms each prior's step reports
TERMS = {"nvae": {"terms/reconstruction", "terms/kl_weighted", "terms/spectral", "terms/total"},
         "acnn": {"terms/reconstruction", "terms/total"}}


def test_one_prior_step_matches_the_tensorflow_engine(parity):
    kind, tensorflow, jax, initial = parity
    assert set(tensorflow) == set(jax)
    terms = [k for k in tensorflow if k.startswith("terms/")]
    assert TERMS[kind] <= set(terms)
    if kind == "acnn":  # the denoising input differs from the clean masks, the same way on both
        assert 0.05 < tensorflow["swapped_share"] == jax["swapped_share"] < 0.5
    for name in terms:
        np.testing.assert_allclose(jax[name], tensorflow[name], rtol=LOSS_RTOL, err_msg=name)
    moved = 0.0
    for name in (k for k in tensorflow if k.startswith("model/")):
        if np.issubdtype(tensorflow[name].dtype, np.floating):
            np.testing.assert_allclose(jax[name], tensorflow[name], rtol=MODEL_RTOL, atol=MODEL_ATOL, err_msg=name)
            moved = max(moved, float(np.max(np.abs(tensorflow[name] - initial[name[6:]]))))
        else:  # the seed generator's state: both drew the same number of times
            np.testing.assert_array_equal(jax[name], tensorflow[name], err_msg=name)
            if kind == "nvae":  # its latent samples draw from it
                assert not np.array_equal(tensorflow[name], initial[name[6:]])
    assert moved > 50 * MODEL_ATOL  # the step moved the weights far more than the backends differ
    for name in (k for k in tensorflow if k.startswith(("optimizer/", "extra/"))):
        if not np.issubdtype(tensorflow[name].dtype, np.floating):  # a seed state: exactly equal
            np.testing.assert_array_equal(jax[name], tensorflow[name], err_msg=name)
            continue
        scale = float(np.max(np.abs(tensorflow[name]))) if tensorflow[name].size else 0.0
        np.testing.assert_allclose(jax[name], tensorflow[name], rtol=OPTIMIZER_RTOL,
                                   atol=max(OPTIMIZER_ATOL, OPTIMIZER_SCALE * scale), err_msg=name)
    if kind == "acnn":  # the label swap's seed state ([seed, counter]) advanced by its two draws
        assert tensorflow["extra/0000"][1] == 2, tensorflow["extra/0000"]


def test_a_non_finite_step_leaves_weights_statistics_and_optimiser_alone_on_both_engines(parity):
    _, tensorflow, jax, _ = parity
    for result in (tensorflow, jax):
        assert result["skipped"] == 1.0
        # weights, BatchNorm statistics and every optimiser variable as after the good step
        assert result["unchanged_after_skip"] == 1.0


RUN_SCRIPT = """
import json
import sys
from click.testing import CliRunner
from cli import main

def train(*args):
    result = CliRunner().invoke(main, ["train", *args, "--backend", "jax", "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output

print(train("nvae", "-c", {config!r}, "-o", {prior!r}, "--epochs", "2"))
print(train("unet", "-c", {unet!r}, "-o", {unet_run!r}, "--shape-prior", {prior!r}))
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
assert not loaded, loaded
"""


# slow: three training runs across two backends (about 1.5 minutes)
@pytest.mark.slow
def test_prior_runs_move_between_backends_and_the_shape_loss_trains_on_jax(tmp_path):
    """An NVAE run begun with TensorFlow (1 epoch) is resumed with JAX (epoch 2), which then
    trains a U-Net with its shape loss; TensorFlow resumes the NVAE for epoch 3 and loads it."""
    cohort = write_cohort(tmp_path / "phantom", patients=6, seed=0)
    config = PriorConfig()
    for key, value in prior_step_parity.TINY.items():
        setattr(config.model, key, value)
    config.train.batch_size, config.train.epochs, config.train.steps_per_epoch = 4, 1, 2
    config.train.validation_samples, config.train.spectral_weight = 4, 0.1
    config.data.path, config.data.spacing, config.data.cache_dir = str(cohort), 5.0, str(tmp_path / "cache")
    save_config(config, tmp_path / "nvae.yaml")
    (tmp_path / "unet.yaml").write_text(textwrap.dedent(f"""
        model: {{input_size: 32, filters: 4, depth: 2}}
        loss: {{omega_batches: 2}}
        train: {{batch_size: 4, epochs: 1, steps_per_epoch: 2}}
        data: {{path: {cohort}, spacing: 5.0, cache_dir: {tmp_path / "cache"}}}
    """))
    prior, unet = tmp_path / "prior", tmp_path / "unet"
    runner = CliRunner()
    first = runner.invoke(main, ["train", "nvae", "-c", str(tmp_path / "nvae.yaml"), "-o", str(prior), "--quiet"])
    assert first.exit_code == 0, first.output

    output = run_jax(tmp_path, ["-c", RUN_SCRIPT.format(config=str(tmp_path / "nvae.yaml"), prior=str(prior),
                                                        unet=str(tmp_path / "unet.yaml"), unet_run=str(unet))]).stdout
    assert "after 4 steps" in output and "after 2 steps" in output, output
    log = (prior / "train.log").read_text()
    assert "resumed nvae from" in log and "(epoch 1, step 2)" in log
    summary = json.loads((unet / "summary.json").read_text())
    assert summary["omega"] > 0 and summary["steps"] == 2
    assert "backend: jax" in (prior / "config.yaml").read_text()

    back = runner.invoke(main, ["train", "nvae", "-c", str(tmp_path / "nvae.yaml"), "-o", str(prior), "--epochs", "3",
                                "--quiet"])
    assert back.exit_code == 0 and "after 6 steps" in back.output, back.output
    history = (prior / "history.csv").read_text().splitlines()
    assert len(history) == 4 and all(row.split(",")[0] == str(i) for i, row in enumerate(history[1:], 1))
    model, loaded = load_prior(prior)
    assert loaded.train.backend == "tensorflow" and not model.trainable
