"""The MICCAI 2018 precursor of SDNet: a myocardium mask and a 16-value z, an image and a mask
discriminator.

Chartsias et al., "Factorised spatial representation learning: application in semi-supervised
myocardial segmentation", MICCAI 2018, and its code (agis85/spatial_factorisation: sdnet.py,
models/unet.py, models/resnet.py, models/discriminator.py), rebuilt here layer by layer:

- the decomposer is a U-Net (two 3x3 conv -> BatchNorm -> LeakyReLU 0.3 per level, four
  levels, 64 filters first) whose 1x1 sigmoid head gives the soft myocardium mask, and whose
  bottleneck feeds z: 3x3 conv 4F -> BN -> LeakyReLU, 3x3 conv F -> BN -> LeakyReLU,
  flatten, Dense 32 -> LeakyReLU, Dense 16 with sigmoid;
- the reconstructor binarises the mask (straight-through rounding, the only binarisation of
  the model), maps z to 8 maps of the image's size (Dense 32 -> LeakyReLU -> Dense H*W ->
  LeakyReLU -> reshape to H/4 x W/4 x 16 -> twice upsample, 3x3 conv, BN, LeakyReLU with 16
  then 8 filters), concatenates them with the mask and runs three residual blocks of 9
  channels with instance normalisation, then a 7x7 conv with tanh;
- the image and mask discriminators are the same patch LSGAN critic: 4x4 conv 32 stride 2,
  then 4x4 convs of 64, 128, 256 with strides 2, 2, 1, each followed by LeakyReLU 0.2, and a
  4x4 conv to one score per patch (H/8 x W/8).

Keras 2's LeakyReLU default slope (0.3) is the original's wherever it wrote ``LeakyReLU()``.
"""

import keras
from keras import layers

from sdnet_tf.layers import PACKAGE, Binarise
from sdnet_tf.models.anatomy_encoder import AnatomyEncoder
from sdnet_tf.models.base import NetworkGroup, SymbolicBuildModel

NETWORKS_2018 = ("decomposer", "reconstructor", "mask_discriminator", "image_discriminator")


def _leaky(name):
    return layers.LeakyReLU(0.3, name=name)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Decomposer2018(SymbolicBuildModel):
    """Image -> (soft myocardium mask, z): the 2018 U-Net and its z head on the bottleneck.

    Args:
        input_size: height and width (224 in the original); divisible by 2**depth.
        input_channels: image channels (1).
        filters: filters F of the U-Net's first level (64); the z head has 4F and F.
        depth: U-Net levels (4).
        nz: size of z (16).

    Call arguments:
        inputs: images (B, H, W, input_channels) in [-1, 1].
        training: BatchNorm mode.

    Returns:
        ``(mask, z)``: the sigmoid mask (B, H, W, 1), not binarised, and z (B, nz) in (0, 1).
    """

    def __init__(self, input_size=224, input_channels=1, filters=64, depth=4, nz=16, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.input_channels = input_channels
        self.filters = filters
        self.depth = depth
        self.nz = nz
        self.unet = AnatomyEncoder(input_size, input_channels, channels=1, filters=filters, depth=depth,
                                   binarise=False, activation="leaky_relu", head_activation="sigmoid", name="unet")
        self.z_convs = [layers.Conv2D(4 * filters, 3, padding="same", name="z_conv0"),
                        layers.Conv2D(filters, 3, padding="same", name="z_conv1")]
        self.z_norms = [layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name=f"z_bn{i}") for i in range(2)]
        self.z_acts = [_leaky(f"z_act{i}") for i in range(3)]
        self.flatten = layers.Flatten()
        self.z_hidden = layers.Dense(32, name="z_dense0")
        self.z_out = layers.Dense(nz, activation="sigmoid", name="z")

    def call(self, inputs, training=None):
        mask, x = self.unet.encode(inputs, training=training)  # x: (B, H / 16, W / 16, 16F)
        for conv, norm, act in zip(self.z_convs, self.z_norms, self.z_acts):
            x = act(norm(conv(x), training=training))
        z = self.z_out(self.z_acts[2](self.z_hidden(self.flatten(x))))  # (B, nz)
        return mask, z

    def default_input_shape(self):
        return (None, self.input_size, self.input_size, self.input_channels)

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, input_channels=self.input_channels, filters=self.filters,
                      depth=self.depth, nz=self.nz)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class Reconstructor2018(SymbolicBuildModel):
    """(mask, z) -> image: the 2018 reconstructor, binarising the mask at its input.

    Args:
        input_size: height and width (224); divisible by 4.
        nz: size of z (16).
        blocks: residual blocks (3).
        output_channels: image channels (1).

    Call arguments:
        inputs: list ``[mask (B, H, W, 1) in [0, 1], z (B, nz)]``.
        training: BatchNorm mode of the z path.

    Returns:
        Image (B, H, W, output_channels) in [-1, 1].
    """

    def __init__(self, input_size=224, nz=16, blocks=3, output_channels=1, **kwargs):
        super().__init__(**kwargs)
        if input_size % 4:
            raise ValueError(f"input_size {input_size} is not divisible by 4")
        self.input_size = input_size
        self.nz = nz
        self.blocks = blocks
        self.output_channels = output_channels
        width = 1 + 8  # the mask and z's 8 maps
        self.binarise = Binarise("round", name="binarise")
        self.z_hidden = layers.Dense(32, name="z_dense0")
        self.z_map = layers.Dense(input_size * input_size, name="z_dense1")
        self.reshape = layers.Reshape((input_size // 4, input_size // 4, 16))
        self.upsample = layers.UpSampling2D(2)
        self.z_convs = [layers.Conv2D(16, 3, padding="same", name="z_conv0"),
                        layers.Conv2D(8, 3, padding="same", name="z_conv1")]
        self.z_norms = [layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name=f"z_bn{i}") for i in range(2)]
        self.z_acts = [_leaky(f"z_act{i}") for i in range(4)]
        self.concat = layers.Concatenate(axis=-1)
        # instance normalisation with a learnt scale and shift per channel (groups = channels)
        self.res_convs, self.res_norms = [], []
        for i in range(blocks):
            self.res_convs.append([layers.Conv2D(width, 3, padding="same", name=f"res{i}_conv{j}") for j in (0, 1)])
            self.res_norms.append([layers.GroupNormalization(groups=-1, epsilon=1e-7, name=f"res{i}_in{j}")
                                   for j in (0, 1)])
        self.res_act = _leaky("res_act")
        self.add = layers.Add()
        self.out = layers.Conv2D(output_channels, 7, padding="same", activation="tanh", name="image")

    def call(self, inputs, training=None):
        mask, z = inputs
        m = self.z_acts[1](self.z_map(self.z_acts[0](self.z_hidden(z))))  # (B, H * W)
        m = self.reshape(m)  # (B, H / 4, W / 4, 16)
        for conv, norm, act in zip(self.z_convs, self.z_norms, self.z_acts[2:]):
            m = act(norm(conv(self.upsample(m)), training=training))  # ends (B, H, W, 8)
        x = self.concat([self.binarise(mask), m])  # (B, H, W, 9)
        for (conv0, conv1), (norm0, norm1) in zip(self.res_convs, self.res_norms):
            y = self.res_act(norm0(conv0(x)))
            x = self.res_act(self.add([x, norm1(conv1(y))]))
        return self.out(x)

    def default_input_shape(self):
        return [(None, self.input_size, self.input_size, 1), (None, self.nz)]

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, nz=self.nz, blocks=self.blocks,
                      output_channels=self.output_channels)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchDiscriminator(SymbolicBuildModel):
    """The 2018 LSGAN critic of images or masks: one score per patch.

    Args:
        input_size: height and width (224); divisible by 8.
        channels: input channels (1).
        filters: filters of the first convolution (32).
        blocks: deeper convolutions, doubling the filters, strides 2, ..., 2, 1 (3).

    Call arguments:
        inputs: images or masks (B, H, W, channels).

    Returns:
        Scores (B, H / 2**blocks, W / 2**blocks, 1).
    """

    def __init__(self, input_size=224, channels=1, filters=32, blocks=3, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.channels = channels
        self.filters = filters
        self.blocks = blocks
        self.convs = [layers.Conv2D(filters, 4, strides=2, padding="same", name="conv0")]
        for i in range(blocks):
            stride = 1 if i == blocks - 1 else 2
            self.convs.append(layers.Conv2D(filters * 2 ** (i + 1), 4, strides=stride, padding="same",
                                            name=f"conv{i + 1}"))
        self.act = layers.LeakyReLU(0.2)
        self.score = layers.Conv2D(1, 4, padding="same", name="score")

    def call(self, inputs):
        x = inputs
        for conv in self.convs:
            x = self.act(conv(x))
        return self.score(x)

    def default_input_shape(self):
        return (None, self.input_size, self.input_size, self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, channels=self.channels, filters=self.filters,
                      blocks=self.blocks)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SDNet2018(NetworkGroup):
    """The MICCAI 2018 precursor: decomposer, reconstructor, mask and image discriminators.

    The anatomy factor is a single myocardium channel; it is the segmentation (no separate
    segmentor) and is binarised only where the reconstructor reads it. z is deterministic.

    Args:
        input_size: height and width (224).
        input_channels: image channels (1).
        nz: size of z (16).
        unet_filters: filters of the U-Net's first level (64).
        unet_depth: U-Net levels (4).
        discriminator_filters: first filters of both discriminators (32).
        reconstructor_blocks: residual blocks of the reconstructor (3).

    Call arguments:
        inputs: images (B, H, W, input_channels) in [-1, 1].
        training: BatchNorm mode.
        sample: ignored (z is deterministic); accepted for SDNet's interface.

    Returns:
        A dict with ``masks`` (B, H, W, 1) the soft myocardium mask, ``anatomy`` its
        binarisation as the reconstructor reads it, ``z`` (B, nz) and ``reconstruction``
        (B, H, W, input_channels).
    """

    num_classes = 1  # the myocardium, SDNet's first foreground channel
    anatomy_channels = 1

    def __init__(self, input_size=224, input_channels=1, nz=16, unet_filters=64, unet_depth=4,
                 discriminator_filters=32, reconstructor_blocks=3, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.input_channels = input_channels
        self.nz = nz
        self.unet_filters = unet_filters
        self.unet_depth = unet_depth
        self.discriminator_filters = discriminator_filters
        self.reconstructor_blocks = reconstructor_blocks
        self.decomposer = Decomposer2018(input_size, input_channels, unet_filters, unet_depth, nz, name="decomposer")
        self.reconstructor = Reconstructor2018(input_size, nz, reconstructor_blocks, input_channels,
                                               name="reconstructor")
        self.mask_discriminator = PatchDiscriminator(input_size, 1, discriminator_filters, name="mask_discriminator")
        self.image_discriminator = PatchDiscriminator(input_size, input_channels, discriminator_filters,
                                                      name="image_discriminator")

    def networks(self):
        """The four networks by name, in a fixed order."""
        return {name: getattr(self, name) for name in NETWORKS_2018}

    def decompose(self, images, training=None):
        """Images -> (soft mask (B, H, W, 1), z (B, nz))."""
        return self.decomposer(images, training=training)

    def reconstruct(self, mask, z, training=None):
        """(mask, z) -> image; the mask is binarised inside."""
        return self.reconstructor([mask, z], training=training)

    def segment(self, images, training=None):
        """Images -> the soft myocardium mask (B, H, W, 1)."""
        return self.decomposer(images, training=training)[0]

    def call(self, inputs, training=None, sample=True):
        mask, z = self.decompose(inputs, training=training)
        return {"masks": mask, "anatomy": self.reconstructor.binarise(mask), "z": z,
                "reconstruction": self.reconstruct(mask, z, training=training),
                "mask_score": self.mask_discriminator(mask), "image_score": self.image_discriminator(inputs)}

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, input_channels=self.input_channels, nz=self.nz,
                      unet_filters=self.unet_filters, unet_depth=self.unet_depth,
                      discriminator_filters=self.discriminator_filters,
                      reconstructor_blocks=self.reconstructor_blocks)
        return config
