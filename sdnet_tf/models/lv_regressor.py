"""The multi-task head of the SDNet paper: the left-ventricular volume from the anatomy factor."""

import keras
from keras import layers

from sdnet_tf.layers import PACKAGE
from sdnet_tf.models.base import SymbolicBuildModel


@keras.saving.register_keras_serializable(package=PACKAGE)
class LVVolumeRegressor(SymbolicBuildModel):
    """Regresses the LV pixel count of a slice from its binary anatomy factor.

    Two 3x3 convolutions of ``filters`` with ReLU ('same' padding), the maps flattened, Dense
    ``units`` with ReLU and Dense 1 with ReLU (a count is never negative). The paper gives
    the layers but not how the maps become a vector; flattening keeps every position, which
    a count of pixels needs, at the price of the Dense layer's size (12.8 M parameters at
    224 x 224).

    Args:
        input_size: height and width (224).
        anatomy_channels: anatomy channels C (8).
        filters: filters of each convolution (16).
        units: width of the hidden Dense layer (16).

    Call arguments:
        inputs: the anatomy factor (B, H, W, C).

    Returns:
        LV pixel counts (B, 1), at the input's pixel size.

    Reference:
        Chartsias et al., Medical Image Analysis 58, 2019, Section 5.2 (multi-task learning).
    """

    def __init__(self, input_size=224, anatomy_channels=8, filters=16, units=16, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.anatomy_channels = anatomy_channels
        self.filters = filters
        self.units = units
        self.conv1 = layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv1")
        self.conv2 = layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv2")
        self.flatten = layers.Flatten()
        self.hidden = layers.Dense(units, activation="relu", name="dense1")
        self.out = layers.Dense(1, activation="relu", name="count")

    def call(self, inputs):
        return self.out(self.hidden(self.flatten(self.conv2(self.conv1(inputs)))))

    def default_input_shape(self):
        return (None, self.input_size, self.input_size, self.anatomy_channels)

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, anatomy_channels=self.anatomy_channels, filters=self.filters,
                      units=self.units)
        return config
