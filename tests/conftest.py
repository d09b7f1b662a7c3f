import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sdnet_tf.config import Config  # noqa: E402

SMALL = dict(input_size=32, unet_filters=4, unet_depth=2, segmentor_filters=8, discriminator_filters=4)
# a tiny NVAE for fast prior tests: 32 x 32 masks, 4 latent groups of 3 channels
TINY_NVAE = dict(input_size=32, stem_channels=2, preprocess_blocks=1, groups_per_scale=(1, 1, 2),
                 latent_channels=3, cells_per_group=1, decoder_expansion=2)


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


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _float32_policy():
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


def small_trainer(run_dir, **train):
    """A ``Trainer`` of the tiny SDNet (``small_config(**train)``) on 24 + 8 synthetic images,
    half of them labelled, seeded with 1."""
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


@pytest.fixture(scope="session")
def phantom_cohort_8(tmp_path_factory):
    """An 8-patient phantom cohort (seed 0) in the ACDC layout, written once per test session."""
    from sdnet_tf.data.phantom import write_cohort

    return write_cohort(tmp_path_factory.mktemp("phantom8"), patients=8, seed=0)
