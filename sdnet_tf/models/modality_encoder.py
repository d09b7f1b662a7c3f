"""Modality encoder: the VAE posterior q(z | x, s)."""

import keras
from keras import layers

from sdnet_tf.layers import PACKAGE, GaussianSample
from sdnet_tf.models.base import SymbolicBuildModel


@keras.saving.register_keras_serializable(package=PACKAGE)
class ModalityEncoder(SymbolicBuildModel):
    """VAE encoder of the modality factor z from the image and its binary anatomy.

    The anatomy and the image are concatenated; four times (3x3 conv, stride 2, 'valid' ->
    BatchNorm -> LeakyReLU 0.3) take 224 -> 111 -> 55 -> 27 -> 13; after flattening, Dense 32
    -> BatchNorm -> LeakyReLU 0.3, then two Dense ``nz`` heads give the mean and log-variance.

    Args:
        input_size: height and width of the image (224).
        input_channels: image channels (1).
        anatomy_channels: anatomy channels C (8).
        nz: size of z (8).
        filters: filters of each strided conv (16).
        dense_units: width of the hidden dense layer (32).
        seed: seed of the sampling layer's random stream.

    Call arguments:
        inputs: list ``[anatomy (B, H, W, C), image (B, H, W, input_channels)]``.
        training: BatchNorm mode.
        sample: draw z by the reparameterisation trick (the original always does); if False
            z is the mean.
        noise: the reparameterisation's ``eps`` (B, nz); None draws it from the sampler.

    Returns:
        Tuple ``(z, mean, logvar)``, each (B, nz).
    """

    def __init__(self, input_size=224, input_channels=1, anatomy_channels=8, nz=8, filters=16,
                 dense_units=32, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.input_channels = input_channels
        self.anatomy_channels = anatomy_channels
        self.nz = nz
        self.filters = filters
        self.dense_units = dense_units
        self.seed = seed

        self.concat = layers.Concatenate(axis=-1)
        self.convs = [layers.Conv2D(filters, 3, strides=2, padding="valid", name=f"conv{i}") for i in range(4)]
        self.norms = [layers.BatchNormalization(name=f"bn{i}") for i in range(4)]
        self.acts = [layers.LeakyReLU(0.3, name=f"lrelu{i}") for i in range(4)]
        self.flatten = layers.Flatten()
        self.dense = layers.Dense(dense_units, name="dense")
        self.dense_norm = layers.BatchNormalization(name="dense_bn")
        self.dense_act = layers.LeakyReLU(0.3, name="dense_lrelu")
        self.mean_head = layers.Dense(nz, name="z_mean")
        self.logvar_head = layers.Dense(nz, name="z_log_var")
        self.sampler = GaussianSample(seed=seed, name="z")

    def call(self, inputs, training=None, sample=True, noise=None):
        anatomy, image = inputs
        x = self.concat([anatomy, image])  # (B, H, W, C + 1)
        for conv, norm, act in zip(self.convs, self.norms, self.acts):
            x = act(norm(conv(x), training=training))  # 224 -> 111 -> 55 -> 27 -> 13
        x = self.flatten(x)  # (B, 13 * 13 * filters)
        x = self.dense_act(self.dense_norm(self.dense(x), training=training))
        mean = self.mean_head(x)  # (B, nz)
        logvar = self.logvar_head(x)
        z = self.sampler([mean, logvar], sample=sample, noise=noise)
        return z, mean, logvar

    def default_input_shape(self):
        return [(None, self.input_size, self.input_size, self.anatomy_channels),
                (None, self.input_size, self.input_size, self.input_channels)]

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, input_channels=self.input_channels,
                      anatomy_channels=self.anatomy_channels, nz=self.nz, filters=self.filters,
                      dense_units=self.dense_units, seed=self.seed)
        return config
