"""Segmentor: anatomy maps to class probabilities."""

import keras
from keras import layers

from sdnet_tf.layers import PACKAGE
from sdnet_tf.models.base import SymbolicBuildModel


@keras.saving.register_keras_serializable(package=PACKAGE)
class Segmentor(SymbolicBuildModel):
    """SDNet segmentor on the binary anatomy.

    Twice (3x3 conv -> BatchNorm -> LeakyReLU 0.3), then a 1x1 conv to ``num_classes + 1``
    channels with softmax; the last (background) channel is dropped. For ACDC the kept
    channels are [MYO, LV, RV] (ACDC labels 2, 3, 1). The paper's text says ReLU, the original
    code uses LeakyReLU 0.3, which is followed here.

    Args:
        input_size: height and width (224).
        anatomy_channels: anatomy channels C (8).
        num_classes: foreground classes L (3).
        filters: filters of the two convolutions (64).

    Call arguments:
        inputs: anatomy (B, H, W, C).
        training: BatchNorm mode.

    Returns:
        Foreground probabilities (B, H, W, num_classes); background is 1 minus their sum.
    """

    def __init__(self, input_size=224, anatomy_channels=8, num_classes=3, filters=64, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.anatomy_channels = anatomy_channels
        self.num_classes = num_classes
        self.filters = filters
        self.convs = [layers.Conv2D(filters, 3, padding="same", name=f"conv{i}") for i in range(2)]
        self.norms = [layers.BatchNormalization(name=f"bn{i}") for i in range(2)]
        self.act = layers.LeakyReLU(0.3)
        self.head = layers.Conv2D(num_classes + 1, 1, padding="same", activation="softmax", name="masks")

    def call(self, inputs, training=None):
        x = inputs
        for conv, norm in zip(self.convs, self.norms):
            x = self.act(norm(conv(x), training=training))  # (B, H, W, filters)
        probs = self.head(x)  # (B, H, W, L + 1), background last
        return probs[..., : self.num_classes]

    def default_input_shape(self):
        return (None, self.input_size, self.input_size, self.anatomy_channels)

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, anatomy_channels=self.anatomy_channels,
                      num_classes=self.num_classes, filters=self.filters)
        return config
