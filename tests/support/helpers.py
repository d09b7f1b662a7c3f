"""What the tests share: the tiny SDNet and NVAE settings, a tiny trainer, and running code on
the JAX backend from the (TensorFlow) pytest process.

Keras picks its backend once per process, so the tests run JAX code in a subprocess whose
environment blocks TensorFlow, as on a machine that has JAX only. The scripts such
subprocesses run live beside this module (``SUPPORT``).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from sdnet_tf.config import Config

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
ROOT = TESTS.parent


def load_script(path):
    """The module of a script that is not a package module (``results/*.py``), loaded from ``path``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def jax_env(tmp_path):
    """A JAX subprocess' environment: the worktree's code, CPU only, TensorFlow blocked.

    XLA's CPU compile time dominates these tests; the classic threefry and LLVM without
    optimisation (code generation only: the same float32 operations) cut it by about half.
    """
    blocker = tmp_path / "block"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "tf_keras", "tensorboard"):
                    raise ImportError(f"{name} is blocked in this test")
                return None
        sys.meta_path.insert(0, _Block())
    """))
    path = [str(blocker), str(ROOT), str(ROOT / "runtime"), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", JAX_THREEFRY_PARTITIONABLE="0",
                XLA_FLAGS="--xla_backend_optimization_level=0", PYTHONPATH=os.pathsep.join(p for p in path if p))


def tensorflow_env():
    """A TensorFlow subprocess' environment with TensorFlow's default thread pools, as training
    runs: the test processes' one-thread setting (tests/conftest.py) left out, the worktree's
    code on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}
    return dict(env, KERAS_BACKEND="tensorflow", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "runtime")]))


def run_jax(tmp_path, args, timeout=900, env=None):
    """Run ``python *args`` from the checkout with ``env`` (default: ``jax_env``); it must succeed."""
    result = subprocess.run([sys.executable, *args], env=env or jax_env(tmp_path), capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


SMALL = dict(input_size=32, unet_filters=4, unet_depth=2, segmentor_filters=8, discriminator_filters=4)
# a tiny NVAE for fast prior tests: 32 x 32 masks, 4 latent groups of 3 channels
TINY_NVAE = dict(input_size=32, stem_channels=2, preprocess_blocks=1, groups_per_scale=(1, 1, 2),
                 latent_channels=3, cells_per_group=1, decoder_expansion=2)
TINY_ACNN = dict(input_size=32, filters=4, levels=2, code_size=8)


def small_config(**train):
    """A tiny SDNet config for fast engine tests (32 x 32, narrow networks)."""
    config = Config()
    for key, value in SMALL.items():
        setattr(config.model, key, value)
    config.train.iterations_per_epoch = 4
    config.train.epochs = 2
    config.train.image_summaries = 1
    config.train.jit_compile = False
    config.data.synthetic_images = 24
    config.data.synthetic_validation = 8
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def small_trainer(run_dir, **train):
    """A ``Trainer`` of the tiny SDNet (``small_config(**train)``) on 24 + 8 synthetic images,
    half of them labelled, seeded with 1."""
    import keras

    from sdnet_tf.config import model_kwargs
    from sdnet_tf.data.synthetic import synthetic_arrays
    from sdnet_tf.models import SDNet
    from sdnet_tf.training.trainer import Trainer

    config = small_config(**train)
    keras.utils.set_random_seed(1)
    arrays = synthetic_arrays(24, 8, 32, 0.5, seed=0)
    model = SDNet(**model_kwargs(config), seed=1)
    model.build()
    return Trainer(model, arrays, config, run_dir, progress=False)


# Tolerances of one SDNet iteration from the same weights, compared between two ways of
# running it (TensorFlow against JAX, one JAX device against two; float32 on the CPU): sums
# rounded in another order. The figures measured for each pair are in its test's comment.
LOSS_RTOL = 1e-5
MODEL_RTOL, MODEL_ATOL = 1e-5, 2e-6
OPTIMIZER_RTOL, OPTIMIZER_ATOL = 1e-4, 3e-5


def assert_same_iteration(expected, got):
    """Two ``engine_iteration.run`` records of one iteration agree: the same initial weights
    exactly, predictions, every step's loss terms, the random state, and the final network
    and optimiser variables within the tolerances above."""
    import numpy as np

    from sdnet_tf.training.schedule import SDNET_SCHEDULE

    for name in (k for k in expected if k.startswith("initial/")):
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    np.testing.assert_allclose(got["predicted"], expected["predicted"], rtol=MODEL_RTOL, atol=MODEL_ATOL)
    terms = [k for k in expected if k.startswith("terms/")]
    assert {k.split("/")[1] for k in terms} == {step.name for step in SDNET_SCHEDULE}
    for name in terms:
        np.testing.assert_allclose(got[name], expected[name], rtol=LOSS_RTOL, err_msg=name)
    np.testing.assert_array_equal(got["seed_state"], expected["seed_state"])
    for name in (k for k in expected if k.startswith("final/")):
        optimizer = name.startswith("final/optimizer_")
        np.testing.assert_allclose(got[name], expected[name], err_msg=name,
                                   rtol=OPTIMIZER_RTOL if optimizer else MODEL_RTOL,
                                   atol=OPTIMIZER_ATOL if optimizer else MODEL_ATOL)


LEARNING_SPACING = 5.0  # mm per pixel of the learning checks' 32 x 32 phantom images


def best_and_first(run, key="val_dice_mean"):
    """The best and the first epoch's value of ``key`` in a run's ``history.csv``."""
    import csv

    rows = list(csv.DictReader((run / "history.csv").open()))
    return max(float(r[key]) for r in rows), float(rows[0][key])


def assert_step_updates_only_its_networks(trainer, step, inputs):
    """Run one update of ``step`` on ``inputs`` and check that exactly the networks it names
    (``step.trains``) changed, and that its loss terms are finite."""
    import numpy as np

    before = {name: [np.array(v) for v in net.trainable_variables] for name, net in trainer.model.networks().items()}
    terms = trainer.engine.run_step(step, *inputs)
    assert all(np.isfinite(v) for v in terms.values()), terms
    for name, net in trainer.model.networks().items():
        changed = any(not np.array_equal(b, np.asarray(v)) for b, v in zip(before[name], net.trainable_variables))
        assert changed == (name in step.trains), (step.name, name)


def logged_image_summaries(trainer, monkeypatch, count=2):
    """The image summaries ``trainer._log_images`` hands its engine with ``count`` images: name -> array."""
    import dataclasses

    logged = {}
    monkeypatch.setattr(trainer.engine, "log_images", lambda images, step: logged.update(images))
    monkeypatch.setattr(trainer, "config", dataclasses.replace(
        trainer.config, train=dataclasses.replace(trainer.config.train, image_summaries=count)))
    trainer._log_images()
    return logged


def built_once(tmp_path_factory, name, build):
    """The folder ``build(folder)`` writes, built once per test session and shared by
    pytest-xdist's worker processes (each of which would otherwise write its own copy: the
    phantom cohorts take 10-20 s each). The first worker to ask builds it under a file lock in
    the session's common temporary folder; the others wait and read it. A folder whose build
    did not finish (no ``<name>.done`` beside it) is written again."""
    import shutil

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-of-<user>/pytest-<n>/: common to the workers of one session
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            done.touch()
    return folder
