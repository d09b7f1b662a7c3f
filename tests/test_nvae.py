"""NVAE shape prior: distributions against TFP."""

import ast
from pathlib import Path

import numpy as np
import pytest

from sdnet_tf.distributions import Normal, soft_clamp


def _params(seed, shape=(2, 3, 3, 5), scale=3.0):
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=scale, size=shape).astype("float32") for _ in range(2)]


# ------------------------------------------------------------------ distributions
def test_distributions_module_is_backend_neutral():
    path = Path(__file__).resolve().parent.parent / "sdnet_tf" / "distributions.py"
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots == {"math", "keras"}


def test_soft_clamp_and_sigma_floor():
    values = np.array([0.0, 100.0, -100.0], "float32")
    q = Normal(values, values)
    np.testing.assert_allclose(np.asarray(q.mu), [0.0, 5.0, -5.0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(q.sigma), [1.01, np.exp(5.0) + 0.01, np.exp(-5.0) + 0.01],
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(soft_clamp(np.float32(0.5))), 5 * np.tanh(0.1), rtol=1e-6)


def test_kl_is_zero_when_q_equals_p():
    mu, log_sigma = _params(0)
    kl = np.asarray(Normal(mu, log_sigma).kl(Normal(mu, log_sigma)))
    np.testing.assert_allclose(kl, 0.0, atol=1e-5)


def test_log_p_and_kl_match_tfp():
    tfd = pytest.importorskip("tensorflow_probability").distributions
    q, p = Normal(*_params(1)), Normal(*_params(2))
    z = np.random.default_rng(3).normal(size=(2, 3, 3, 5)).astype("float32")
    tq = tfd.Normal(np.asarray(q.mu), np.asarray(q.sigma))
    tp = tfd.Normal(np.asarray(p.mu), np.asarray(p.sigma))
    np.testing.assert_allclose(np.asarray(q.log_p(z)), tq.log_prob(z).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(q.kl(p)), tfd.kl_divergence(tq, tp).numpy(), rtol=1e-4, atol=1e-4)


def test_residual_posterior_sums_raw_parameters_then_clamps():
    tfd = pytest.importorskip("tensorflow_probability").distributions
    mu_p, log_sigma_p = _params(4)
    delta_mu, delta_log_sigma = _params(5, scale=1.0)
    q = Normal.residual(mu_p, log_sigma_p, delta_mu, delta_log_sigma)
    p = Normal(mu_p, log_sigma_p)
    expected_mu = 5 * np.tanh((mu_p + delta_mu) / 5)
    expected_sigma = np.exp(5 * np.tanh((log_sigma_p + delta_log_sigma) / 5)) + 0.01
    np.testing.assert_allclose(np.asarray(q.mu), expected_mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(q.sigma), expected_sigma, rtol=1e-5)
    # not the product of the clamped prior sigma and exp(delta): the clamp acts on the sum
    assert not np.allclose(np.asarray(q.sigma), np.asarray(p.sigma) * np.exp(delta_log_sigma), rtol=1e-3)
    kl = tfd.kl_divergence(tfd.Normal(expected_mu, expected_sigma),
                           tfd.Normal(np.asarray(p.mu), np.asarray(p.sigma))).numpy()
    np.testing.assert_allclose(np.asarray(q.kl(p)), kl, rtol=1e-4, atol=1e-4)


def test_sample_uses_eps_temperature_and_seed():
    mu, log_sigma = _params(6)
    q = Normal(mu, log_sigma)
    eps = np.random.default_rng(7).normal(size=mu.shape).astype("float32")
    expected = np.asarray(q.mu) + 0.5 * np.asarray(q.sigma) * eps
    np.testing.assert_allclose(np.asarray(q.sample(eps, temperature=0.5)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(q.sample(3, temperature=0.0)), np.asarray(q.mu))
    np.testing.assert_array_equal(np.asarray(q.sample(3)), np.asarray(q.sample(3)))
    draws = np.asarray(Normal(np.zeros((20000,), "float32"), np.zeros((20000,), "float32")).sample(0))
    assert abs(draws.mean()) < 0.03 and abs(draws.std() - 1.01) < 0.03
