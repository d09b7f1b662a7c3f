"""The baselines of the SDNet papers, trained in SDNet's own data pipeline and loop.

``UNetGAN`` is the U-Net that SDNet is compared with (Chartsias et al., MedIA 2019, Section
6: "U-Net", "GAN" and self-training), sized and trained like SDNet so that a comparison
changes only the model:

- the U-Net is SDNet's anatomy encoder (``AnatomyEncoder``: the same levels, filters,
  BatchNorm and ReLU) with a 1x1 softmax head over ``num_classes + 1`` channels, foreground
  first in SDNet's order [MYO, LV, RV] and background last (as SDNet's segmentor), not
  binarised;
- the mask discriminator is SDNet's (``MaskDiscriminator``, the same size and spectral
  penalty);
- with ``loss.adversarial`` > 0 the segmentations of the unlabelled images are pushed
  towards the real masks through the discriminator (the "GAN" baseline); with 0 the
  discriminator is never run and the model is the plain supervised U-Net;
- self-training (``train.self_training_rounds``) retrains it on its own thresholded
  segmentations of the unlabelled images (``sdnet_tf.apps.self_training``).
"""

import keras

from sdnet_tf.layers import PACKAGE
from sdnet_tf.models.anatomy_encoder import AnatomyEncoder
from sdnet_tf.models.base import NetworkGroup
from sdnet_tf.models.discriminator import MaskDiscriminator

NETWORKS_UNET_GAN = ("unet", "discriminator")


@keras.saving.register_keras_serializable(package=PACKAGE)
class UNetGAN(NetworkGroup):
    """A U-Net segmenter and SDNet's mask discriminator (``model.kind: unet_gan``).

    Args:
        input_size: height and width of the square input (224 in the original); divisible by
            2**``unet_depth``.
        input_channels: image channels (1).
        num_classes: foreground classes L (3: MYO, LV, RV).
        unet_filters: filters of the U-Net's first level (64).
        unet_depth: U-Net levels (4).
        discriminator_filters: first filters of the mask discriminator (64).
        spectral: the discriminator's spectral regularisation, "penalty" or "none".
        spectral_weight: its weight.

    Call arguments:
        inputs: images (B, H, W, input_channels) in [-1, 1].
        training: BatchNorm mode.
        sample: ignored; accepted for SDNet's interface.

    Returns:
        A dict with ``masks``, the foreground probabilities (B, H, W, L), and ``mask_score``,
        the discriminator's score of them (B, 1).
    """

    def __init__(self, input_size=224, input_channels=1, num_classes=3, unet_filters=64, unet_depth=4,
                 discriminator_filters=64, spectral="penalty", spectral_weight=10.0, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.input_channels = input_channels
        self.num_classes = num_classes
        self.unet_filters = unet_filters
        self.unet_depth = unet_depth
        self.discriminator_filters = discriminator_filters
        self.spectral = spectral
        self.spectral_weight = spectral_weight
        self.unet = AnatomyEncoder(input_size, input_channels, num_classes + 1, unet_filters, unet_depth,
                                   binarise=False, name="unet")
        self.discriminator = MaskDiscriminator(input_size, num_classes, discriminator_filters, spectral=spectral,
                                               spectral_weight=spectral_weight, name="discriminator")

    def networks(self):
        """The two networks by name, in a fixed order."""
        return {name: getattr(self, name) for name in NETWORKS_UNET_GAN}

    def segment(self, images, training=None):
        """Images (B, H, W, input_channels) -> foreground probabilities (B, H, W, L); the
        background, the last softmax channel, is dropped."""
        return self.unet(images, training=training)[..., : self.num_classes]

    def call(self, inputs, training=None, sample=True):
        masks = self.segment(inputs, training=training)
        return {"masks": masks, "mask_score": self.discriminator(masks)}

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, input_channels=self.input_channels, num_classes=self.num_classes,
                      unet_filters=self.unet_filters, unet_depth=self.unet_depth,
                      discriminator_filters=self.discriminator_filters, spectral=self.spectral,
                      spectral_weight=self.spectral_weight)
        return config
