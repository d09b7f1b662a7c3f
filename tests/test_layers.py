"""Custom layers: straight-through binarisation, FiLM, sampling, spectral penalty."""

import numpy as np
import pytest
import tensorflow as tf

from sdnet_tf.layers import Binarise, FiLM, GaussianSample, SpectralPenalty


def test_binarise_forward_is_exactly_binary(rng):
    soft = tf.nn.softmax(tf.constant(rng.normal(size=(2, 5, 5, 8)) * 3, tf.float32))
    out = Binarise()(soft).numpy()
    assert set(np.unique(out)) <= {0.0, 1.0}
    np.testing.assert_array_equal(out, np.round(soft.numpy()))


def test_binarise_pixel_with_no_value_above_half_is_all_zero():
    soft = tf.constant([[[[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]]]], tf.float32)
    out = Binarise()(soft).numpy()
    np.testing.assert_array_equal(out, [[[[0, 0, 0], [1, 0, 0]]]])


def test_argmax_binarisation_gives_every_pixel_exactly_one_channel(rng):
    soft = tf.constant([[[[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.2, 0.4, 0.4]]]], tf.float32)
    out = Binarise("argmax")(soft).numpy()
    np.testing.assert_array_equal(out, [[[[1, 0, 0], [1, 0, 0], [0, 1, 0]]]])  # ties: the first channel
    soft = tf.nn.softmax(tf.constant(rng.normal(size=(2, 5, 5, 8)), tf.float32))
    out = Binarise("argmax")(soft).numpy()
    np.testing.assert_array_equal(out.sum(-1), np.ones((2, 5, 5)))
    np.testing.assert_array_equal(out.argmax(-1), soft.numpy().argmax(-1))
    assert Binarise.from_config(Binarise("argmax").get_config()).mode == "argmax"


def test_an_unknown_binarisation_is_refused():
    with pytest.raises(ValueError, match="binarisation 'floor': expected one of round, argmax"):
        Binarise("floor")


@pytest.mark.parametrize("mode", ["round", "argmax"])
def test_binarise_gradient_is_the_incoming_gradient(rng, mode):
    soft = tf.Variable(rng.random((2, 4, 4, 3)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(2, 4, 4, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        y = Binarise(mode)(soft)
        loss = tf.reduce_sum(y * upstream)
    grad = tape.gradient(loss, soft)
    np.testing.assert_array_equal(grad.numpy(), upstream.numpy())


def test_film_golden():
    features = np.arange(8, dtype="float32").reshape(1, 2, 2, 2)
    gamma = np.array([[2.0, -1.0]], "float32")
    beta = np.array([[0.5, 3.0]], "float32")
    out = FiLM()([features, gamma, beta]).numpy()
    expected = features * np.array([2.0, -1.0]) + np.array([0.5, 3.0])
    np.testing.assert_allclose(out, expected)


def test_gaussian_sample_statistics():
    mean = np.full((20000, 2), 1.5, "float32")
    logvar = np.log(np.full((20000, 2), 4.0, "float32"))
    z = GaussianSample(seed=0)([mean, logvar]).numpy()
    assert abs(z.mean() - 1.5) < 0.05
    assert abs(z.std() - 2.0) < 0.05
    np.testing.assert_array_equal(GaussianSample(seed=0)([mean, logvar], sample=False).numpy(), mean)


def test_spectral_penalty_golden_on_a_scaled_orthogonal_kernel():
    # W = 3 * I: sigma = 3, W / sigma = I, penalty = alpha * mean(|I - 3I|) = 10 * 2 * (4 / 16)
    kernel = tf.constant(3.0 * np.eye(4, dtype="float32"))
    assert abs(float(SpectralPenalty(alpha=10.0)(kernel)) - 5.0) < 1e-4


def test_spectral_penalty_matches_svd_with_enough_iterations(rng):
    kernel = rng.normal(size=(4, 4, 3, 5)).astype("float32")
    w = kernel.reshape(-1, 5)
    sigma = np.linalg.svd(w, compute_uv=False)[0]
    expected = 10.0 * np.mean(np.abs(w / sigma - w))
    got = float(SpectralPenalty(alpha=10.0, power_iterations=50)(tf.constant(kernel)))
    np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_spectral_penalty_gradient_treats_target_as_constant(rng):
    kernel = tf.Variable(rng.normal(size=(6, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        penalty = SpectralPenalty(alpha=1.0)(kernel)
    grad = tape.gradient(penalty, kernel).numpy()
    w = kernel.numpy()
    target = w / np.linalg.svd(w, compute_uv=False)[0]
    # d/dW mean(|target - W|) with target constant is -sign(target - W) / n
    np.testing.assert_allclose(grad, -np.sign(target - w) / w.size, atol=1e-6)
