"""The MICCAI 2018 precursor: the original's parameter counts, shapes, where it binarises,
save/load, its config and its Dice, and which networks each of its three steps updates."""

import keras
import numpy as np
import pytest
from keras import ops

from support.helpers import assert_step_updates_only_its_networks
from sdnet_tf.apps.train import build_sdnet
from sdnet_tf.config import ConfigError, load_config, save_config
from sdnet_tf.data.synthetic import synthetic_arrays
from sdnet_tf.losses import dice_coefficient
from sdnet_tf.models import SDNet2018
from sdnet_tf.training.schedule import SDNET2018_SCHEDULE
from sdnet_tf.training.trainer import Trainer2018


def _conv(k, cin, cout):
    return k * k * cin * cout + cout


def _original_counts(size=224, f=64, nz=16, d=32):
    """Parameter counts of agis85/spatial_factorisation's networks, layer by layer from its code
    (BatchNorm: 4 per channel, 2 of them trainable); its z head has 256 and 64 filters, 4f and f."""
    bn = 4

    def block(cin, cout):  # models/unet.py conv_block: (conv, BN, LeakyReLU) x 2
        return _conv(3, cin, cout) + bn * cout + _conv(3, cout, cout) + bn * cout

    widths = [f, 2 * f, 4 * f, 8 * f]
    unet = sum(block(cin, cout) for cin, cout in zip([1] + widths[:-1], widths)) + block(8 * f, 16 * f)
    for cin, cout in zip([16 * f, 8 * f, 4 * f, 2 * f], [8 * f, 4 * f, 2 * f, f]):
        unet += _conv(3, cin, cout) + bn * cout + block(2 * cout, cout)  # upsample_block, concat, conv_block
    unet += _conv(1, f, 1)  # the sigmoid mask
    bottom = size // 16
    z_head = (_conv(3, 16 * f, 4 * f) + bn * 4 * f + _conv(3, 4 * f, f) + bn * f
              + bottom * bottom * f * 32 + 32 + 32 * nz + nz)
    reconstructor = (nz * 32 + 32 + 32 * size * size + size * size + _conv(3, 16, 16) + bn * 16
                     + _conv(3, 16, 8) + bn * 8 + 3 * 2 * (_conv(3, 9, 9) + 2 * 9) + _conv(7, 9, 1))
    discriminator = (_conv(4, 1, d) + _conv(4, d, 2 * d) + _conv(4, 2 * d, 4 * d) + _conv(4, 4 * d, 8 * d)
                     + _conv(4, 8 * d, 1))
    return {"decomposer": unet + z_head, "reconstructor": reconstructor,
            "mask_discriminator": discriminator, "image_discriminator": discriminator}


def test_original_parameter_counts():
    model = SDNet2018()
    model.build()
    expected = _original_counts()
    assert expected == {"decomposer": 37_449_905, "reconstructor": 1_664_906, "mask_discriminator": 693_217,
                        "image_discriminator": 693_217}
    assert {name: net.count_params() for name, net in model.networks().items()} == expected


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(3)
    model = SDNet2018(input_size=32, unet_filters=4, discriminator_filters=4)
    model.build()
    return model


def _images(n=3, size=32, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 1)).astype("float32")


def test_shapes(tiny):
    out = tiny(_images(), training=False)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "masks": (3, 32, 32, 1), "anatomy": (3, 32, 32, 1), "z": (3, 16), "reconstruction": (3, 32, 32, 1),
        "mask_score": (3, 4, 4, 1), "image_score": (3, 4, 4, 1)}
    z = np.asarray(out["z"])
    assert (z > 0).all() and (z < 1).all()
    assert _original_counts(32, 4, d=4) == {name: net.count_params() for name, net in tiny.networks().items()}


def test_the_mask_is_soft_and_binarised_only_at_the_reconstructor_input(tiny):
    images = _images()
    mask, z = tiny.decompose(images, training=False)
    mask = np.asarray(mask)
    # the segmentation (and the decomposer's output) is the sigmoid itself
    assert ((mask > 0.01) & (mask < 0.99)).mean() > 0.5
    np.testing.assert_array_equal(np.asarray(tiny.segment(images, training=False)), mask)
    # the reconstructor reads round(mask): the soft mask and its rounding give the same image
    rounded = np.round(mask).astype("float32")
    np.testing.assert_allclose(np.asarray(tiny.reconstruct(mask, z, training=False)),
                               np.asarray(tiny.reconstruct(rounded, z, training=False)), atol=1e-6)
    # ...and a mask 0.4 / 0.6 apart on either side of 0.5 does too, while flipping a pixel changes it
    np.testing.assert_allclose(np.asarray(tiny.reconstruct(np.full_like(mask, 0.4), z, training=False)),
                               np.asarray(tiny.reconstruct(np.zeros_like(mask), z, training=False)), atol=1e-6)
    assert not np.allclose(np.asarray(tiny.reconstruct(np.ones_like(mask), z, training=False)),
                           np.asarray(tiny.reconstruct(np.zeros_like(mask), z, training=False)), atol=1e-4)
    # the binarisation is straight-through: the reconstruction's gradient reaches the soft mask
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        soft = tf.constant(mask)
        with tf.GradientTape() as tape:
            tape.watch(soft)
            loss = ops.mean(tiny.reconstruct(soft, z, training=False))
        assert float(tf.reduce_max(tf.abs(tape.gradient(loss, soft)))) > 0


def test_save_load_gives_identical_outputs(tiny, tmp_path):
    images = _images()
    path = tmp_path / "model.keras"
    tiny.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, SDNet2018) and loaded.get_config() == tiny.get_config()
    before, after = tiny(images, training=False), loaded(images, training=False)
    for key in before:
        np.testing.assert_array_equal(np.asarray(before[key]), np.asarray(after[key]), err_msg=key)


def test_config_round_trip_and_the_myocardium_only_check(tmp_path):
    config = load_config("sdnet2018-acdc")
    assert (config.model.kind, config.model.num_classes, config.model.nz) == ("sdnet2018", 1, 16)
    assert (config.loss.dice_mode, config.train.decay, config.train.patience) == ("miccai2018", 0.0, 20)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(str(tmp_path / "config.yaml")).to_dict() == config.to_dict()
    model = build_sdnet(config)
    assert isinstance(model, SDNet2018) and (model.nz, model.discriminator_filters) == (16, 32)
    with pytest.raises(ConfigError, match="num_classes 1"):
        build_sdnet(load_config("sdnet2018-acdc", ["model.num_classes=3"]))
    with pytest.raises(ConfigError, match="sdnet, sdnet2018"):
        load_config("sdnet2018-acdc", ["model.kind=sdnet2017"])
    # settings of the 2019 model it would not read are refused, not ignored
    for override, name in (("model.lv_volume_head=true", "model.lv_volume_head"), ("model.decoder=adain", "model.decoder"),
                           ("model.anatomy_channels=16", "model.anatomy_channels"), ("loss.focal=1", "loss.focal"),
                           ("loss.shape_prior=/some/prior", "loss.shape_prior")):
        with pytest.raises(ConfigError, match=f"does not read {name}"):
            build_sdnet(load_config("sdnet2018-acdc", [override]))
    build_sdnet(load_config("sdnet2018-acdc-cpu"))  # the CPU protocol's config sets nothing it ignores


def test_the_precursors_dice_adds_the_smoothing_before_doubling():
    pred = np.zeros((2, 4, 4, 1), np.float32)
    target = np.zeros((2, 4, 4, 1), np.float32)
    pred[1, :2, :2] = 1.0  # 4 pixels predicted
    target[1, :2, :1] = 1.0  # 2 of them true
    values = np.asarray(dice_coefficient(pred, target, mode="miccai2018"))
    np.testing.assert_allclose(values, [2.0, 2 * (2 + 0.1) / (6 + 0.1)], rtol=1e-6)
    pooled = np.asarray(dice_coefficient(pred, target, mode="pooled"))
    np.testing.assert_allclose(pooled, [1.0, (4 + 0.1) / (6 + 0.1)], rtol=1e-6)


@pytest.fixture(scope="module")
def trainer_2018(tmp_path_factory):
    config = load_config("sdnet2018-acdc", ["model.input_size=32", "model.unet_filters=4",
                                            "model.discriminator_filters=4", "train.image_summaries=0",
                                            "train.jit_compile=false", "train.iterations_per_epoch=2",
                                            "train.epochs=1", "data.dataset=synthetic"])
    keras.utils.set_random_seed(1)
    model = build_sdnet(config)
    model.build()
    arrays = synthetic_arrays(16, 8, 32, 0.5, seed=0)
    trainer = Trainer2018(model, arrays, config, tmp_path_factory.mktemp("run2018"), progress=False)
    trainer.train_iteration()  # optimiser slots built, the pool filled
    return trainer


def test_the_myocardium_channel_is_the_target(trainer_2018):
    a = trainer_2018.arrays
    assert a.labelled_masks.shape[-1] == a.real_masks.shape[-1] == a.validation_masks.shape[-1] == 1
    full = synthetic_arrays(16, 8, 32, 0.5, seed=0)
    np.testing.assert_array_equal(a.labelled_masks[..., 0], full.labelled_masks[..., 0])  # MYO is SDNet's first


@pytest.mark.parametrize("step", SDNET2018_SCHEDULE, ids=lambda s: s.name)
def test_each_step_updates_exactly_the_networks_it_names(trainer_2018, step):
    trainer = trainer_2018
    batch = trainer.sampler.batches(5)
    if step.objective == "discriminators_2018":
        masks = batch["labelled_masks"]
        inputs = (masks, np.asarray(trainer.engine.predict_masks(batch["discriminator_images"])),
                  batch["discriminator_images"],
                  trainer.engine.infer("fake_images_2018", batch["discriminator_images"], masks))
    elif step.objective == "supervised_2018":
        inputs = (batch["labelled_images"], batch["labelled_masks"])
    else:
        inputs = (batch["unlabelled_images"],)
    assert_step_updates_only_its_networks(trainer, step, inputs)
