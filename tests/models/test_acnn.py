"""ACNN shape autoencoder: size at the defaults, linear code, shapes, config and .keras
round trips, gradients, and the label-swap corruption."""

import keras
import numpy as np
import pytest

from sdnet_tf.models import ShapeAutoencoder
from sdnet_tf.models.acnn import swap_labels

# Trainable parameters at the defaults (128 x 128 x 4, code 64, filters 16, 4 levels), counted
# by Keras when this model was first built and checked by hand: encoder convolutions 585,792
# (no bias), code Dense 8192 x 64 + 64 = 524,352, decoder Dense 64 x 8192 + 8192 = 532,480,
# decoder (transposed) convolutions 440,064 + logits conv 580, BatchNorm gamma and beta 2,400.
# The BatchNorm moving statistics add 2,400 non-trainable values.
DEFAULT_TRAINABLE = 2_085_668
DEFAULT_TOTAL = 2_088_068
TINY = dict(input_size=32, code_size=8, filters=4, levels=2)


def _masks(batch, size, classes=4, seed=0):
    labels = np.random.default_rng(seed).integers(0, classes, (batch, size, size))
    return np.eye(classes, dtype="float32")[labels]


@pytest.fixture(scope="module")
def default():
    return ShapeAutoencoder(seed=1).build_default()


def test_default_parameter_count(default):
    trainable = sum(int(np.prod(v.shape)) for v in default.trainable_variables)
    print(f"ACNN shape autoencoder: {trainable:,} trainable, {default.count_params():,} in all")
    assert trainable == DEFAULT_TRAINABLE
    assert default.count_params() == DEFAULT_TOTAL
    assert default.channels == [16, 32, 64, 128, 128]  # doubled per level, capped at 8 x filters


def test_shapes_codes_and_reconstruction(default):
    masks = _masks(2, 128)
    code = np.asarray(default.encode(masks))
    assert code.shape == (2, 64)
    codes = default.codes(masks)
    assert isinstance(codes, list) and len(codes) == 1
    np.testing.assert_array_equal(np.asarray(codes[0]), code)
    logits = np.asarray(default(masks, training=False))
    assert logits.shape == (2, 128, 128, 4)
    np.testing.assert_array_equal(np.asarray(default.reconstruct(masks)), logits)
    np.testing.assert_array_equal(np.asarray(default.decode(code)), logits)


def test_code_is_linear():
    model = ShapeAutoencoder(**TINY, seed=0).build_default()
    masks = _masks(3, 32, seed=1)
    code = np.asarray(model.encode(masks))
    assert (code < 0).any() and (code > 0).any()  # no ReLU / sigmoid on the code
    kernel, bias = (np.asarray(v) for v in model.code.weights)
    bias = bias + np.linspace(-1.0, 1.0, bias.size, dtype="float32")  # a non-zero bias
    model.code.set_weights([kernel, bias])
    code = np.asarray(model.encode(masks))
    for factor in (2.0, -1.0):  # homogeneous (no tanh / sigmoid) and odd (no ReLU)
        model.code.set_weights([factor * kernel, factor * bias])
        np.testing.assert_allclose(np.asarray(model.encode(masks)), factor * code, rtol=1e-6, atol=1e-6)
    shift = np.arange(8, dtype="float32") - 4.0  # an affine map: shifting the bias shifts the code
    model.code.set_weights([kernel, bias + shift])
    np.testing.assert_allclose(np.asarray(model.encode(masks)), code + shift, rtol=1e-6, atol=1e-5)


def test_invalid_size_names_it():
    with pytest.raises(ValueError, match="input_size 100 .*multiple of 16"):
        ShapeAutoencoder(input_size=100)
    with pytest.raises(ValueError, match="input_size 40 .*multiple of 32"):
        ShapeAutoencoder(input_size=40, levels=5)
    ShapeAutoencoder(input_size=48, levels=4)  # 48 = 3 x 16 is fine


def test_config_round_trip_and_save_load(tmp_path):
    model = ShapeAutoencoder(**TINY, seed=3)
    masks = _masks(2, 32, seed=2)
    out = np.asarray(model(masks, training=False))
    clone = ShapeAutoencoder.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert {k: model.get_config()[k] for k in TINY} == TINY
    model.save(tmp_path / "acnn.keras")
    loaded = keras.models.load_model(tmp_path / "acnn.keras")
    assert isinstance(loaded, ShapeAutoencoder) and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(np.asarray(loaded(masks, training=False)), out)
    np.testing.assert_array_equal(np.asarray(loaded.encode(masks)), np.asarray(model.encode(masks)))


def test_every_trainable_variable_gets_a_gradient():
    tf = pytest.importorskip("tensorflow")
    model = ShapeAutoencoder(**TINY, seed=5).build_default()
    masks = _masks(2, 32, seed=3)
    with tf.GradientTape() as tape:
        logits = model(model.corrupt(masks), training=True)
        loss = keras.ops.mean(keras.losses.categorical_crossentropy(masks, logits, from_logits=True))
    grads = tape.gradient(loss, model.trainable_variables)
    assert not [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
    assert not [v.path for v, g in zip(model.trainable_variables, grads) if not np.any(np.asarray(g))]


# ------------------------------------------------------------------ label swapping
def _assert_one_hot(out, dtype):
    assert out.dtype == dtype
    assert set(np.unique(out).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(out.sum(axis=-1), 1.0)


def test_swap_probability_zero_is_the_identity():
    masks = _masks(4, 64, seed=4)
    out = np.asarray(swap_labels(masks, 0.0, keras.random.SeedGenerator(0)))
    np.testing.assert_array_equal(out, masks)


def test_swap_probability_one_draws_uniform_labels():
    masks = np.zeros((8, 64, 64, 4), "float32")
    masks[..., 0] = 1.0  # all background: without swapping every pixel would stay class 0
    out = np.asarray(swap_labels(masks, 1.0, keras.random.SeedGenerator(1)))
    _assert_one_hot(out, np.float32)
    counts = out.reshape(-1, 4).sum(axis=0)
    expected = out.shape[0] * 64 * 64 / 4
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    # 3 degrees of freedom: P(chi^2 > 16.27) = 0.001 for uniform labels
    assert chi_square < 16.27, (counts, chi_square)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_swap_probability_one_tenth_changes_three_quarters_of_a_tenth(dtype):
    masks = _masks(8, 64, seed=5).astype(dtype)
    out = np.asarray(swap_labels(masks, 0.1, keras.random.SeedGenerator(2)))
    _assert_one_hot(out, np.dtype(dtype))
    changed = np.mean(out.argmax(-1) != masks.argmax(-1))
    # 32,768 pixels, expected 0.1 * (1 - 1/4) = 0.075, standard error 0.0015: 0.01 is ~7 sigma
    assert abs(changed - 0.075) < 0.01, changed


def test_swap_is_reproducible_and_model_corrupt_uses_the_model_stream():
    masks = _masks(2, 32, seed=6)
    a = np.asarray(swap_labels(masks, 0.5, keras.random.SeedGenerator(7)))
    b = np.asarray(swap_labels(masks, 0.5, keras.random.SeedGenerator(7)))
    np.testing.assert_array_equal(a, b)
    model = ShapeAutoencoder(**TINY, seed=8)
    first, second = np.asarray(model.corrupt(masks)), np.asarray(model.corrupt(masks))
    assert not np.array_equal(first, second)  # the stream advances
    changed = np.mean(first.argmax(-1) != masks.argmax(-1))
    assert 0.02 < changed < 0.14  # the default probability 0.1


def test_swap_in_a_traced_function_with_unknown_batch():
    tf = pytest.importorskip("tensorflow")
    generator = keras.random.SeedGenerator(9)
    swap = tf.function(lambda m: swap_labels(m, 0.1, generator),
                       input_signature=[tf.TensorSpec((None, None, None, 4), tf.float32)])
    out = swap(_masks(3, 16, seed=7)).numpy()
    assert out.shape == (3, 16, 16, 4)
    _assert_one_hot(out, np.float32)
