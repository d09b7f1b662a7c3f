"""SDNet: the five networks wired together (decompose, reconstruct, segment)."""

import keras

from sdnet_tf.layers import PACKAGE
from sdnet_tf.models.anatomy_encoder import AnatomyEncoder
from sdnet_tf.models.base import NetworkGroup
from sdnet_tf.models.decoder import AdaINDecoder, FiLMDecoder
from sdnet_tf.models.discriminator import MaskDiscriminator
from sdnet_tf.models.lv_regressor import LVVolumeRegressor
from sdnet_tf.models.modality_encoder import ModalityEncoder
from sdnet_tf.models.segmentor import Segmentor

NETWORKS = ("anatomy_encoder", "modality_encoder", "decoder", "segmentor", "discriminator")


@keras.saving.register_keras_serializable(package=PACKAGE)
class SDNet(NetworkGroup):
    """Spatial Decomposition Network.

    An image x is factorised into a binary anatomy s = AnatomyEncoder(x) and a modality vector
    z ~ q(z | x, s); FiLMDecoder(s, z) reconstructs x; Segmentor(s) gives the masks; the mask
    discriminator scores masks for the adversarial loss.

    Args:
        input_size: height and width of the square input (224).
        input_channels: image channels (1).
        anatomy_channels: anatomy channels C (8).
        nz: size of the modality vector (8).
        unet_filters: filters of the U-Net's first level (64).
        unet_depth: U-Net down-sampling levels (4).
        num_classes: foreground classes (3).
        segmentor_filters: filters of the segmentor's convolutions (64).
        modality_filters: filters of the modality encoder's convolutions (16).
        discriminator_filters: filters of the discriminator's first convolution (64).
        spectral: discriminator penalty, "penalty" (original) or "none".
        spectral_weight: its weight (10).
        binarise: straight-through binarisation of the anatomy (True).
        binarisation: "round" (the original) or "argmax" (``layers.Binarise``).
        decoder: "film" (the original's ``FiLMDecoder``) or "adain" (``AdaINDecoder``, as
            Liu et al., M&Ms 2020).
        lv_volume_head: add the multi-task ``LVVolumeRegressor`` on the anatomy factor (the
            paper's Section 5.2), a sixth network ``lv_regressor``.
        seed: seed of the modality encoder's sampling stream.

    Call arguments:
        inputs: images (B, H, W, input_channels).
        training: BatchNorm mode.
        sample: sample z (True, as the original) or use its mean.

    Returns:
        A dict with ``anatomy`` (B, H, W, C), ``z``, ``mean``, ``logvar`` (B, nz),
        ``reconstruction`` (B, H, W, input_channels) and ``masks`` (B, H, W, num_classes).
    """

    def __init__(self, input_size=224, input_channels=1, anatomy_channels=8, nz=8, unet_filters=64,
                 unet_depth=4, num_classes=3, segmentor_filters=64, modality_filters=16,
                 discriminator_filters=64, spectral="penalty", spectral_weight=10.0, binarise=True,
                 binarisation="round", decoder="film", lv_volume_head=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.input_channels = input_channels
        self.anatomy_channels = anatomy_channels
        self.nz = nz
        self.unet_filters = unet_filters
        self.unet_depth = unet_depth
        self.num_classes = num_classes
        self.segmentor_filters = segmentor_filters
        self.modality_filters = modality_filters
        self.discriminator_filters = discriminator_filters
        self.spectral = spectral
        self.spectral_weight = spectral_weight
        self.binarise = binarise
        self.binarisation = binarisation
        if decoder not in ("film", "adain"):
            raise ValueError(f"decoder {decoder!r}: expected film or adain")
        self.decoder_kind = decoder
        self.lv_volume_head = bool(lv_volume_head)
        self.seed = seed

        self.anatomy_encoder = AnatomyEncoder(input_size, input_channels, anatomy_channels, unet_filters,
                                              unet_depth, binarise=binarise, binarisation=binarisation,
                                              name="anatomy_encoder")
        self.modality_encoder = ModalityEncoder(input_size, input_channels, anatomy_channels, nz,
                                                filters=modality_filters, seed=seed, name="modality_encoder")
        decoder_class = FiLMDecoder if decoder == "film" else AdaINDecoder
        self.decoder = decoder_class(input_size, anatomy_channels, nz, output_channels=input_channels, name="decoder")
        self.segmentor = Segmentor(input_size, anatomy_channels, num_classes, segmentor_filters,
                                   name="segmentor")
        self.discriminator = MaskDiscriminator(input_size, num_classes, discriminator_filters,
                                               spectral=spectral, spectral_weight=spectral_weight,
                                               name="discriminator")
        self.lv_regressor = None
        if self.lv_volume_head:
            self.lv_regressor = LVVolumeRegressor(input_size, anatomy_channels, name="lv_regressor")

    def networks(self):
        """The five networks by name, in a fixed order (and ``lv_regressor`` last when there is one)."""
        names = NETWORKS + (("lv_regressor",) if self.lv_volume_head else ())
        return {name: getattr(self, name) for name in names}

    def decompose(self, images, training=None, sample=True, noise=None):
        """Images -> (anatomy, z, mean, logvar); ``noise`` is z's ``eps`` (None: drawn)."""
        anatomy = self.anatomy_encoder(images, training=training)
        z, mean, logvar = self.modality_encoder([anatomy, images], training=training, sample=sample,
                                                noise=noise)
        return anatomy, z, mean, logvar

    def reconstruct(self, anatomy, z):
        """(anatomy, z) -> image."""
        return self.decoder([anatomy, z])

    def segment(self, images, training=None):
        """Images -> foreground probabilities, the test-time model Segmentor(Binarise(U-Net(x)))."""
        return self.segmentor(self.anatomy_encoder(images, training=training), training=training)

    def call(self, inputs, training=None, sample=True):
        anatomy, z, mean, logvar = self.decompose(inputs, training=training, sample=sample)
        masks = self.segmentor(anatomy, training=training)
        return {
            "anatomy": anatomy,
            "z": z,
            "mean": mean,
            "logvar": logvar,
            "reconstruction": self.reconstruct(anatomy, z),
            "masks": masks,
            "score": self.discriminator(masks),
        }

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, input_channels=self.input_channels,
                      anatomy_channels=self.anatomy_channels, nz=self.nz, unet_filters=self.unet_filters,
                      unet_depth=self.unet_depth, num_classes=self.num_classes,
                      segmentor_filters=self.segmentor_filters, modality_filters=self.modality_filters,
                      discriminator_filters=self.discriminator_filters, spectral=self.spectral,
                      spectral_weight=self.spectral_weight, binarise=self.binarise, binarisation=self.binarisation,
                      decoder=self.decoder_kind, lv_volume_head=self.lv_volume_head, seed=self.seed)
        return config
