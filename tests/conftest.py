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
