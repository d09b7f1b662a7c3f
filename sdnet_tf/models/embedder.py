"""The mask embedder of FRDS: a ResNet-18 trained by SimCLR on cardiac masks.

The NVAE thesis scores its samples by FRDS, the Frechet distance between ResNet-18 embeddings
of real and generated masks (as FID does with Inception features). Its ResNet-18 is trained by
SimCLR (Chen et al., ICML 2020) on the masks themselves, given as three channels (RV, MYO, LV)
scaled to [-1, 1]; the 512 features after global pooling are the embedding, and a two-layer
projection head (512 -> 512 -> ReLU -> 128) is used only by the contrastive loss.
"""

import keras
from keras import layers, ops

from sdnet_tf.layers import PACKAGE
from sdnet_tf.models.base import SymbolicBuildModel

STAGES = (1, 2, 4, 8)  # ResNet-18's stage widths, in units of ``width``
BLOCKS_PER_STAGE = 2


def _bn(name):
    # PyTorch's BatchNorm2d defaults (momentum 0.1 there is 0.9 here)
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


class _BasicBlock:
    """ResNet's basic block: 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus the input (through
    a 1x1 stride-s conv and BN when the stride or the width changes), then ReLU."""

    def __init__(self, channels, strides, project, name):
        init = "he_normal"
        self.conv1 = layers.Conv2D(channels, 3, strides=strides, padding="same", use_bias=False,
                                   kernel_initializer=init, name=f"{name}_conv1")
        self.bn1 = _bn(f"{name}_bn1")
        self.conv2 = layers.Conv2D(channels, 3, padding="same", use_bias=False, kernel_initializer=init,
                                   name=f"{name}_conv2")
        self.bn2 = _bn(f"{name}_bn2")
        self.shortcut = None
        if project:
            self.shortcut = (layers.Conv2D(channels, 1, strides=strides, use_bias=False, kernel_initializer=init,
                                           name=f"{name}_down"), _bn(f"{name}_down_bn"))

    def layers(self):
        extra = list(self.shortcut) if self.shortcut else []
        return [self.conv1, self.bn1, self.conv2, self.bn2, *extra]

    def __call__(self, x, training):
        y = ops.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        if self.shortcut is not None:
            conv, norm = self.shortcut
            x = norm(conv(x), training=training)
        return ops.relu(x + y)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskEmbedder(SymbolicBuildModel):
    """ResNet-18 with SimCLR's projection head, on one-hot cardiac masks.

    Input: one-hot or soft masks (B, H, W, 4) in the priors' channel order (background, RV,
    MYO, LV); the network reads ``2 * mask - 1`` of the RV, MYO and LV channels (the thesis'
    image of a mask). Backbone: 7x7 stride-2 conv (``width`` channels) -> BN -> ReLU -> 3x3
    stride-2 max pool; four stages of two basic blocks of ``width``, ``2 width``, ``4 width``,
    ``8 width`` channels, the last three starting with stride 2; global average pooling to
    ``8 width`` features, the embedding. Head: Dense(``8 width``) -> ReLU -> Dense
    (``projection``), torchvision's ResNet-18 with ``num_classes=512`` and the thesis' extra
    ReLU and Linear. At ``width`` 64: 11,176,512 backbone and 328,320 head parameters.

    Args:
        input_size: mask height and width (128); a multiple of 32.
        width: channels of the first stage (64 in ResNet-18).
        projection: size of the projection (``8 * width // 4``, 128, in the thesis).
        seed: unused by the layers (Keras' global seed sets the initial weights); kept in the
            config.

    Reference:
        He et al., "Deep residual learning for image recognition", CVPR 2016; Chen et al.,
        "A simple framework for contrastive learning of visual representations", ICML 2020;
        the thesis' arch/simclr/simclr.py (j-freddy/nvae-shape-encoding).
    """

    def __init__(self, input_size=128, width=64, projection=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if input_size % 32:
            raise ValueError(f"MaskEmbedder input_size {input_size} must be a multiple of 32")
        self.input_size = input_size
        self.width = width
        self.embedding = 8 * width
        self.projection = projection or self.embedding // 4
        self.seed = seed
        self.stem = layers.Conv2D(width, 7, strides=2, padding="same", use_bias=False,
                                  kernel_initializer="he_normal", name="stem")
        self.stem_bn = _bn("stem_bn")
        self.pool = layers.MaxPooling2D(3, strides=2, padding="same", name="pool")
        self.blocks = []
        channels_in = width
        for s, factor in enumerate(STAGES):
            channels = width * factor
            for b in range(BLOCKS_PER_STAGE):
                strides = 2 if (b == 0 and s > 0) else 1
                self.blocks.append(_BasicBlock(channels, strides, strides != 1 or channels != channels_in,
                                               f"stage{s + 1}_block{b + 1}"))
                channels_in = channels
        # the blocks are plain objects: track their layers so their weights are the model's
        self.block_layers = [layer for block in self.blocks for layer in block.layers()]
        self.gap = layers.GlobalAveragePooling2D(name="gap")
        self.fc = layers.Dense(self.embedding, name="fc")
        self.head = layers.Dense(self.projection, name="head")

    def embed(self, masks, training=False):
        """The embedding (B, 8 * width) of masks (B, H, W, 4): the pooled backbone features."""
        x = 2.0 * ops.convert_to_tensor(masks)[..., 1:4] - 1.0
        x = ops.relu(self.stem_bn(self.stem(x), training=training))
        x = self.pool(x)
        for block in self.blocks:
            x = block(x, training)
        return self.gap(x)

    def call(self, inputs, training=None):
        """The projection (B, projection) the contrastive loss compares."""
        return self.head(ops.relu(self.fc(self.embed(inputs, training=training))))

    def default_input_shape(self):
        return (None, self.input_size, self.input_size, 4)

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, width=self.width, projection=self.projection, seed=self.seed)
        return config
