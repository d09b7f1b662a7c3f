"""ACNN shape prior: a convolutional autoencoder of one-hot cardiac masks (Oktay et al. 2018).

The encoder of an autoencoder trained on ground-truth masks gives a compact, linear code of a
mask; a segmentation network is then trained with an extra loss on the distance between the
codes of its prediction and of the ground truth. The autoencoder is trained as a denoising
autoencoder: :func:`swap_labels` corrupts the input masks (probability 0.1 in ACNN) and the
target stays the clean mask.
"""

import keras
from keras import layers, ops

from sdnet_tf.layers import PACKAGE
from sdnet_tf.models.base import SymbolicBuildModel

SWAP_PROBABILITY = 0.1  # ACNN's label-swap rate for the denoising corruption


def swap_labels(masks, probability, seed_generator):
    """Label-swap corruption of one-hot masks (ACNN's denoising noise).

    Every pixel independently, with probability ``probability``, is given a label drawn
    uniformly from all ``num_classes`` classes (its own included, so a pixel actually changes
    with probability ``probability * (1 - 1 / num_classes)``).

    Args:
        masks: one-hot masks (B, H, W, num_classes); the class axis must have a static size.
        probability: swap probability per pixel, in [0, 1]; 0 returns ``masks`` unchanged.
        seed_generator: a ``keras.random.SeedGenerator`` (or an int seed) for the draws.

    Returns:
        One-hot masks of the shape and dtype of ``masks``.
    """
    masks = ops.convert_to_tensor(masks)
    num_classes = masks.shape[-1]
    if num_classes is None:
        raise ValueError("swap_labels needs a static number of classes (the last axis)")
    shape = ops.shape(masks)[:-1]  # (B, H, W)
    swap = keras.random.uniform(shape, seed=seed_generator) < probability
    labels = keras.random.randint(shape, 0, num_classes, seed=seed_generator)
    replacement = ops.one_hot(labels, num_classes, dtype=masks.dtype)
    return ops.where(ops.expand_dims(swap, -1), replacement, masks)


def conv_bn(channels, name, strides=1):
    """A 3x3 convolution without bias and its BatchNorm, ``[conv, norm]`` (see ``run_conv_bn``)."""
    return [layers.Conv2D(channels, 3, strides=strides, padding="same", use_bias=False, name=name),
            layers.BatchNormalization(name=f"{name}_bn")]


def run_conv_bn(block, x, training):
    """Apply the (layer, BatchNorm) pairs of ``block``, each followed by ReLU."""
    for layer, norm in zip(block[::2], block[1::2]):
        x = ops.relu(norm(layer(x), training=training))
    return x


def encoder_channels(filters, levels):
    """Channels of the ACNN encoder: ``[0]`` at full size, ``[l]`` after l stride-2 levels."""
    return [min(filters * 2 ** level, 8 * filters) for level in range(levels + 1)]


def encoder_layers(channels, stem_name, level_name):
    """The ACNN encoder's conv + BatchNorm layers for ``channels`` (``encoder_channels``):
    ``(stem, blocks)``, each level a stride-2 conv and a plain conv; ``level_name`` is a format
    string of the level (the layers' names are those of the weights files)."""
    stem = conv_bn(channels[0], stem_name)
    blocks = [conv_bn(channels[level], f"{level_name.format(level)}_down", strides=2)
              + conv_bn(channels[level], f"{level_name.format(level)}_conv")
              for level in range(1, len(channels))]
    return stem, blocks


def run_encoder(stem, blocks, x, training):
    """(B, H, W, C) -> (B, H / 2**levels, W / 2**levels, channels[-1]) through ``encoder_layers``."""
    x = run_conv_bn(stem, x, training)
    for block in blocks:
        x = run_conv_bn(block, x, training)  # (B, H / 2, W / 2, channels)
    return x


@keras.saving.register_keras_serializable(package=PACKAGE)
class ShapeAutoencoder(SymbolicBuildModel):
    """ACNN's convolutional shape autoencoder on one-hot masks (channels [background, RV, MYO, LV]).

    Encoder: 3x3 conv (``filters``) -> BN -> ReLU; per level a stride-2 3x3 conv doubling the
    channels (never more than ``8 * filters``) -> BN -> ReLU and a 3x3 conv -> BN -> ReLU;
    flatten; Dense(``code_size``) with no activation, so the code is linear (as in ACNN).

    Decoder, the encoder's mirror: Dense to ``(input_size / 2**levels)**2 * C`` -> ReLU, with
    C the encoder's deepest channels; reshape; per level a stride-2 3x3 transposed conv to the
    channels of the encoder level above it (halving them, up to the cap) -> BN -> ReLU and a
    3x3 conv -> BN -> ReLU; a 3x3 conv to ``num_classes`` logits. Convolutions followed by
    BatchNorm have no bias; BatchNorm uses the Keras defaults.

    At the defaults the channels are 16@128 -> 32@64 -> 64@32 -> 128@16 -> 128@8, the code
    has 64 values, and most parameters sit in the two dense layers (8192 x 64 each way).

    The denoising corruption is not applied in ``call``: a training step corrupts the input
    with :func:`swap_labels` (for instance :meth:`corrupt`) and compares the logits with the
    clean masks.

    Args:
        input_size: mask height and width (128); a multiple of ``2 ** levels``.
        num_classes: mask channels and logits (4).
        code_size: length of the code (64, as in ACNN).
        filters: channels of the first convolution (16).
        levels: stride-2 levels of the encoder and of the decoder (4).
        seed: seed of the model's random stream (used by :meth:`corrupt`).

    Call arguments:
        inputs: one-hot or soft masks (B, H, W, num_classes).
        training: BatchNorm mode.

    Returns:
        Logits (B, H, W, num_classes) of the reconstruction.

    Reference:
        Oktay et al., "Anatomically Constrained Neural Networks (ACNNs): Application to
        Cardiac Image Enhancement and Segmentation", IEEE TMI 37(2), 2018.
    """

    def __init__(self, input_size=128, num_classes=4, code_size=64, filters=16, levels=4, seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        factor = 2 ** levels
        if levels < 1 or input_size % factor:
            raise ValueError(f"ShapeAutoencoder input_size {input_size} must be a multiple of {factor} "
                             f"(2 ** levels, levels={levels} >= 1)")
        self.input_size = input_size
        self.num_classes = num_classes
        self.code_size = code_size
        self.filters = filters
        self.levels = levels
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

        # channels[0] at full size, channels[l] after l stride-2 levels
        self.channels = encoder_channels(filters, levels)
        self.bottom_size = input_size // factor

        self.stem, self.enc_blocks = encoder_layers(self.channels, "enc_stem", "enc{}")
        self.flatten = layers.Flatten(name="flatten")
        self.code = layers.Dense(code_size, name="code")  # linear: no activation

        self.expand = layers.Dense(self.bottom_size ** 2 * self.channels[-1], activation="relu", name="expand")
        self.reshape = layers.Reshape((self.bottom_size, self.bottom_size, self.channels[-1]), name="reshape")
        self.dec_blocks = []
        for level in reversed(range(levels)):  # up to the size of encoder level `level`
            up = layers.Conv2DTranspose(self.channels[level], 3, strides=2, padding="same", use_bias=False,
                                        name=f"dec{level}_up")
            self.dec_blocks.append([up, layers.BatchNormalization(name=f"dec{level}_up_bn")]
                                   + conv_bn(self.channels[level], f"dec{level}_conv"))
        self.head = layers.Conv2D(num_classes, 3, padding="same", name="logits")

    def encode(self, masks, training=False):
        """Linear codes of masks.

        Args:
            masks: one-hot or soft masks (B, H, W, num_classes).
            training: BatchNorm mode (False: the frozen prior).

        Returns:
            Codes (B, code_size).
        """
        return self.code(self.flatten(run_encoder(self.stem, self.enc_blocks, masks, training)))

    def decode(self, codes, training=False):
        """Logits (B, H, W, num_classes) of the masks of codes (B, code_size)."""
        x = self.reshape(self.expand(codes))  # (B, bottom, bottom, deepest channels)
        for block in self.dec_blocks:
            x = run_conv_bn(block, x, training)  # (B, 2H, 2W, channels / 2)
        return self.head(x)

    def codes(self, masks, training=False):
        """The shape loss's features: ``[encode(masks)]``, a one-element list.

        A list, as the NVAE's deterministic codes are one tensor per latent group, so that a
        shape loss sums squared distances over the list for either prior.
        """
        return [self.encode(masks, training=training)]

    def reconstruct(self, masks, training=False):
        """Logits (B, H, W, num_classes) of the reconstruction, by default in inference mode."""
        return self.decode(self.encode(masks, training=training), training=training)

    def corrupt(self, masks, probability=SWAP_PROBABILITY):
        """:func:`swap_labels` of masks with the model's random stream."""
        return swap_labels(masks, probability, self.seed_generator)

    def call(self, inputs, training=None):
        return self.decode(self.encode(inputs, training=training), training=training)

    def default_input_shape(self):
        return (None, self.input_size, self.input_size, self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, num_classes=self.num_classes, code_size=self.code_size,
                      filters=self.filters, levels=self.levels, seed=self.seed)
        return config
