"""Networks: the original's parameter counts, shapes, config round-trip, .keras save/load."""

import keras
import numpy as np
import pytest

from sdnet_tf.models import (AdaINDecoder, AnatomyEncoder, FiLMDecoder, MaskDiscriminator, ModalityEncoder,
                             SDNet, Segmentor)

ORIGINAL_COUNTS = {
    "anatomy_encoder": (34_540_040, 34_526_344),
    "modality_encoder": (95_744, None),
    "decoder": (6_409, 6_409),
    "segmentor": (42_372, None),
    "discriminator": (11_346_881, 11_346_881),
}


def test_original_parameter_counts():
    model = SDNet()
    model.build()
    for name, network in model.networks().items():
        total, trainable = ORIGINAL_COUNTS[name]
        assert network.count_params() == total, name
        if trainable is not None:
            assert sum(int(np.prod(v.shape)) for v in network.trainable_variables) == trainable, name


def test_sixteen_anatomy_channels_of_the_multimodal_experiments_change_exactly_the_c_dependent_layers():
    # MM-WHS MR + CT (2019 paper, 5.3-5.4) use C = 16: from the C = 8 counts, the 1x1 head gains
    # 64 x 8 + 8, the modality encoder's first 3x3 conv 8 x 9 x 16 inputs, the segmentor's first
    # 3x3 conv 8 x 9 x 64, and the decoder, whose every layer is C wide, is recounted
    model = SDNet(anatomy_channels=16)
    model.build()
    c, nz = 16, 8
    block = 2 * (9 * c * c + c) + (nz * 2 * c + 2 * c) + (2 * c * 2 * c + 2 * c)
    expected = {"anatomy_encoder": 34_540_040 + 64 * 8 + 8, "modality_encoder": 95_744 + 8 * 9 * 16,
                "decoder": 4 * block + 9 * c + 1, "segmentor": 42_372 + 8 * 9 * 64, "discriminator": 11_346_881}
    assert {name: net.count_params() for name, net in model.networks().items()} == expected
    assert expected["decoder"] == 24_081 and sum(expected.values()) == 46_055_398


def test_discriminator_ends_at_14x14x1024():
    d = MaskDiscriminator()
    d.build_default()
    assert d.convs[-1].kernel.shape == (4, 4, 512, 1024)
    assert d.score.kernel.shape == (14 * 14 * 1024, 1)


def _networks():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1)).astype("float32")
    s = (np.random.default_rng(1).random((2, 32, 32, 8)) > 0.7).astype("float32")
    z = np.random.default_rng(2).normal(size=(2, 8)).astype("float32")
    m = np.random.default_rng(3).random((2, 32, 32, 3)).astype("float32")
    return [
        (AnatomyEncoder(input_size=32, filters=4), x, (2, 32, 32, 8), {}),
        (ModalityEncoder(input_size=32, seed=3), [s, x], None, {"sample": False}),
        (FiLMDecoder(input_size=32), [s, z], (2, 32, 32, 1), {}),
        (Segmentor(input_size=32, filters=8), s, (2, 32, 32, 3), {}),
        (MaskDiscriminator(input_size=32, filters=4), m, (2, 1), {}),
    ]


@pytest.mark.parametrize("index", range(5))
def test_config_round_trip_and_save_load(tmp_path, index):
    network, inputs, shape, kwargs = _networks()[index]
    out = network(inputs, **kwargs)
    if shape is not None:
        assert tuple(out.shape) == shape
    clone = network.__class__.from_config(network.get_config())
    assert clone.get_config() == network.get_config()
    path = tmp_path / "net.keras"
    network.save(path)
    loaded = keras.models.load_model(path)
    reloaded = loaded(inputs, **kwargs)
    for a, b in zip(keras.tree.flatten(out), keras.tree.flatten(reloaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("binarisation,decoder,lv_volume_head", [
    ("round", "film", False), ("argmax", "film", False), ("round", "adain", False), ("round", "film", True)])
def test_sdnet_save_load_identical_outputs(tmp_path, binarisation, decoder, lv_volume_head):
    model = SDNet(input_size=32, unet_filters=4, segmentor_filters=8, discriminator_filters=4, seed=5,
                  binarisation=binarisation, decoder=decoder, lv_volume_head=lv_volume_head)
    model.build()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1)).astype("float32")
    out = model(x, training=False, sample=False)
    model.save(tmp_path / "sdnet.keras")
    loaded = keras.models.load_model(tmp_path / "sdnet.keras")
    assert loaded.get_config() == model.get_config()
    again = loaded(x, training=False, sample=False)
    for key in out:
        np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(again[key]), err_msg=key)
    if lv_volume_head:
        assert list(loaded.networks())[-1] == "lv_regressor"
        np.testing.assert_array_equal(np.asarray(model.lv_regressor(out["anatomy"])),
                                      np.asarray(loaded.lv_regressor(out["anatomy"])))


def test_sdnet_outputs_and_binary_anatomy():
    model = SDNet(input_size=32, unet_filters=4, segmentor_filters=8, discriminator_filters=4, seed=5)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 1)).astype("float32")
    out = model(x, training=False)
    assert out["anatomy"].shape == (3, 32, 32, 8)
    assert set(np.unique(np.asarray(out["anatomy"]))) <= {0.0, 1.0}
    assert out["z"].shape == (3, 8)
    assert out["reconstruction"].shape == (3, 32, 32, 1)
    masks = np.asarray(out["masks"])
    assert masks.shape == (3, 32, 32, 3)
    assert (masks.sum(-1) <= 1.0 + 1e-5).all()
    recon = np.asarray(out["reconstruction"])
    assert recon.min() >= -1 and recon.max() <= 1


def test_modality_encoder_mean_mode_is_deterministic_and_sampling_is_not():
    enc = ModalityEncoder(input_size=32, seed=1)
    s = np.zeros((2, 32, 32, 8), "float32")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1)).astype("float32")
    z1, mean, _ = enc([s, x], sample=False)
    z2, _, _ = enc([s, x], sample=False)
    np.testing.assert_array_equal(np.asarray(z1), np.asarray(mean))
    np.testing.assert_array_equal(np.asarray(z1), np.asarray(z2))
    z3, _, _ = enc([s, x])
    z4, _, _ = enc([s, x])
    assert not np.allclose(np.asarray(z3), np.asarray(z4))


def test_bad_input_size_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible"):
        AnatomyEncoder(input_size=36)


def test_argmax_binarisation_leaves_no_pixel_without_anatomy_and_no_parameter_added():
    kwargs = dict(input_size=32, unet_filters=4, segmentor_filters=8, discriminator_filters=4, seed=5)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 1)).astype("float32")
    rounded, argmax = SDNet(**kwargs), SDNet(**kwargs, binarisation="argmax")
    anatomy = np.asarray(argmax(x, training=False)["anatomy"])
    np.testing.assert_array_equal(anatomy.sum(-1), np.ones((3, 32, 32)))
    rounded.build()
    argmax.build()
    assert rounded.count_params() == argmax.count_params()


# ---------------------------------------------------------------- AdaIN decoder (M&Ms 2020)
def test_adain_decoder_parameter_count_and_shape():
    # convs 8->4->2->1 (3x3) and 1->1 (7x7): 292 + 74 + 19 + 50; MLP 8->256->256->14:
    # 2,304 + 65,792 + 3,598
    decoder = AdaINDecoder().build_default()
    assert decoder.count_params() == 72_129
    model = SDNet(decoder="adain")
    model.build()
    counts = {name: net.count_params() for name, net in model.networks().items()}
    assert counts == {**{k: v[0] for k, v in ORIGINAL_COUNTS.items()}, "decoder": 72_129}
    anatomy = (np.random.default_rng(0).uniform(size=(2, 224, 224, 8)) > 0.5).astype("float32")
    z = np.random.default_rng(1).normal(size=(2, 8)).astype("float32")
    image = np.asarray(decoder([anatomy, z]))
    assert image.shape == (2, 224, 224, 1) and np.abs(image).max() <= 1.0


def test_z_drives_every_adain_layer_of_the_reconstruction():
    # fixed initial weights: a random initialisation can leave a sample's last ReLU all zero,
    # where no z can reach the image (with seeds 0 to 4 the two samples whose z changes moved by
    # 0.02 to 0.54)
    keras.utils.set_random_seed(0)
    decoder = AdaINDecoder(input_size=32).build_default()
    anatomy = (np.random.default_rng(0).uniform(size=(3, 32, 32, 8)) > 0.5).astype("float32")
    z = np.random.default_rng(1).normal(size=(3, 8)).astype("float32")
    base = np.asarray(decoder([anatomy, z]))
    # another z changes the image, for every sample
    other = np.asarray(decoder([anatomy, z[::-1]]))
    assert np.abs(base - other).reshape(3, -1).max(axis=1)[[0, 2]].min() > 1e-3
    # each block's scale and shift are read: perturbing one block's slice of the MLP's output
    # (by its output bias) changes the image
    last = decoder.mlp[-1]
    kernel, bias = (np.asarray(v) for v in last.weights)
    start = 0
    for width in decoder.widths:
        for offset in (0, width):  # gamma, then beta
            shifted = bias.copy()
            shifted[start + offset:start + offset + width] += 0.5
            last.set_weights([kernel, shifted])
            assert np.abs(np.asarray(decoder([anatomy, z])) - base).max() > 1e-4, (start, offset)
        start += 2 * width
    last.set_weights([kernel, bias])


def test_adain_normalises_each_sample_and_channel_then_applies_gamma_and_beta():
    from sdnet_tf.layers import AdaIN

    x = np.random.default_rng(0).normal(3.0, 2.0, size=(2, 5, 6, 3)).astype("float32")
    gamma = np.array([[1.0, 2.0, 0.5], [3.0, 1.0, 1.0]], "float32")
    beta = np.array([[0.0, -1.0, 4.0], [1.0, 0.0, 2.0]], "float32")
    out = np.asarray(AdaIN()([x, gamma, beta]))
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = np.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, (x - mean) / std * gamma[:, None, None] + beta[:, None, None], atol=1e-5)


# ---------------------------------------------------------------- LV-volume head (2019 paper, 5.2)
def test_lv_volume_head_parameter_count_and_shape():
    # conv 8->16 and 16->16 (3x3): 1,168 + 2,320; Dense 224*224*16 -> 16: 12,845,072; Dense 16 -> 1: 17
    from sdnet_tf.models.lv_regressor import LVVolumeRegressor

    head = LVVolumeRegressor().build_default()
    assert head.count_params() == 12_848_577
    anatomy = (np.random.default_rng(0).uniform(size=(2, 224, 224, 8)) > 0.5).astype("float32")
    counts = np.asarray(head(anatomy))
    assert counts.shape == (2, 1) and (counts >= 0).all()
    model = SDNet(lv_volume_head=True)
    model.build()
    assert list(model.networks()) == ["anatomy_encoder", "modality_encoder", "decoder", "segmentor",
                                      "discriminator", "lv_regressor"]
    assert "lv_regressor" not in SDNet().networks()


def test_lv_volume_target_is_the_lv_pixel_count_of_the_mask():
    from sdnet_tf.training.objectives import lv_pixel_count, lv_volume_loss

    masks = np.zeros((2, 8, 8, 3), "float32")  # SDNet's [MYO, LV, RV]
    masks[0, 2:5, 2:5, 1] = 1.0  # 9 LV pixels
    masks[0, 0, :, 0] = 1.0  # MYO and RV do not count
    masks[1, :, :2, 2] = 1.0
    masks[1, 6, 6, 1] = 1.0  # 1 LV pixel
    np.testing.assert_array_equal(np.asarray(lv_pixel_count(masks)), [[9.0], [1.0]])
    # L1 over the image's 64 pixels: (|12 - 9| + |1 - 1|) / 2 / 64
    assert float(lv_volume_loss(np.array([[12.0], [1.0]], "float32"), masks)) == pytest.approx(1.5 / 64)
