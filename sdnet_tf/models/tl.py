"""ACNN's T-L network: an image encoder that predicts the shape autoencoder's code, and the
frozen autoencoder's decoder that turns the predicted code into a segmentation.

Oktay et al. (2018) compare their anatomically constrained segmentation with the T-L network
of Girdhar et al. (2016): an autoencoder (AE) is first trained on ground-truth masks
(``ShapeAutoencoder``); a predictor network is then trained, with the AE fixed, to regress
the AE's code of an image's ground-truth mask from the image, by the squared Euclidean
distance between the codes; at test time the image is segmented "through the prior", by
decoding its predicted code with the AE's decoder. Girdhar et al. end with a third stage
that fine-tunes both networks jointly; this port keeps the AE frozen throughout (the
second stage), so the decoder stays the shape model the prior learned.
"""

import keras
from keras import layers, ops

from sdnet_tf.layers import PACKAGE
from sdnet_tf.models.acnn import ShapeAutoencoder, encoder_channels, encoder_layers, run_encoder
from sdnet_tf.models.base import NetworkGroup, SymbolicBuildModel


@keras.saving.register_keras_serializable(package=PACKAGE)
class CodePredictor(SymbolicBuildModel):
    """The T-L network's image encoder: images to a shape autoencoder's linear code.

    The mirror of ``ShapeAutoencoder``'s encoder, read on images instead of one-hot masks:
    3x3 conv (``filters``) -> BN -> ReLU; per level a stride-2 3x3 conv doubling the channels
    (never more than ``8 * filters``) -> BN -> ReLU and a 3x3 conv -> BN -> ReLU; flatten;
    Dense(``code_size``) with no activation, since the AE's code it regresses is linear.
    Convolutions followed by BatchNorm have no bias.

    Followed from the paper: a convolutional encoder down to the AE's code, of the AE's
    length, with a linear output. Chosen here (the paper does not fix them for this 2-D
    setting): the AE encoder's layer pattern, with by default its widths and levels
    (``TLNetwork`` passes the AE's when the config gives 0), and one input channel.

    Trainable parameters, with ``c_0 .. c_L`` the channels of the levels and ``S`` the input
    size: ``9 * input_channels * c_0 + 2 * c_0 + sum_l (9 c_{l-1} c_l + 9 c_l^2 + 4 c_l)
    + ((S / 2**L)**2 * c_L + 1) * code_size``; 1,111,152 at the defaults.

    Args:
        input_size: image height and width (128); a multiple of ``2 ** levels``.
        input_channels: image channels (1).
        code_size: length of the predicted code (the AE's: 64 in ACNN).
        filters: channels of the first convolution (16, the AE's default).
        levels: stride-2 levels (4, the AE's default).

    Call arguments:
        inputs: images (B, input_size, input_size, input_channels).
        training: BatchNorm mode.

    Returns:
        Codes (B, code_size).

    Raises:
        ValueError: ``input_size`` is not a multiple of ``2 ** levels``, or ``levels`` < 1.

    Reference:
        Oktay et al., "Anatomically Constrained Neural Networks (ACNNs): Application to
        Cardiac Image Enhancement and Segmentation", IEEE TMI 37(2), 2018 (the T-L network);
        Girdhar et al., "Learning a Predictable and Generative Vector Representation for
        Objects", ECCV 2016 (the TL-embedding network).
    """

    def __init__(self, input_size=128, input_channels=1, code_size=64, filters=16, levels=4, **kwargs):
        super().__init__(**kwargs)
        factor = 2 ** levels
        if levels < 1 or input_size % factor:
            raise ValueError(f"CodePredictor input_size {input_size} must be a multiple of {factor} "
                             f"(2 ** levels, levels={levels} >= 1)")
        self.input_size = input_size
        self.input_channels = input_channels
        self.code_size = code_size
        self.filters = filters
        self.levels = levels
        self.channels = encoder_channels(filters, levels)
        self.stem, self.blocks = encoder_layers(self.channels, "stem", "level{}")
        self.flatten = layers.Flatten(name="flatten")
        self.code = layers.Dense(code_size, name="code")  # linear, as the AE's code

    def call(self, inputs, training=None):
        return self.code(self.flatten(run_encoder(self.stem, self.blocks, inputs, training)))  # (B, code_size)

    def default_input_shape(self):
        return (None, self.input_size, self.input_size, self.input_channels)

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, input_channels=self.input_channels, code_size=self.code_size,
                      filters=self.filters, levels=self.levels)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TLNetwork(NetworkGroup):
    """ACNN's T-L network: ``CodePredictor`` and a frozen ``ShapeAutoencoder``.

    ``call(images)`` is the segmentation through the prior: the softmax of the AE decoder's
    logits of the predicted code, over the AE's channels (background, RV, MYO, LV). The AE
    is marked not trainable at construction and always runs in inference mode; its weights
    are those of a trained prior, assigned by the caller (``autoencoder``'s variables).

    Args:
        input_size: image and mask height and width (128); the AE's input size.
        num_classes: mask channels of the AE (4).
        code_size: the AE's code length (64).
        autoencoder_filters: the AE's ``filters`` (16).
        autoencoder_levels: the AE's ``levels`` (4).
        filters: the predictor's ``filters`` (16).
        levels: the predictor's ``levels`` (4).
        seed: seed of the AE's random stream (its label swaps; unused here).

    Call arguments:
        inputs: images (B, input_size, input_size, 1).
        training: the predictor's BatchNorm mode (the AE is always in inference mode).

    Returns:
        Probabilities (B, input_size, input_size, num_classes), channel k for label k.

    Reference:
        Oktay et al., IEEE TMI 37(2), 2018; Girdhar et al., ECCV 2016.
    """

    input_channels = 1

    def __init__(self, input_size=128, num_classes=4, code_size=64, autoencoder_filters=16, autoencoder_levels=4,
                 filters=16, levels=4, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.num_classes = num_classes
        self.code_size = code_size
        self.autoencoder_filters = autoencoder_filters
        self.autoencoder_levels = autoencoder_levels
        self.filters = filters
        self.levels = levels
        self.seed = seed
        self.predictor = CodePredictor(input_size, 1, code_size, filters, levels, name="predictor")
        self.autoencoder = ShapeAutoencoder(input_size, num_classes, code_size, autoencoder_filters,
                                            autoencoder_levels, seed=seed, name="autoencoder")
        self.autoencoder.trainable = False

    def networks(self):
        return {"predictor": self.predictor, "autoencoder": self.autoencoder}

    def predict_codes(self, images, training=False):
        """Predicted codes (B, code_size) of images (B, H, W, 1)."""
        return self.predictor(images, training=training)

    def target_codes(self, masks):
        """The frozen AE's codes (B, code_size) of one-hot masks (B, H, W, num_classes)."""
        return self.autoencoder.encode(masks, training=False)

    def decode(self, codes):
        """Logits (B, H, W, num_classes) of the AE decoder, in inference mode, of codes (B, code_size)."""
        return self.autoencoder.decode(codes, training=False)

    def call(self, inputs, training=None):
        return ops.softmax(self.decode(self.predict_codes(inputs, training=training)), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, num_classes=self.num_classes, code_size=self.code_size,
                      autoencoder_filters=self.autoencoder_filters, autoencoder_levels=self.autoencoder_levels,
                      filters=self.filters, levels=self.levels, seed=self.seed)
        return config
