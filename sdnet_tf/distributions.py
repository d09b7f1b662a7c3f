"""Diagonal Gaussians of the NVAE shape prior, written with ``keras.ops`` only.

A ``Normal`` is a small value object (not a layer): it holds tensors and offers ``sample``,
``log_p`` and ``kl``, as NVAE's own ``Normal`` does.
"""

import math

import keras
from keras import ops

SOFT_CLAMP = 5.0
SIGMA_FLOOR = 0.01


def soft_clamp(x, bound=SOFT_CLAMP):
    """``bound * tanh(x / bound)``: the identity near 0, smoothly limited to (-bound, bound)."""
    return bound * ops.tanh(x / bound)


class Normal:
    """Diagonal Gaussian with NVAE's soft clamping.

    ``mu <- 5 tanh(mu / 5)``, ``log_sigma <- 5 tanh(log_sigma / 5)`` and
    ``sigma = exp(log_sigma) + 0.01``: the means stay in (-5, 5) and sigma in
    (0.0167, 148.4), which keeps the KL and ``log_p`` finite early in training.
    ``Normal(0, 0)``, the prior of the top group, therefore has sigma 1.01, as in NVAE.

    Args:
        mu: unclamped mean, any shape.
        log_sigma: unclamped log standard deviation, same shape.

    Attributes:
        mu: clamped mean.
        log_sigma: clamped log standard deviation.
        sigma: ``exp(log_sigma) + 0.01``.

    Reference:
        Vahdat and Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS 2020
        (Section 3.2 and Appendix).
    """

    def __init__(self, mu, log_sigma):
        self.mu = soft_clamp(mu)
        self.log_sigma = soft_clamp(log_sigma)
        self.sigma = ops.exp(self.log_sigma) + SIGMA_FLOOR

    @classmethod
    def residual(cls, mu_p, log_sigma_p, delta_mu, delta_log_sigma):
        """The posterior of a non-top group, relative to its prior.

        ``q = N(mu_p + delta_mu, exp(log_sigma_p + delta_log_sigma))``: the sums are taken
        on the unclamped prior parameters (in log space for sigma) and the clamp and the 0.01
        floor are applied to the sums, so ``q.sigma`` is close to, not exactly,
        ``p.sigma * exp(delta_log_sigma)``.

        Args:
            mu_p: unclamped prior mean (the prior sampler's raw output).
            log_sigma_p: unclamped prior log standard deviation.
            delta_mu: the encoder sampler's mean offset.
            delta_log_sigma: the encoder sampler's log-scale offset.

        Returns:
            A ``Normal``.
        """
        return cls(mu_p + delta_mu, log_sigma_p + delta_log_sigma)

    @classmethod
    def from_params(cls, params):
        """Split a (..., 2 * C) tensor into mean and log sigma along the last axis."""
        mu, log_sigma = ops.split(params, 2, axis=-1)
        return cls(mu, log_sigma)

    def sample(self, eps_or_seed=None, temperature=1.0):
        """A reparameterised draw ``mu + temperature * sigma * eps``.

        Args:
            eps_or_seed: the standard-normal ``eps`` (a tensor shaped like ``mu``), or a seed
                for drawing it: an int, a ``keras.random.SeedGenerator`` or None.
            temperature: scales sigma; 0 returns the mean.

        Returns:
            Tensor shaped like ``mu``.
        """
        if eps_or_seed is None or isinstance(eps_or_seed, (int, keras.random.SeedGenerator)):
            eps = keras.random.normal(ops.shape(self.mu), dtype=self.mu.dtype, seed=eps_or_seed)
        else:
            eps = ops.cast(eps_or_seed, self.mu.dtype)
        return self.mu + temperature * self.sigma * eps

    def log_p(self, z):
        """Per-element log density of ``z``, same shape as ``mu``."""
        normalised = (z - self.mu) / self.sigma
        return -0.5 * normalised * normalised - 0.5 * math.log(2.0 * math.pi) - ops.log(self.sigma)

    def kl(self, other):
        """Per-element KL(self || other) between diagonal Gaussians, same shape as ``mu``.

        ``0.5 [((mu_q - mu_p) / sigma_p)^2 + (sigma_q / sigma_p)^2] - 0.5 - log(sigma_q / sigma_p)``.
        """
        mean_term = (self.mu - other.mu) / other.sigma
        ratio = self.sigma / other.sigma
        return 0.5 * (mean_term * mean_term + ratio * ratio) - 0.5 - ops.log(ratio)
