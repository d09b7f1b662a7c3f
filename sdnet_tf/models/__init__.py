"""The SDNet networks, one per module, written with Keras 3 and keras.ops only."""

from sdnet_tf.models.acnn import ShapeAutoencoder
from sdnet_tf.models.anatomy_encoder import AnatomyEncoder
from sdnet_tf.models.baselines import NETWORKS_UNET_GAN, UNetGAN
from sdnet_tf.models.decoder import AdaINDecoder, FiLMDecoder
from sdnet_tf.models.discriminator import MaskDiscriminator
from sdnet_tf.models.modality_encoder import ModalityEncoder
from sdnet_tf.models.nvae import NVAE
from sdnet_tf.models.sdnet import NETWORKS, SDNet
from sdnet_tf.models.sdnet2018 import NETWORKS_2018, SDNet2018
from sdnet_tf.models.segmentor import Segmentor
from sdnet_tf.models.tl import CodePredictor, TLNetwork

__all__ = ["AnatomyEncoder", "ModalityEncoder", "FiLMDecoder", "AdaINDecoder", "Segmentor", "MaskDiscriminator", "SDNet",
           "NVAE", "ShapeAutoencoder", "NETWORKS", "SDNet2018", "NETWORKS_2018",
           "UNetGAN", "NETWORKS_UNET_GAN", "CodePredictor", "TLNetwork"]
