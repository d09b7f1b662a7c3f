"""LSGAN mask discriminator with the original's soft spectral penalty."""

import keras
from keras import layers

from sdnet_tf.layers import PACKAGE, SpectralPenalty
from sdnet_tf.models.base import SymbolicBuildModel


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskDiscriminator(SymbolicBuildModel):
    """Scores a set of foreground masks as real or fake (one score per image).

    Conv 4x4 stride 2 -> LeakyReLU 0.2, then ``blocks`` times conv 4x4 -> LeakyReLU 0.2 with
    doubling filters and strides 2, ..., 2, 1 (224 -> 14 with the defaults), no normalisation;
    flatten -> Dense 1, linear. The deeper convolutions carry the original's soft spectral
    penalty (``SpectralPenalty``), which appears in ``model.losses`` and is added to the
    discriminator loss only.

    Args:
        input_size: height and width (224).
        num_classes: mask channels (3).
        filters: filters of the first convolution (64).
        blocks: number of deeper convolutions (4).
        spectral: "penalty" for the original's soft penalty, or "none".
        spectral_weight: weight alpha of the penalty (10).
        seed: seed of the penalty's fixed power-iteration start vectors.

    Call arguments:
        inputs: masks (B, H, W, num_classes).

    Returns:
        Scores (B, 1).
    """

    def __init__(self, input_size=224, num_classes=3, filters=64, blocks=4, spectral="penalty",
                 spectral_weight=10.0, seed=0, **kwargs):
        super().__init__(**kwargs)
        if spectral not in ("penalty", "none"):
            raise ValueError(f"spectral must be 'penalty' or 'none', got {spectral!r}")
        self.input_size = input_size
        self.num_classes = num_classes
        self.filters = filters
        self.blocks = blocks
        self.spectral = spectral
        self.spectral_weight = spectral_weight
        self.seed = seed
        self.first = layers.Conv2D(filters, 4, strides=2, padding="same", name="conv0")
        self.convs = []
        for i in range(blocks):
            regulariser = None
            if spectral == "penalty":
                regulariser = SpectralPenalty(alpha=spectral_weight, seed=seed + i)
            stride = 1 if i == blocks - 1 else 2
            self.convs.append(layers.Conv2D(filters * 2 ** (i + 1), 4, strides=stride, padding="same",
                                            kernel_regularizer=regulariser, name=f"conv{i + 1}"))
        self.act = layers.LeakyReLU(0.2)
        self.flatten = layers.Flatten()
        self.score = layers.Dense(1, name="score")

    def call(self, inputs):
        x = self.act(self.first(inputs))  # (B, H / 2, W / 2, filters)
        for conv in self.convs:
            x = self.act(conv(x))  # ends at (B, H / 16, W / 16, filters * 2**blocks)
        return self.score(self.flatten(x))  # (B, 1)

    def default_input_shape(self):
        return (None, self.input_size, self.input_size, self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, num_classes=self.num_classes, filters=self.filters,
                      blocks=self.blocks, spectral=self.spectral, spectral_weight=self.spectral_weight,
                      seed=self.seed)
        return config
