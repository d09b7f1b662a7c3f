"""NVAE shape prior: a hierarchical VAE of one-hot cardiac masks (the thesis' Default-N)."""

import keras
from keras import layers, ops

from sdnet_tf.distributions import Normal
from sdnet_tf.layers import PACKAGE
from sdnet_tf.models.base import SymbolicBuildModel, placeholders

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.95  # PyTorch momentum 0.05


def _norm(name):
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def torch_uniform():
    """PyTorch's default weight initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Official NVAE (and the thesis code built on it) leaves its convolutions at this default.
    Keras' Glorot default is about twice as large for the samplers' 1x1 convolutions, and in
    a 7-group hierarchy that compounds: with Glorot weights the first training-mode pass on
    128 x 128 masks has a KL near 1e10 nats in the 16x16 groups (sampled z reach several
    hundred), with this one about 1e3.
    """
    return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")


def _conv(*args, **kwargs):
    return layers.Conv2D(*args, kernel_initializer=torch_uniform(), **kwargs)


def _conv_transpose(*args, **kwargs):
    # Keras' transposed kernel is (kh, kw, out, in), so its fan_in is kh * kw * out, as PyTorch's
    return layers.Conv2DTranspose(*args, kernel_initializer=torch_uniform(), **kwargs)


def _dense(*args, **kwargs):
    return layers.Dense(*args, kernel_initializer=torch_uniform(), **kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SqueezeExcite(layers.Layer):
    """Channel gating: global mean -> Dense(max(C // 16, 4)) -> ReLU -> Dense(C) -> sigmoid.

    Args:
        channels: C.

    Call arguments:
        inputs: (B, H, W, C).

    Returns:
        (B, H, W, C), the input scaled per sample and channel.
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.squeeze = _dense(max(channels // 16, 4), activation="relu", name="squeeze")
        self.excite = _dense(channels, activation="sigmoid", name="excite")

    def call(self, inputs):
        gate = ops.mean(inputs, axis=(1, 2))  # (B, C)
        gate = self.excite(self.squeeze(gate))
        return inputs * gate[:, None, None, :]

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class EncoderCell(layers.Layer):
    """NVAE encoder residual cell: BN-Swish-conv3x3-BN-Swish-conv3x3-SE, ``x + scale * branch``.

    Args:
        channels: C (kept).
        residual_scale: factor on the branch (0.1 in official NVAE, 1 in the thesis code).

    Call arguments:
        inputs: (B, H, W, C).
        training: BatchNorm mode.

    Returns:
        (B, H, W, C).
    """

    def __init__(self, channels, residual_scale=0.1, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.residual_scale = residual_scale
        self.bn1 = _norm("bn1")
        self.conv1 = _conv(channels, 3, padding="same", use_bias=False, name="conv1")
        self.bn2 = _norm("bn2")
        self.conv2 = _conv(channels, 3, padding="same", use_bias=False, name="conv2")
        self.se = SqueezeExcite(channels, name="se")

    def call(self, inputs, training=None):
        x = self.conv1(ops.silu(self.bn1(inputs, training=training)))
        x = self.conv2(ops.silu(self.bn2(x, training=training)))
        return inputs + self.residual_scale * self.se(x)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, residual_scale=self.residual_scale)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class DecoderCell(layers.Layer):
    """NVAE decoder residual cell (inverted residual, MobileNetV2 style), ``x + scale * branch``.

    BN -> 1x1 conv to ``expansion * C`` -> BN -> Swish -> depthwise 5x5 -> BN -> Swish -> 1x1
    conv back to C -> BN -> SE.

    Args:
        channels: C (kept).
        expansion: channel expansion of the inner 1x1 conv (6).
        residual_scale: factor on the branch (0.1, as every cell of official NVAE).

    Call arguments:
        inputs: (B, H, W, C).
        training: BatchNorm mode.

    Returns:
        (B, H, W, C).
    """

    def __init__(self, channels, expansion=6, residual_scale=0.1, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.expansion = expansion
        self.residual_scale = residual_scale
        self.bn0 = _norm("bn0")
        self.expand = _conv(channels * expansion, 1, use_bias=False, name="expand")
        self.bn1 = _norm("bn1")
        # PyTorch's fan_in of a depthwise kernel is its area (Keras' would multiply by the channels)
        self.depthwise = layers.DepthwiseConv2D(5, padding="same", use_bias=False, name="depthwise",
                                                depthwise_initializer=keras.initializers.RandomUniform(-0.2, 0.2))
        self.bn2 = _norm("bn2")
        self.project = _conv(channels, 1, use_bias=False, name="project")
        self.bn3 = _norm("bn3")
        self.se = SqueezeExcite(channels, name="se")

    def call(self, inputs, training=None):
        x = self.expand(self.bn0(inputs, training=training))  # (B, H, W, 6C)
        x = self.depthwise(ops.silu(self.bn1(x, training=training)))
        x = self.project(ops.silu(self.bn2(x, training=training)))  # (B, H, W, C)
        return inputs + self.residual_scale * self.se(self.bn3(x, training=training))

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, expansion=self.expansion, residual_scale=self.residual_scale)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class NVAE(SymbolicBuildModel):
    """NVAE shape prior of one-hot masks, Default-N of the 2024 cardiac-shape thesis.

    Encoder (bottom-up): 3x3 stem conv to ``stem_channels``; ``preprocess_blocks`` blocks of
    two encoder cells and a stride-2 3x3 conv doubling the channels (4@128 -> 8@64 -> 16@32 ->
    32@16); then the tower: per latent group ``cells_per_group`` encoder cells, and between
    scales a stride-2 3x3 conv (no bias) doubling the channels (32@16 -> 64@8 -> 128@4), as
    the thesis code does (official NVAE uses a strided residual cell with a factorised-reduce
    skip there); at the top ELU -> 1x1 conv -> ELU.

    Decoder (top-down): a learnable tensor h (4, 4, 128), uniform [0, 1) at init, is combined
    with z of the top group; every later group runs ``cells_per_group`` decoder cells, forms
    its prior (ELU -> 1x1 conv -> 2 x ``latent_channels``) and its posterior from the encoder
    feature of the same group (encoder combiner ``enc + conv1x1(dec)`` -> 3x3 conv -> 2 x
    ``latent_channels``, residual to the prior), then combines with z (1x1 conv of
    ``concat(dec, z)``); between scales a stride-2 5x5 transposed conv (no bias) halves the
    channels. Post-process: per pre-process block a stride-2 3x3 transposed conv (no bias)
    halving the channels and two decoder cells; head ELU -> 3x3 conv to ``num_classes`` logits.

    Groups are numbered top-down: at the defaults group 0 is 4x4, groups 1-2 are 8x8 and
    groups 3-6 are 16x16.

    Args:
        input_size: mask height and width (128); a multiple of
            ``2 ** (preprocess_blocks + len(groups_per_scale) - 1)``.
        num_classes: mask channels and logits (4: background, RV, MYO, LV).
        stem_channels: channels after the stem (4).
        preprocess_blocks: stride-2 blocks before the tower (3).
        groups_per_scale: latent groups per scale, top-down ((1, 2, 4)).
        latent_channels: channels of each group's z (20).
        cells_per_group: residual cells before each group, encoder and decoder (2).
        decoder_expansion: channel expansion inside decoder cells (6).
        encoder_residual_scale: factor on the encoder cells' branch; 0.1 as in official NVAE
            (the thesis describes the cells as ``x + cell(x)``).
        decoder_residual_scale: the same for the decoder and post-process cells (0.1, official
            NVAE). Together with PyTorch's default initialisation (``torch_uniform``) it keeps
            the decoder state, and so the KL, bounded at the start of training; with 1.0 the
            state grows by 1-2 orders of magnitude from the top group to the 16x16 groups.
        seed: seed of the model's random stream (posterior and prior draws).

    Call arguments:
        inputs: one-hot masks (B, H, W, num_classes).
        training: BatchNorm mode.
        sample: draw every z from its posterior; if False z is the posterior mean.

    Returns:
        Tuple ``(logits, kl)``: logits (B, H, W, num_classes) and the KL of each group
        summed over its elements, (B, number of groups), groups top-down.

    Reference:
        Vahdat and Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS 2020;
        the thesis "Cardiac Shape Analysis with Nouveau Variational Autoencoder", 2024.
    """

    def __init__(self, input_size=128, num_classes=4, stem_channels=4, preprocess_blocks=3,
                 groups_per_scale=(1, 2, 4), latent_channels=20, cells_per_group=2,
                 decoder_expansion=6, encoder_residual_scale=0.1, decoder_residual_scale=0.1, seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        groups_per_scale = tuple(int(g) for g in groups_per_scale)
        factor = 2 ** (preprocess_blocks + len(groups_per_scale) - 1)
        if input_size % factor:
            raise ValueError(f"NVAE input_size {input_size} must be a multiple of {factor} "
                             f"(2 ** (preprocess_blocks + scales - 1))")
        if not groups_per_scale or min(groups_per_scale) < 1:
            raise ValueError(f"NVAE groups_per_scale {groups_per_scale}: expected positive counts")
        self.input_size = input_size
        self.num_classes = num_classes
        self.stem_channels = stem_channels
        self.preprocess_blocks = preprocess_blocks
        self.groups_per_scale = groups_per_scale
        self.latent_channels = latent_channels
        self.cells_per_group = cells_per_group
        self.decoder_expansion = decoder_expansion
        self.encoder_residual_scale = encoder_residual_scale
        self.decoder_residual_scale = decoder_residual_scale
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

        num_scales = len(groups_per_scale)
        bottom_channels = stem_channels * 2 ** preprocess_blocks
        # top-down: the channels and spatial size of every scale and every group
        self.scale_channels = [bottom_channels * 2 ** (num_scales - 1 - s) for s in range(num_scales)]
        self.top_size = input_size // factor
        self.group_sizes = [self.top_size * 2 ** s for s, n in enumerate(groups_per_scale) for _ in range(n)]
        group_channels = [self.scale_channels[s] for s, n in enumerate(groups_per_scale) for _ in range(n)]
        num_groups = len(group_channels)
        enc_cell = dict(residual_scale=encoder_residual_scale)

        self.stem = _conv(stem_channels, 3, padding="same", name="stem")
        self.preprocess = []
        for b in range(preprocess_blocks):
            channels = stem_channels * 2 ** b
            # the block is complete before it is stored: Keras does not track a layer appended
            # to a list that is already an attribute's element
            block = [EncoderCell(channels, **enc_cell, name=f"pre{b}_cell{c}") for c in range(2)]
            block.append(_conv(2 * channels, 3, strides=2, padding="same", use_bias=False,
                                       name=f"pre{b}_down"))
            self.preprocess.append(block)

        # encoder tower, indexed by the top-down group number
        self.enc_cells = [[EncoderCell(group_channels[k], **enc_cell, name=f"enc{k}_cell{c}")
                           for c in range(cells_per_group)] for k in range(num_groups)]
        self.enc_down = [_conv(self.scale_channels[s], 3, strides=2, padding="same",
                                       use_bias=False, name=f"enc_down{s}")
                         for s in range(num_scales - 1)]  # enc_down[s]: scale s + 1 -> s
        self.enc_top = _conv(self.scale_channels[0], 1, name="enc_top")
        self.enc_samplers = [_conv(2 * latent_channels, 3, padding="same", name=f"enc_sampler{k}")
                             for k in range(num_groups)]
        self.enc_combiners = [None] + [_conv(group_channels[k], 1, name=f"enc_combiner{k}")
                                       for k in range(1, num_groups)]

        # decoder tower
        self.h = self.add_weight(shape=(self.top_size, self.top_size, self.scale_channels[0]),
                                 initializer=keras.initializers.RandomUniform(0.0, 1.0), name="h")
        self.dec_cells = [[DecoderCell(group_channels[k], decoder_expansion, decoder_residual_scale,
                                       name=f"dec{k}_cell{c}")
                           for c in range(cells_per_group)] if k else [] for k in range(num_groups)]
        self.prior_samplers = [None] + [_conv(2 * latent_channels, 1, name=f"prior_sampler{k}")
                                        for k in range(1, num_groups)]
        self.dec_combiners = [_conv(group_channels[k], 1, name=f"dec_combiner{k}")
                              for k in range(num_groups)]
        self.dec_up = [_conv_transpose(self.scale_channels[s + 1], 5, strides=2, padding="same",
                                              use_bias=False, name=f"dec_up{s}")
                       for s in range(num_scales - 1)]  # dec_up[s]: scale s -> s + 1

        self.postprocess = []
        for b in range(preprocess_blocks):
            channels = bottom_channels // 2 ** (b + 1)
            block = [_conv_transpose(channels, 3, strides=2, padding="same", use_bias=False,
                                            name=f"post{b}_up")]
            block += [DecoderCell(channels, decoder_expansion, decoder_residual_scale, name=f"post{b}_cell{c}")
                      for c in range(2)]
            self.postprocess.append(block)
        self.head = _conv(num_classes, 3, padding="same", name="head")

    # ------------------------------------------------------------------ encoder
    def _encode(self, masks, training):
        """Encoder features of every group, top-down; entry 0 is the top's, after ELU-1x1-ELU."""
        # The thesis' code feeds the one-hot mask as 2 x - 1, in {-1, 1}, to the stem.
        x = self.stem(2.0 * masks - 1.0)  # (B, H, W, stem_channels)
        for block in self.preprocess:
            for cell in block[:-1]:
                x = cell(x, training=training)
            x = block[-1](x)  # H / 2, 2 x channels
        features = [None] * len(self.enc_cells)
        k = len(self.enc_cells)
        for s in reversed(range(len(self.groups_per_scale))):  # bottom-up
            for _ in range(self.groups_per_scale[s]):
                k -= 1
                for cell in self.enc_cells[k]:
                    x = cell(x, training=training)
                features[k] = x
            if s:
                x = self.enc_down[s - 1](x)  # (B, H / 2, W / 2, 2C)
        features[0] = ops.elu(self.enc_top(ops.elu(x)))  # (B, top, top, top channels)
        return features

    # ------------------------------------------------------------------ decoder
    def _group_cells(self, k, x, training):
        for cell in self.dec_cells[k]:
            x = cell(x, training=training)
        return x

    def _prior(self, k, x):
        return ops.split(self.prior_samplers[k](ops.elu(x)), 2, axis=-1)  # raw mu_p, log_sigma_p

    def _walk(self, x, choose, training):
        """Run the decoder tower from ``x`` = h; ``choose(k, x)`` returns the group's z.

        Returns the tower's output (B, bottom, bottom, bottom channels).
        """
        k = 0
        for s, count in enumerate(self.groups_per_scale):
            for _ in range(count):
                x = self._group_cells(k, x, training)
                z = choose(k, x)
                x = self.dec_combiners[k](ops.concatenate([x, z], axis=-1))
                k += 1
            if s < len(self.dec_up):
                x = self.dec_up[s](x)  # (B, 2H, 2W, C / 2)
        return x

    def _postprocess(self, x, training):
        for block in self.postprocess:
            x = block[0](x)  # (B, 2H, 2W, C / 2)
            for cell in block[1:]:
                x = cell(x, training=training)
        return self.head(ops.elu(x))  # (B, H, W, num_classes)

    def _initial(self, like):
        return ops.zeros_like(like) + ops.cast(self.h, like.dtype)  # (B, top, top, top channels)

    def _posterior_pass(self, masks, training, sample):
        """Logits, per-group KL (B, G) and the z of every group."""
        features = self._encode(masks, training)
        kls, zs = [], []

        def choose(k, x):
            if k == 0:
                q = Normal.from_params(self.enc_samplers[0](features[0]))
                p = Normal(ops.zeros_like(q.mu), ops.zeros_like(q.mu))
            else:
                mu_p, log_sigma_p = self._prior(k, x)
                combined = features[k] + self.enc_combiners[k](x)
                delta_mu, delta_log_sigma = ops.split(self.enc_samplers[k](combined), 2, axis=-1)
                q = Normal.residual(mu_p, log_sigma_p, delta_mu, delta_log_sigma)
                p = Normal(mu_p, log_sigma_p)
            z = q.sample(self.seed_generator) if sample else q.mu
            kls.append(ops.sum(q.kl(p), axis=(1, 2, 3)))  # (B,)
            zs.append(z)
            return z

        x = self._walk(self._initial(features[0]), choose, training)
        logits = self._postprocess(x, training)
        return logits, ops.stack(kls, axis=1), zs

    def call(self, inputs, training=None, sample=True):
        logits, kl, _ = self._posterior_pass(inputs, training, sample)
        return logits, kl

    def posterior_means(self, masks, training=False):
        """Deterministic codes of masks: z = mu_q at every group (the shape loss's features).

        Args:
            masks: one-hot or soft masks (B, H, W, num_classes).
            training: BatchNorm mode (False: the frozen prior).

        Returns:
            List of the groups' z, top-down; at the defaults (B, 4, 4, 20), 2 x (B, 8, 8, 20),
            4 x (B, 16, 16, 20).
        """
        return self._posterior_pass(masks, training, sample=False)[2]

    def codes(self, masks, training=False):
        """The shape loss's codes: ``posterior_means`` (the prior interface shared with the
        shape autoencoder)."""
        return self.posterior_means(masks, training)

    def group_alpha(self):
        """Each group's size factor for KL balancing, top-down: its spatial area over the
        number of groups of its scale, divided by the smallest (official NVAE's alpha_i)."""
        alpha = [(self.top_size * 2 ** s) ** 2 / n for s, n in enumerate(self.groups_per_scale) for _ in range(n)]
        return [a / min(alpha) for a in alpha]

    def group_betas(self, betas_per_scale):
        """Per-group KL weights from one weight per scale (top-down), e.g. (8, 9, 10)."""
        if len(betas_per_scale) != len(self.groups_per_scale):
            raise ValueError(f"{len(betas_per_scale)} KL weights for {len(self.groups_per_scale)} scales: "
                             "give one per scale, top-down")
        return [float(b) for b, n in zip(betas_per_scale, self.groups_per_scale) for _ in range(n)]

    def reconstruct(self, masks, training=False):
        """Logits (B, H, W, num_classes) of the deterministic reconstruction (z = mu_q)."""
        return self._posterior_pass(masks, training, sample=False)[0]

    def sample(self, n, temperature=1.0, seed=None):
        """Masks drawn from the prior, in inference mode.

        z of the top group is drawn from Normal(0, 0) (sigma 1.01) and every later group from
        its prior, each with sigma multiplied by ``temperature``; temperature 0 gives the prior
        means, a deterministic output.

        Args:
            n: number of samples.
            temperature: scale of every sigma.
            seed: an int for a reproducible draw; None draws from the model's stream.

        Returns:
            Logits (n, H, W, num_classes).
        """
        self.build_default()
        generator = self.seed_generator if seed is None else keras.random.SeedGenerator(seed)
        shape = (n, self.top_size, self.top_size, self.scale_channels[0])
        x = ops.broadcast_to(ops.convert_to_tensor(self.h), shape)

        def choose(k, x):
            if k == 0:
                zeros = ops.zeros((n, self.top_size, self.top_size, self.latent_channels), dtype=x.dtype)
                p = Normal(zeros, zeros)
            else:
                p = Normal(*self._prior(k, x))
            return p.sample(generator, temperature)

        return self._postprocess(self._walk(x, choose, False), False)

    def build(self, input_shape=None):
        if self.built:
            return
        self.call(placeholders(input_shape or self.default_input_shape()), sample=False)
        self.built = True

    def default_input_shape(self):
        return (None, self.input_size, self.input_size, self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, num_classes=self.num_classes,
                      stem_channels=self.stem_channels, preprocess_blocks=self.preprocess_blocks,
                      groups_per_scale=list(self.groups_per_scale), latent_channels=self.latent_channels,
                      cells_per_group=self.cells_per_group, decoder_expansion=self.decoder_expansion,
                      encoder_residual_scale=self.encoder_residual_scale,
                      decoder_residual_scale=self.decoder_residual_scale, seed=self.seed)
        return config
