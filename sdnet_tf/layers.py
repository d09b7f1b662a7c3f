"""Custom layers of SDNet, written with ``keras`` and ``keras.ops`` only.

Nothing here imports TensorFlow, so the same layers run under the TensorFlow and JAX
backends of Keras 3.
"""

import keras
import numpy as np
from keras import ops

PACKAGE = "sdnet_tf"


@keras.saving.register_keras_serializable(package=PACKAGE)
class Binarise(keras.layers.Layer):
    """Straight-through binarisation of a soft anatomy map.

    The forward pass makes every value 0 or 1; the backward pass is the identity, so the
    incoming gradient reaches the softmax unchanged.

    Args:
        mode: "round" (the original): each value rounded on its own, so a pixel whose largest
            softmax value is <= 0.5 becomes all zeros (rounding is half-to-even); "argmax" (an
            option of this port): the one-hot vector of the largest channel, so every pixel
            has exactly one active channel (ties go to the first).

    Call arguments:
        inputs: tensor (..., C) with values in [0, 1], the channels last.

    Returns:
        Tensor of the same shape and dtype with values in {0, 1}.

    Raises:
        ValueError: an unknown ``mode``.

    Reference:
        Chartsias et al., "Disentangled representation learning in cardiac image analysis",
        Medical Image Analysis 58, 2019 (Section 3.1).
    """

    MODES = ("round", "argmax")

    def __init__(self, mode="round", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"binarisation {mode!r}: expected one of {', '.join(self.MODES)}")
        self.mode = mode

    def call(self, inputs):
        # straight-through: forward binarises, backward is identity
        if self.mode == "argmax":
            # the first channel equal to the maximum, by comparison and a running count rather
            # than argmax + one_hot (Keras' TensorFlow argmax emits a Bitcast that ONNX lacks)
            top = ops.cast(ops.equal(inputs, ops.max(inputs, axis=-1, keepdims=True)), "int32")
            hard = ops.cast(ops.logical_and(ops.equal(top, 1), ops.equal(ops.cumsum(top, axis=-1), 1)),
                            inputs.dtype)
        else:
            hard = ops.round(inputs)
        return inputs + ops.stop_gradient(hard - inputs)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class FiLM(keras.layers.Layer):
    """Feature-wise linear modulation: ``gamma * features + beta``.

    gamma and beta are per-sample, per-channel vectors broadcast over height and width. As in
    the original there is no ``1 + gamma`` offset.

    Call arguments:
        inputs: list ``[features (B, H, W, C), gamma (B, C), beta (B, C)]``.

    Returns:
        Tensor of shape (B, H, W, C).

    Reference:
        Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018.
    """

    def call(self, inputs):
        features, gamma, beta = inputs
        gamma = ops.expand_dims(ops.expand_dims(gamma, 1), 1)  # (B, 1, 1, C)
        beta = ops.expand_dims(ops.expand_dims(beta, 1), 1)
        return features * gamma + beta

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package=PACKAGE)
class AdaIN(keras.layers.Layer):
    """Adaptive instance normalisation: each sample's channels normalised over height and
    width, then ``gamma * normalised + beta`` with per-sample, per-channel gamma and beta.

    Args:
        epsilon: added to the variance (1e-5, as PyTorch's instance norm).

    Call arguments:
        inputs: list ``[features (B, H, W, C), gamma (B, C), beta (B, C)]``.

    Returns:
        Tensor of shape (B, H, W, C).

    Reference:
        Huang and Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance
        Normalization", ICCV 2017; used for SDNet's decoder by Liu et al., M&Ms 2020.
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs):
        features, gamma, beta = inputs
        mean = ops.mean(features, axis=(1, 2), keepdims=True)
        variance = ops.mean(ops.square(features - mean), axis=(1, 2), keepdims=True)
        normalised = (features - mean) / ops.sqrt(variance + self.epsilon)
        gamma = ops.expand_dims(ops.expand_dims(gamma, 1), 1)  # (B, 1, 1, C)
        beta = ops.expand_dims(ops.expand_dims(beta, 1), 1)
        return normalised * gamma + beta

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class GaussianSample(keras.layers.Layer):
    """Reparameterised sample ``z = mean + exp(0.5 * logvar) * eps``, ``eps ~ N(0, I)``.

    Args:
        seed: integer seed of the layer's random stream (a ``keras.random.SeedGenerator``,
            whose state is a variable and so is saved with checkpoints).

    Call arguments:
        inputs: list ``[mean (B, nz), logvar (B, nz)]``.
        sample: if False, return the mean (deterministic mode, an addition to the original,
            which always samples).
        noise: ``eps`` (B, nz) to use instead of a draw from the layer's stream; lets an
            engine that splits a batch across devices give each device its rows of the draw
            ``draw_noise`` makes for the whole batch.

    Returns:
        Tensor of shape (B, nz).
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def draw_noise(self, shape):
        """The next ``eps`` of the layer's stream, (shape) in its compute dtype."""
        return keras.random.normal(shape, dtype=self.compute_dtype, seed=self.seed_generator)

    def call(self, inputs, sample=True, noise=None):
        mean, logvar = inputs
        if not sample:
            return mean
        eps = self.draw_noise(ops.shape(mean)) if noise is None else noise
        return mean + ops.exp(0.5 * logvar) * ops.cast(eps, mean.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update({"seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpectralPenalty(keras.regularizers.Regularizer):
    """Soft spectral-norm penalty on a convolution or dense kernel.

    The kernel is reshaped to (kh * kw * C_in, C_out); its largest singular value sigma is
    estimated by ``power_iterations`` steps of the power method that always start from the
    same random vector (drawn once from ``seed``); the penalty is
    ``alpha * mean(|stop_gradient(W / sigma) - W|)``. It pulls W towards W / sigma, i.e.
    towards spectral norm 1, as a loss term rather than a hard normalisation.

    Args:
        alpha: weight of the penalty (10 in the original).
        power_iterations: power-method steps (3 in the original).
        seed: seed of the fixed starting vector.
    """

    def __init__(self, alpha=10.0, power_iterations=3, seed=0):
        self.alpha = float(alpha)
        self.power_iterations = int(power_iterations)
        self.seed = int(seed)

    def _start_vector(self, rows):
        rng = np.random.default_rng(self.seed)
        return (rng.random((rows, 1)) * 2.0 - 1.0).astype("float32")

    def __call__(self, kernel):
        cols = kernel.shape[-1]
        w = ops.reshape(kernel, (-1, cols))  # (kh * kw * C_in, C_out)
        u = ops.convert_to_tensor(self._start_vector(w.shape[0]), dtype=w.dtype)
        v = None
        for _ in range(self.power_iterations):
            wtu = ops.matmul(ops.transpose(w), u)  # (C_out, 1)
            v = wtu / ops.sqrt(ops.sum(ops.square(wtu)))
            wv = ops.matmul(w, v)  # (rows, 1)
            u = wv / ops.sqrt(ops.sum(ops.square(wv)))
        sigma = ops.matmul(ops.matmul(ops.transpose(u), w), v)[0, 0]
        target = ops.stop_gradient(w / sigma)
        return self.alpha * ops.mean(ops.abs(target - w))

    def get_config(self):
        return {"alpha": self.alpha, "power_iterations": self.power_iterations, "seed": self.seed}
