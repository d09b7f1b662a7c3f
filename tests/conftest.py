"""Fixtures shared by the tests; the helpers they import are in ``support/helpers.py``."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One thread per TensorFlow process, for its ops (intra-op) and for running independent ops side
# by side (inter-op): the suite runs in two worker processes on two cores (pytest.ini), and the
# tests' networks are tiny, so their time goes into dispatching thousands of small ops, not into
# arithmetic. With TensorFlow's default of a pool per core in each worker, four or more threads
# contend for the two cores: the tiny SDNet learning check, run twice side by side, took 108 s
# each that way and 56 s each with one thread. Set here, before TensorFlow starts, and so also
# in the command-line subprocesses the tests start (support.helpers.tensorflow_env leaves them
# out where a test needs the defaults); an environment that sets them keeps its own.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from support.helpers import built_once  # noqa: E402

if keras.backend.backend() == "tensorflow":
    # The tests' networks are tiny, so their time goes into building graphs, not running
    # them: Grappler's graph rewriting on each tf.function's first call made up about a third
    # of a tiny SDNet's first iteration (15 s -> 10 s without it). Training runs turn it off
    # themselves only where it measured slower (train.graph_rewriting auto, speed.py); the
    # tests check the mathematics, which Grappler must not change.
    import tensorflow as tf  # noqa: E402

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _float32_policy():
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def phantom_cohort_8(tmp_path_factory):
    """An 8-patient phantom cohort (seed 0) in the ACDC layout, written once per test session."""
    from sdnet_tf.data.phantom import write_cohort

    return built_once(tmp_path_factory, "phantom8", lambda out: write_cohort(out, patients=8, seed=0))


@pytest.fixture(scope="session")
def multimodal_cohort_8(tmp_path_factory):
    """The two-modality phantom (seed 0) with 8 patients in the MM-WHS layout (mr_train/,
    ct_train/), written once per test session."""
    from sdnet_tf.data.phantom import write_multimodal_cohort

    return built_once(tmp_path_factory, "phantom-mm8", lambda out: write_multimodal_cohort(out, patients=8, seed=0))


@pytest.fixture(scope="session")
def mnms_cohort_12(tmp_path_factory):
    """12 phantom patients (seed 0) in the M&Ms layout, vendors A-D in turn (PH0001 A, PH0002 B,
    ...): 3 per vendor, so each vendor has a validation and a test patient; written once per
    test session."""
    from sdnet_tf.data.phantom import write_mnms_cohort

    return built_once(tmp_path_factory, "mnms12", lambda out: write_mnms_cohort(out, patients=12, seed=0))


# The default run's modules, longest first, by their measured share of the suite's time (pytest
# --durations=0 with --junitxml, summed per module; two workers, 821 tests, one TensorFlow
# thread each). pytest-xdist's loadscope hands whole modules to the two workers in collection
# order (pytest.ini turns off its own reordering, which puts the modules with fewest tests, here
# the longest, last): so the last modules to run are short, and neither worker waits long for
# the other at the end. A module not listed keeps its place after these.
LONGEST_FIRST = (
    "training/test_learning.py", "runtime/test_precision.py", "training/test_shape_prior.py",
    "training/test_engine.py", "test_mnms_evaluation.py", "training/test_jax_engine.py",
    "training/test_learning_variants.py", "runtime/test_export.py", "runtime/test_geometry.py",
    "models/test_nvae.py", "test_evaluation.py", "data/test_data.py", "training/test_tl_training.py",
    "training/test_baselines.py", "training/test_batchnorm.py", "models/test_models.py",
    "models/test_embedder.py", "training/test_averaging.py", "models/test_sdnet2018.py",
    "training/test_factor_augmentation.py", "metrics/test_validity.py", "runtime/test_qc.py",
    "data/test_mnms.py",
)


def pytest_collection_modifyitems(config, items):
    """Order the collected modules by ``LONGEST_FIRST`` (a stable sort: a module's own tests
    keep their order)."""
    from pathlib import Path

    tests = Path(__file__).parent
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item):
        try:
            name = Path(item.path).relative_to(tests).as_posix()
        except ValueError:
            return len(rank)
        return rank.get(name, len(rank))

    items.sort(key=key)


def pytest_sessionfinish(session, exitstatus):
    """Take JAX's garbage-collection callback out before the process ends. It calls into XLA on
    every full collection, and one that ran while the two-worker suite shut down was interrupted
    there, which pytest printed as an unraisable-exception warning with a traceback after the
    last test (nothing had failed)."""
    import gc
    import sys

    lib = sys.modules.get("jax._src.lib")
    callback = getattr(lib, "_xla_gc_callback", None)
    if callback is not None and callback in gc.callbacks:
        gc.callbacks.remove(callback)
