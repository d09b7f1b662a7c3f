"""Decoders: the image from the anatomy s and the modality z (FiLM as SDNet, AdaIN as M&Ms 2020)."""

import keras
from keras import layers, ops

from sdnet_tf.layers import PACKAGE, AdaIN, FiLM
from sdnet_tf.models.base import SymbolicBuildModel


@keras.saving.register_keras_serializable(package=PACKAGE)
class FiLMDecoder(SymbolicBuildModel):
    """SDNet decoder: residual blocks whose second convolution is modulated by z.

    Each block computes ``l1 = LeakyReLU(conv3x3(x))``,
    ``l2 = LeakyReLU(FiLM(conv3x3(l1), gamma, beta))`` and returns ``l1 + l2``; gamma and beta
    come from z through the block's own head Dense(2C) -> LeakyReLU 0.3 -> Dense(2C) (first
    half gamma, second half beta). No normalisation. A 3x3 conv with tanh gives the image.

    Args:
        input_size: height and width (224).
        anatomy_channels: anatomy channels C, also the width of every block (8).
        nz: size of z (8).
        blocks: number of FiLM residual blocks (4).
        output_channels: image channels (1).

    Call arguments:
        inputs: list ``[anatomy (B, H, W, C), z (B, nz)]``.

    Returns:
        Image (B, H, W, output_channels) in [-1, 1].

    Reference:
        Chartsias et al., Medical Image Analysis 58, 2019 (Section 3.3).
    """

    def __init__(self, input_size=224, anatomy_channels=8, nz=8, blocks=4, output_channels=1, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.anatomy_channels = anatomy_channels
        self.nz = nz
        self.blocks = blocks
        self.output_channels = output_channels
        c = anatomy_channels
        self.conv1 = [layers.Conv2D(c, 3, padding="same", name=f"block{i}_conv1") for i in range(blocks)]
        self.conv2 = [layers.Conv2D(c, 3, padding="same", name=f"block{i}_conv2") for i in range(blocks)]
        self.film_hidden = [layers.Dense(2 * c, name=f"block{i}_film_dense1") for i in range(blocks)]
        self.film_out = [layers.Dense(2 * c, name=f"block{i}_film_dense2") for i in range(blocks)]
        self.film = FiLM(name="film")
        self.act = layers.LeakyReLU(0.3)
        self.add = layers.Add()
        self.out = layers.Conv2D(output_channels, 3, padding="same", activation="tanh", name="image")

    def call(self, inputs):
        x, z = inputs
        c = self.anatomy_channels
        for conv1, conv2, hidden, head in zip(self.conv1, self.conv2, self.film_hidden, self.film_out):
            params = head(self.act(hidden(z)))  # (B, 2C)
            gamma, beta = params[:, :c], params[:, c:]
            l1 = self.act(conv1(x))  # (B, H, W, C)
            l2 = self.act(self.film([conv2(l1), gamma, beta]))
            x = self.add([l1, l2])
        return self.out(x)  # (B, H, W, 1)

    def default_input_shape(self):
        return [(None, self.input_size, self.input_size, self.anatomy_channels), (None, self.nz)]

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, anatomy_channels=self.anatomy_channels, nz=self.nz,
                      blocks=self.blocks, output_channels=self.output_channels)
        return config


def _reflect(x, width):
    """Reflection padding of height and width by ``width`` pixels."""
    return ops.pad(x, [[0, 0], [width, width], [width, width], [0, 0]], mode="reflect")


@keras.saving.register_keras_serializable(package=PACKAGE)
class AdaINDecoder(SymbolicBuildModel):
    """The AdaIN decoder of Liu et al. (M&Ms 2020): the anatomy through three 3x3 convolutions,
    each followed by adaptive instance normalisation whose scale and shift come from z, and
    ReLU; the channels halve at each (C -> C/2 -> C/4 -> C/8, at least 1); a 7x7 convolution
    and tanh give the image. Padding is by reflection. An MLP of ``mlp_layers`` Dense layers
    (``mlp_units`` wide, ReLU, the last linear) maps z to every AdaIN layer's gamma and beta,
    so z drives every normalisation (a port that computes these parameters and never applies
    them would reconstruct the same image whatever z is).

    Args:
        input_size: height and width (224).
        anatomy_channels: anatomy channels C (8).
        nz: size of z (8).
        blocks: number of AdaIN convolutions (3).
        mlp_units: width of the MLP (256).
        mlp_layers: Dense layers of the MLP (3).
        output_channels: image channels (1).

    Call arguments:
        inputs: list ``[anatomy (B, H, W, C), z (B, nz)]``.

    Returns:
        Image (B, H, W, output_channels) in [-1, 1].

    Reference:
        Liu et al., "Disentangled Representations for Domain-generalized Cardiac Segmentation",
        M&Ms challenge, STACOM 2020.
    """

    def __init__(self, input_size=224, anatomy_channels=8, nz=8, blocks=3, mlp_units=256, mlp_layers=3,
                 output_channels=1, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.anatomy_channels = anatomy_channels
        self.nz = nz
        self.blocks = blocks
        self.mlp_units = mlp_units
        self.mlp_layers = mlp_layers
        self.output_channels = output_channels
        self.widths = [max(1, anatomy_channels // 2 ** (i + 1)) for i in range(blocks)]
        self.convs = [layers.Conv2D(w, 3, padding="valid", name=f"block{i}_conv") for i, w in enumerate(self.widths)]
        self.norms = [AdaIN(name=f"block{i}_adain") for i in range(blocks)]
        self.mlp = [layers.Dense(mlp_units, activation="relu", name=f"mlp{i}") for i in range(mlp_layers - 1)]
        self.mlp.append(layers.Dense(2 * sum(self.widths), name=f"mlp{mlp_layers - 1}"))
        self.act = layers.ReLU()
        self.out = layers.Conv2D(output_channels, 7, padding="valid", activation="tanh", name="image")

    def adain_parameters(self, z):
        """``[(gamma, beta), ...]`` per block, each (B, width), from z (B, nz)."""
        params = z
        for dense in self.mlp:
            params = dense(params)
        out, start = [], 0
        for w in self.widths:
            out.append((params[:, start:start + w], params[:, start + w:start + 2 * w]))
            start += 2 * w
        return out

    def call(self, inputs):
        x, z = inputs
        for conv, norm, (gamma, beta) in zip(self.convs, self.norms, self.adain_parameters(z)):
            x = self.act(norm([conv(_reflect(x, 1)), gamma, beta]))
        return self.out(_reflect(x, 3))  # (B, H, W, output_channels)

    def default_input_shape(self):
        return [(None, self.input_size, self.input_size, self.anatomy_channels), (None, self.nz)]

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, anatomy_channels=self.anatomy_channels, nz=self.nz,
                      blocks=self.blocks, mlp_units=self.mlp_units, mlp_layers=self.mlp_layers,
                      output_channels=self.output_channels)
        return config
