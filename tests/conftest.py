"""Fixtures shared by the tests; the helpers they import are in ``support/helpers.py``."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

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

    return write_cohort(tmp_path_factory.mktemp("phantom8"), patients=8, seed=0)


@pytest.fixture(scope="session")
def multimodal_cohort_8(tmp_path_factory):
    """The two-modality phantom (seed 0) with 8 patients in the MM-WHS layout (mr_train/,
    ct_train/), written once per test session."""
    from sdnet_tf.data.phantom import write_multimodal_cohort

    return write_multimodal_cohort(tmp_path_factory.mktemp("phantom-mm8"), patients=8, seed=0)


@pytest.fixture(scope="session")
def mnms_cohort_12(tmp_path_factory):
    """12 phantom patients (seed 0) in the M&Ms layout, vendors A-D in turn (PH0001 A, PH0002 B,
    ...): 3 per vendor, so each vendor has a validation and a test patient; written once per
    test session."""
    from sdnet_tf.data.phantom import write_mnms_cohort

    return write_mnms_cohort(tmp_path_factory.mktemp("mnms12"), patients=12, seed=0)


# The default run's modules, longest first, by their measured share of the suite's time (pytest
# --durations=0, summed per module; two workers, 828 tests). pytest-xdist's loadscope hands
# whole modules to the two workers in collection order (pytest.ini turns off its own reordering,
# which puts the modules with fewest tests, here the longest, last): so the last modules to run
# are short, and neither worker waits long for the other at the end. A module not listed keeps
# its place after these.
LONGEST_FIRST = (
    "training/test_learning_variants.py", "training/test_learning.py", "training/test_engine.py",
    "runtime/test_precision.py", "training/test_jax_engine.py", "training/test_shape_prior.py",
    "runtime/test_export.py", "training/test_baselines.py", "test_mnms_evaluation.py",
    "training/test_multimodal.py", "runtime/test_qc.py", "training/test_tl_training.py", "models/test_nvae.py",
    "runtime/test_geometry.py", "test_evaluation.py", "training/test_batchnorm.py", "models/test_models.py",
    "models/test_sdnet2018.py", "data/test_data.py", "training/test_prior_jax_engine.py",
    "training/test_averaging.py", "models/test_embedder.py",
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
