"""Anatomy encoder: a U-Net whose softmax output is binarised (straight-through)."""

import keras
from keras import layers

from sdnet_tf.layers import PACKAGE, Binarise
from sdnet_tf.models.base import SymbolicBuildModel


ACTIVATIONS = ("relu", "leaky_relu")


def activation_layer(activation, name):
    """ReLU, or LeakyReLU with Keras 2's default slope 0.3 (the MICCAI 2018 code's), or None."""
    if activation is None:
        return None
    if activation == "leaky_relu":
        return layers.LeakyReLU(0.3, name=name)
    return layers.Activation(activation, name=name)


def _conv_bn(filters, activation, name):
    return [
        layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv"),
        layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name=f"{name}_bn"),
        activation_layer(activation, f"{name}_act"),
    ]


def _run(block, x, training):
    for layer in block:
        if layer is None:
            continue
        if isinstance(layer, layers.BatchNormalization):
            x = layer(x, training=training)
        else:
            x = layer(x)
    return x


@keras.saving.register_keras_serializable(package=PACKAGE)
class AnatomyEncoder(SymbolicBuildModel):
    """U-Net anatomy encoder of SDNet.

    Each down level is twice (3x3 conv with bias -> BatchNorm -> ReLU) followed by 2x2 max
    pooling; the bottleneck has ``filters * 2**depth`` channels; each up level is
    nearest-neighbour upsampling -> 3x3 conv -> BatchNorm (no activation) -> concatenation
    with the skip -> the same conv block. A 1x1 convolution with softmax gives ``channels``
    soft anatomy maps, binarised by straight-through rounding.

    Args:
        input_size: height and width of the (square) input image (224 in the original).
        input_channels: image channels (1).
        channels: anatomy channels C (8).
        filters: filters of the first level, doubled at every level (64).
        depth: number of down-sampling levels (4).
        binarise: apply the straight-through binarisation (True in the original).
        binarisation: how, ``layers.Binarise``'s mode: "round" (the original; a pixel whose
            largest channel is <= 0.5 becomes all zeros) or "argmax" (one channel per pixel).
        activation: of every conv block, "relu" (SDNet) or "leaky_relu" (slope 0.3, the
            MICCAI 2018 precursor's U-Net).
        head_activation: of the 1x1 output convolution, "softmax" (SDNet) or "sigmoid" (the
            precursor's single myocardium channel).

    Call arguments:
        inputs: images (B, H, W, input_channels) with intensities in [-1, 1].
        training: BatchNorm mode.

    Returns:
        Anatomy maps (B, H, W, channels): binary if ``binarise`` else the softmax.

    Reference:
        Chartsias et al., Medical Image Analysis 58, 2019; Ronneberger et al., MICCAI 2015.
    """

    def __init__(self, input_size=224, input_channels=1, channels=8, filters=64, depth=4,
                 binarise=True, binarisation="round", activation="relu", head_activation="softmax", **kwargs):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        if input_size % (2 ** depth):
            raise ValueError(f"input_size {input_size} is not divisible by 2**depth = {2 ** depth}")
        self.input_size = input_size
        self.input_channels = input_channels
        self.channels = channels
        self.filters = filters
        self.depth = depth
        self.binarise = binarise
        self.binarisation = binarisation
        self.activation = activation
        self.head_activation = head_activation

        widths = [filters * 2 ** i for i in range(depth)]
        self.down_blocks = []
        for i, f in enumerate(widths):
            self.down_blocks.append(_conv_bn(f, activation, f"down{i}a") + _conv_bn(f, activation, f"down{i}b"))
        self.pools = [layers.MaxPooling2D(2, name=f"pool{i}") for i in range(depth)]
        bottom = filters * 2 ** depth
        self.bottleneck = _conv_bn(bottom, activation, "bottleneck_a") + _conv_bn(bottom, activation, "bottleneck_b")
        self.up_samplers = []
        self.up_convs = []
        self.up_blocks = []
        for i, f in reversed(list(enumerate(widths))):
            self.up_samplers.append(layers.UpSampling2D(2, interpolation="nearest", name=f"upsample{i}"))
            self.up_convs.append(_conv_bn(f, None, f"up{i}"))
            self.up_blocks.append(_conv_bn(f, activation, f"up{i}a") + _conv_bn(f, activation, f"up{i}b"))
        self.concat = layers.Concatenate(axis=-1)
        self.head = layers.Conv2D(channels, 1, padding="same", activation=head_activation, name="anatomy")
        self.rounding = Binarise(binarisation, name="binarise")

    def soft(self, inputs, training=None):
        """The softmax anatomy maps before binarisation, (B, H, W, C)."""
        return self.encode(inputs, training)[0]

    def encode(self, inputs, training=None):
        """``(soft maps (B, H, W, C), bottleneck features (B, H / 2**depth, W / 2**depth,
        filters * 2**depth))``: the head's output before binarisation, and the deepest maps
        (the MICCAI 2018 precursor computes its z from them)."""
        x = inputs
        skips = []
        for block, pool in zip(self.down_blocks, self.pools):
            x = _run(block, x, training)
            skips.append(x)
            x = pool(x)
        x = bottom = _run(self.bottleneck, x, training)  # (B, H / 2**depth, W / 2**depth, bottom)
        for up, conv, block, skip in zip(self.up_samplers, self.up_convs, self.up_blocks, reversed(skips)):
            x = _run(conv, up(x), training)
            x = _run(block, self.concat([x, skip]), training)
        return self.head(x), bottom  # (B, H, W, C), the bottleneck

    def call(self, inputs, training=None):
        soft = self.soft(inputs, training=training)
        return self.rounding(soft) if self.binarise else soft

    def default_input_shape(self):
        return (None, self.input_size, self.input_size, self.input_channels)

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, input_channels=self.input_channels,
                      channels=self.channels, filters=self.filters, depth=self.depth,
                      binarise=self.binarise, binarisation=self.binarisation, activation=self.activation,
                      head_activation=self.head_activation)
        return config
