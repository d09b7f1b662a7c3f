"""Golden values of every loss on hand-computed arrays; KL against TensorFlow Probability."""

import numpy as np
import pytest

from sdnet_tf import losses


def _masks():
    # one sample, 2 x 2 pixels, 2 channels
    pred = np.array([[[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.0, 0.0]]]], "float32")
    target = np.array([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]], "float32")
    return pred, target


def test_dice_pooled_golden():
    pred, target = _masks()
    # sum(p*m) = 1 + 0.5 + 1 = 2.5; sum(p) = 3; sum(m) = 4
    expected = (2 * 2.5 + 0.1) / (3 + 4 + 0.1)
    assert float(losses.dice_coefficient(pred, target)[0]) == pytest.approx(expected, rel=1e-6)
    assert float(losses.dice_loss(pred, target)) == pytest.approx(1 - expected, rel=1e-6)


def test_dice_per_class_golden():
    pred, target = _masks()
    # channel 0: inter 1.5, sum p 1.5, sum m 2; channel 1: inter 1, sum p 1.5, sum m 2
    c0 = (2 * 1.5 + 0.1) / (3.5 + 0.1)
    c1 = (2 * 1.0 + 0.1) / (3.5 + 0.1)
    got = float(losses.dice_loss(pred, target, mode="per_class"))
    assert got == pytest.approx(1 - (c0 + c1) / 2, rel=1e-6)


def test_dice_batch_golden():
    # two samples; channel 1 is absent from sample 1 and predicted there at 0.5 on one pixel
    pred, target = _masks()
    pred2 = np.zeros_like(pred)
    pred2[0, 0, 0] = [1.0, 0.5]
    target2 = np.zeros_like(target)
    target2[0, 0, 0, 0] = 1.0
    pred, target = np.concatenate([pred, pred2]), np.concatenate([target, target2])
    # channel 0 over the batch: inter 1.5 + 1, sum p 1.5 + 1, sum m 2 + 1; channel 1: inter 1,
    # sum p 1.5 + 0.5, sum m 2
    c0 = (2 * 2.5 + 0.1) / (2.5 + 3 + 0.1)
    c1 = (2 * 1.0 + 0.1) / (2.0 + 2 + 0.1)
    coefficient = np.asarray(losses.dice_coefficient(pred, target, mode="batch"))
    np.testing.assert_allclose(coefficient, [(c0 + c1) / 2] * 2, rtol=1e-6)
    assert float(losses.dice_loss(pred, target, mode="batch")) == pytest.approx(1 - (c0 + c1) / 2, rel=1e-6)
    # per_class scores sample 1's absent channel alone: 0.1 / 0.6, far below the batch term
    per_class = np.asarray(losses.dice_coefficient(pred, target, mode="per_class"))
    assert per_class[1] == pytest.approx(((2 * 1 + 0.1) / (2 + 0.1) + 0.1 / 0.6) / 2, rel=1e-6)


def test_dice_perfect_empty_and_disjoint():
    m = np.zeros((2, 3, 3, 3), "float32")
    m[0, 1, 1, 0] = 1
    assert float(losses.dice_loss(m, m)) == pytest.approx(0.0, abs=1e-7)  # sample 1 empty-vs-empty: 0.1/0.1
    p = np.zeros_like(m)
    p[0, 0, 0, 1] = 1
    # sample 0: 0.1 / 2.1; sample 1: 1
    assert float(losses.dice_loss(p, m)) == pytest.approx(1 - (0.1 / 2.1 + 1) / 2, rel=1e-6)


def test_dice_mode_is_validated():
    pred, target = _masks()
    with pytest.raises(ValueError, match="pooled"):
        losses.dice_loss(pred, target, mode="mean")


def test_l1_golden():
    assert float(losses.l1_loss(np.array([1.0, -2.0, 0.5]), np.array([0.0, 0.0, 1.0]))) == pytest.approx(
        (1 + 2 + 0.5) / 3)


def test_lsgan_golden():
    real = np.array([[1.0], [0.0]], "float32")
    fake = np.array([[0.5], [-1.0]], "float32")
    # D: mean((real-1)^2) = (0 + 1) / 2; mean(fake^2) = (0.25 + 1) / 2
    assert float(losses.lsgan_discriminator_loss(real, fake)) == pytest.approx(0.5 + 0.625)
    # G: mean((fake-1)^2) = (0.25 + 4) / 2
    assert float(losses.lsgan_generator_loss(fake)) == pytest.approx(2.125)


def test_kl_zero_at_prior_and_golden():
    assert float(losses.gaussian_kl(np.zeros((3, 8)), np.zeros((3, 8)))) == pytest.approx(0.0)
    mean = np.array([[1.0, 0.0]], "float32")
    logvar = np.array([[0.0, np.log(2.0)]], "float32")
    # -0.5 * [(1 + 0 - 1 - 1) + (1 + ln2 - 0 - 2)] = -0.5 * (-2 + ln 2)
    assert float(losses.gaussian_kl(mean, logvar)) == pytest.approx(-0.5 * (-2 + np.log(2.0)), rel=1e-6)


def test_kl_matches_tensorflow_probability(rng):
    tfp = pytest.importorskip("tensorflow_probability")
    tfd = tfp.distributions
    mean = rng.normal(size=(5, 8)).astype("float32")
    logvar = rng.normal(scale=0.5, size=(5, 8)).astype("float32")
    q = tfd.MultivariateNormalDiag(loc=mean, scale_diag=np.exp(0.5 * logvar))
    p = tfd.MultivariateNormalDiag(loc=np.zeros_like(mean), scale_diag=np.ones_like(mean))
    expected = float(np.mean(tfd.kl_divergence(q, p).numpy()))
    assert float(losses.gaussian_kl(mean, logvar)) == pytest.approx(expected, rel=1e-5)


def test_z_reconstruction_is_l1():
    a = np.array([[0.0, 1.0]], "float32")
    b = np.array([[1.0, -1.0]], "float32")
    assert float(losses.z_reconstruction_loss(a, b)) == pytest.approx(1.5)


def test_losses_are_float32_for_half_precision_inputs():
    pred, target = _masks()
    out = losses.dice_loss(pred.astype("float16"), target)
    assert str(out.dtype) == "float32" or "float32" in str(out.dtype)


def test_focal_loss_golden_and_cross_entropy_at_gamma_0():
    # two pixels: one MYO (channel 0) predicted 0.5 / 0.2 / 0.1 (background 0.2), one
    # background predicted 0.1 / 0.1 / 0.2 (background 0.6)
    pred = np.array([[[[0.5, 0.2, 0.1], [0.1, 0.1, 0.2]]]], np.float32)  # (1, 1, 2, 3)
    target = np.array([[[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]], np.float32)
    p_true = np.array([0.5, 0.6])
    expected = np.mean(-((1 - p_true) ** 2) * np.log(p_true))
    assert float(losses.focal_loss(pred, target, gamma=2.0)) == pytest.approx(expected, rel=1e-5)
    assert float(losses.focal_loss(pred, target, gamma=0.0)) == pytest.approx(np.mean(-np.log(p_true)), rel=1e-5)
    # a perfect prediction costs nothing
    assert float(losses.focal_loss(target, target)) == pytest.approx(0.0, abs=1e-6)


def _gradient(loss, variable):
    """d loss / d variable as numpy, on the backend Keras runs (TensorFlow or JAX)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        value = variable.value
        variable_loss = jax.grad(lambda v: (variable.assign(v), loss())[1])
        return np.asarray(variable_loss(value))
    import tensorflow as tf

    with tf.GradientTape() as tape:
        value = loss()
    return tape.gradient(value, variable.value).numpy()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_loss_gradient_is_finite_where_a_pixel_is_certain(gamma):
    # a pixel predicted exactly right (p_t = 1): 0 ** gamma's gradient was NaN at gamma 0
    import keras

    pred = keras.Variable(np.array([[[[1.0, 0.0, 0.0], [0.3, 0.3, 0.2]]]], np.float32))
    target = np.array([[[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]], np.float32)
    grad = _gradient(lambda: losses.focal_loss(pred.value, target, gamma=gamma), pred)
    assert np.isfinite(grad).all(), grad
