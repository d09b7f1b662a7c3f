"""Run configuration: dataclasses loaded from YAML files in ``configs/`` (values only).

Defaults are the original SDNet's (224 x 224, C = 8, nz = 8, weights 0.01 / 10 / 10 / 1 / 1,
Adam 1e-4 with beta1 0.5 and inverse-time decay 1e-4, batch 4, pool 50, patience 100).
"""

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sdnet_infer.labels import DEFAULT_SPACING_MM
from sdnet_tf.atomic import write_text

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration file or override that cannot be used."""


NON_NEGATIVE = {"minimum": 0.0}  # a loss weight: a negative one would reward the loss
AT_LEAST_ONE = {"minimum": 1}  # a size or a count


@dataclass
class ModelConfig:
    # sdnet (the 2019 journal model, models.SDNet) | sdnet2018 (the MICCAI 2018 precursor,
    # models.SDNet2018: one myocardium channel, an image discriminator; it reads input_size,
    # input_channels, nz, unet_filters, unet_depth and discriminator_filters, and needs
    # num_classes 1) | unet_gan (the papers' U-Net and GAN baselines, models.UNetGAN: SDNet's
    # U-Net with a softmax head and SDNet's mask discriminator; it reads input_size,
    # input_channels, num_classes, unet_filters, unet_depth, discriminator_filters, spectral
    # and spectral_weight, and trains with loss.dice, loss.dice_mode, loss.focal and
    # loss.adversarial, 0 for the plain U-Net)
    kind: str = field(default="sdnet", metadata={"choices": ("sdnet", "sdnet2018", "unet_gan")})
    input_size: int = field(default=224, metadata=AT_LEAST_ONE)
    input_channels: int = 1
    anatomy_channels: int = 8
    nz: int = 8
    unet_filters: int = 64
    unet_depth: int = field(default=4, metadata=AT_LEAST_ONE)
    num_classes: int = 3
    segmentor_filters: int = 64
    modality_filters: int = 16
    discriminator_filters: int = 64
    spectral: str = "penalty"
    spectral_weight: float = 10.0
    binarise: bool = True
    # round (the original: a pixel whose largest anatomy channel is <= 0.5 becomes all zeros)
    # | argmax (one channel per pixel; layers.Binarise)
    binarisation: str = field(default="round", metadata={"choices": ("round", "argmax")})
    # film (the original) | adain (Liu et al., M&Ms 2020; models.decoder.AdaINDecoder)
    decoder: str = field(default="film", metadata={"choices": ("film", "adain")})
    # the multi-task LV-volume head on the anatomy factor (the paper's Section 5.2)
    lv_volume_head: bool = False




@dataclass
class LossConfig:
    kl: float = field(default=0.01, metadata=NON_NEGATIVE)
    dice: float = field(default=10.0, metadata=NON_NEGATIVE)
    adversarial: float = field(default=10.0, metadata=NON_NEGATIVE)
    reconstruction: float = field(default=1.0, metadata=NON_NEGATIVE)
    z_reconstruction: float = field(default=1.0, metadata=NON_NEGATIVE)
    # pooled (the original) | per_class | batch (losses.dice_coefficient)
    # miccai2018: the precursor's own pooled Dice, (2 (I + 0.1)) / (total + 0.1)
    dice_mode: str = field(default="pooled", metadata={"choices": ("pooled", "per_class", "batch", "miccai2018")})
    # shape loss on the segmentor's supervised step: a frozen prior's run directory
    # (sdnet-tf prior train nvae|acnn); "" for none
    shape_prior: str = ""
    # 0: estimated from data (ratio of the typical loss sizes)
    shape_omega: float = field(default=0.0, metadata=NON_NEGATIVE)
    # weight of the label-free shape term on the unlabelled step (objectives.shape_projection:
    # Dice loss of the segmentor's masks against the prior's reconstruction of them); needs
    # shape_prior; 0: none (the original)
    shape_projection: float = field(default=0.0, metadata=NON_NEGATIVE)
    # weight of the focal loss on labelled images (M&Ms 2020: 1); 0: none
    focal: float = field(default=0.0, metadata=NON_NEGATIVE)
    focal_gamma: float = field(default=2.0, metadata=NON_NEGATIVE)  # its focusing exponent (0: pixel cross-entropy)
    # weight of the LV-volume head's L1 error (in pixel counts over the image's pixel count)
    # on labelled images; read only with model.lv_volume_head
    lv_volume: float = field(default=1.0, metadata=NON_NEGATIVE)
    # the MICCAI 2018 precursor's other weights (read only with model.kind sdnet2018; dice,
    # reconstruction and adversarial are shared): L1 of the image decoded from the true mask
    # with the image's z, and the image discriminator's term on that image (labelled step);
    # L1 reconstruction and the image discriminator's term on it (unlabelled step)
    mask_reconstruction: float = field(default=10.0, metadata=NON_NEGATIVE)
    mask_image_adversarial: float = field(default=1.0, metadata=NON_NEGATIVE)
    unlabelled_reconstruction: float = field(default=5.0, metadata=NON_NEGATIVE)
    image_adversarial: float = field(default=5.0, metadata=NON_NEGATIVE)


@dataclass
class TrainConfig:
    batch_size: int = field(default=4, metadata=AT_LEAST_ONE)
    learning_rate: float = 1e-4
    beta_1: float = 0.5
    beta_2: float = 0.999
    epsilon: float = 1e-7
    decay: float = 1e-4
    epochs: int = field(default=500, metadata=AT_LEAST_ONE)
    # 0: ceil(max(#labelled, #unlabelled) / batch_size), as the original
    iterations_per_epoch: int = field(default=0, metadata={"minimum": 0})
    patience: int = 100
    min_delta: float = 0.01
    pool_size: int = 50
    seed: int = 1
    # deterministic TensorFlow (engines.apply_determinism: op determinism, Grappler's rewriting
    # off), so that the same seed, data and config give the same weights. Off, as the original
    # ran: with Grappler's rewriting, runs with one seed can part within 20 steps (README,
    # Training, "Same seed, same weights")
    deterministic: bool = False
    # the TensorFlow engine's XLA switch: true, false or auto (speed.choose_xla: XLA on a GPU,
    # never on a CPU, where plain tf.function measured faster at every size; benchmarks/RESULTS.md).
    # The JAX engine always compiles with XLA
    jit_compile: object = field(default="auto", metadata={"bool_or_auto": True})
    # TensorFlow's graph rewriting (Grappler): true, false or auto (speed.choose_graph_rewriting:
    # off on a CPU without XLA, where turning it off made the first iteration 2.5-5 s shorter at
    # 64, 128 and 224 and the iteration's speed stayed within the runs' spread; on with XLA and
    # on GPUs; benchmarks/RESULTS.md). TensorFlow
    # holds it per process: false turns it off for everything the process runs afterwards
    # (validation and inference too); true leaves TensorFlow's setting alone
    graph_rewriting: object = field(default="auto", metadata={"bool_or_auto": True})
    # the TensorFlow engine applies Adam with TensorFlow's fused ResourceApplyAdam kernel (the
    # same update as Keras' per-weight ops, to float rounding; tf_engine.apply_adam) on one
    # device; false: Keras' own update. The JAX engine always uses Keras' update
    fused_optimizer: bool = True
    # the TensorFlow engine runs BatchNorm in the updates as TensorFlow's fused kernel
    # (FusedBatchNormV3: the same batch statistics and moving averages as Keras' unfused ops, to
    # float rounding; tf_engine.fused_batchnorm) on one device, measured 1.18x as fast an
    # iteration at 128 x 128 and 1.13x at 64 (benchmarks/RESULTS.md); false: Keras' own ops. The
    # priors' engine always uses it (prior_engine.StepEngine); the JAX engine never
    fused_batchnorm: bool = True
    precision: str = "float32"  # float32 | mixed_bfloat16 | mixed_float16
    backend: str = "tensorflow"  # tensorflow | jax: the Keras backend and the engine that trains
    checkpoint_every: int = 0  # iterations between checkpoints; 0: at the end of each epoch only
    keep_checkpoints: int = 2
    image_summaries: int = 4  # images written to TensorBoard each epoch (0: none)
    log_every: int = 10  # iterations between lines of scalars.jsonl (and TensorBoard scalars on TensorFlow)
    validation_batch_size: int = field(default=16, metadata=AT_LEAST_ONE)
    # before each validation, recompute every BatchNorm's moving statistics from this many
    # batches (of validation_batch_size unaugmented training images) with the current weights
    # ("precise BN", sdnet_tf/training/batchnorm.py); 0 keeps the moving averages, as the original
    batchnorm_recalibration: int = 0
    # validate and keep an exponential moving average of the weights with this decay per
    # iteration (sdnet_tf/training/averaging.py); 0 validates the weights as they are, as the original
    weight_average: float = 0.0
    # none | mirrored (the GPUs of one host) | multi_worker (hosts listed in TF_CONFIG), with the
    # TensorFlow backend; none | data_parallel (every JAX device) with the JAX backend;
    # batch_size is then the global batch, split evenly across the replicas
    distribute: str = "none"
    # self-training (model.kind unet_gan only; sdnet_tf/apps/self_training.py): after the first
    # training, this many rounds of retraining, each from the previous round's kept weights, on
    # the labelled images plus the unlabelled ones labelled by the previous round's model (a
    # pixel takes the class whose probability exceeds self_training_threshold, in [0, 1), else
    # background)
    self_training_rounds: int = field(default=0, metadata={"minimum": 0})
    self_training_threshold: float = field(default=0.5, metadata={"minimum": 0, "below": 1})


VENDOR_LIST = {"items": str}  # a list of vendor letters, e.g. [A, B]


@dataclass
class DataConfig:
    # synthetic | acdc | mmwhs (MR and CT at once, sdnet_tf/data/mmwhs.py) | mnms (M&Ms 2020,
    # several vendors, sdnet_tf/data/mnms.py)
    dataset: str = "synthetic"
    path: str = ""
    split: int = 0
    labelled_fraction: float = 1.0
    augment: bool = True
    rotation_range: float = 90.0
    # Resolution augmentation (Liu et al., M&Ms 2020): each training image and mask rescaled to
    # a pixel side drawn uniformly in resolution_range (mm), from data.spacing, then centre
    # cropped or padded back (data/augment.py rescale_batch); read with augment true only
    resolution_augmentation: bool = False
    resolution_range: list = field(default_factory=lambda: [0.977, 1.641], metadata={"interval": True})
    # Factor-based augmentation (Liu et al., M&Ms 2020; apps/factor_augmentation.py): a pre-trained
    # SDNet run directory ("": off) whose encoders split every training image into anatomy and
    # modality factors and whose decoder renders factor_augmentation_count new images, each an
    # image's anatomy with the modality (z mean) of an image of another vendor, generated once
    # and cached in the run directory; 0: as many as there are training images (labelled +
    # unlabelled). The pairs are drawn with train.seed
    factor_augmentation: str = ""
    factor_augmentation_count: int = field(default=0, metadata={"minimum": 0})
    # mnms: the challenge's CSV ("" : the one CSV in the data folder); the vendors whose training
    # patients are labelled ([]: every vendor not named below), whose training patients give
    # only unlabelled frames, and which are held out entirely for testing
    mnms_csv: str = ""
    train_vendors: list = field(default_factory=list, metadata=VENDOR_LIST)
    unlabelled_vendors: list = field(default_factory=list, metadata=VENDOR_LIST)
    test_vendors: list = field(default_factory=list, metadata=VENDOR_LIST)
    synthetic_images: int = 256
    synthetic_validation: int = 64
    spacing: float = DEFAULT_SPACING_MM  # in-plane mm per pixel after resampling (ACDC preprocessing)
    cache_dir: str = "~/.cache/sdnet-tf"
    phantom_seed: int = 0
    # the seed of the data's draws (the labelled subjects at a labelled fraction, the unlabelled
    # slices kept, the synthetic images); -1: train.seed. Set it to train a network again with
    # another train.seed (initial weights, batch order, augmentation) on the same subjects
    seed: int = field(default=-1, metadata={"minimum": -1})


class _Sections:
    """A config made of sections (dataclasses of values), loaded from a mapping."""

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="<dict>"):
        values = values or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(values).__name__}")
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(sections)
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; expected {sorted(sections)}")
        kwargs = {}
        for name, f in sections.items():
            section_cls = f.default_factory
            section_values = values.get(name) or {}
            if not isinstance(section_values, dict):
                raise ConfigError(f"{source}: section '{name}' must be a mapping")
            kwargs[name] = _build_section(section_cls, section_values, f"{source}: {name}")
        return cls(**kwargs)

    def override(self, assignments):
        """Apply ``section.key=value`` strings (values parsed as YAML scalars)."""
        values = self.to_dict()
        for item in assignments:
            if "=" not in item or "." not in item.split("=", 1)[0]:
                raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.epochs=5")
            key, raw = item.split("=", 1)
            section, name = key.split(".", 1)
            if section not in values:
                raise ConfigError(f"override {item!r}: unknown section {section!r}")
            if name not in values[section]:
                raise ConfigError(f"override {item!r}: unknown key {name!r} in section {section!r}; "
                                  f"known: {sorted(values[section])}")
            values[section][name] = yaml.safe_load(raw)
            section_field = next(f for f in dataclasses.fields(self) if f.name == section)
            _check_choice(_section_field(section_field.default_factory, name), values[section][name],
                          f"override {item!r}: {key}")
        return type(self).from_dict(values, source="overrides")


@dataclass
class Config(_Sections):
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    @classmethod
    def from_dict(cls, values, source="<dict>"):
        model = values.get("model") if isinstance(values, dict) else None
        kind = model.get("kind") if isinstance(model, dict) else None
        if kind in ("nvae", "acnn"):
            raise ConfigError(f"{source}: a shape prior's config (model.kind {kind}), not SDNet's; train it with "
                              f"sdnet-tf prior train {kind}")
        if kind == "tl":
            raise ConfigError(f"{source}: a T-L network's config (model.kind tl), not SDNet's; train it with "
                              "sdnet-tf baseline train tl")
        return super().from_dict(values, source)


@dataclass
class PriorModelConfig:
    kind: str = "nvae"  # nvae (the thesis' Default-N) | acnn (Oktay et al.'s shape autoencoder)
    input_size: int = 128
    # NVAE
    stem_channels: int = 4
    preprocess_blocks: int = 3
    groups_per_scale: list = field(default_factory=lambda: [1, 2, 4])
    latent_channels: int = 20
    cells_per_group: int = 2
    decoder_expansion: int = 6
    encoder_residual_scale: float = 0.1
    decoder_residual_scale: float = 0.1  # official NVAE; 1.0 was this project's choice before
    # ACNN
    code_size: int = 64
    filters: int = 16
    levels: int = 4


@dataclass
class PriorTrainConfig:
    batch_size: int = field(default=8, metadata=AT_LEAST_ONE)
    epochs: int = field(default=100, metadata=AT_LEAST_ONE)
    steps_per_epoch: int = field(default=0, metadata={"minimum": 0})  # 0: one pass over the training masks
    # 0: epochs * steps_per_epoch; else stop after this many steps in total
    max_steps: int = field(default=0, metadata={"minimum": 0})
    learning_rate: float = 1e-2
    min_learning_rate: float = 1e-4  # cosine decay to this over the whole run
    warmup_epochs: float = 0.0  # linear learning-rate warm-up (official NVAE: 5 epochs); 0: none
    epsilon: float = 1e-3  # Adamax
    weight_decay: float = 3e-4  # L2 added to the gradients (coupled)
    # NVAE: KL weight of each scale, top-down (4x4, 8x8, 16x16 at the defaults)
    kl_betas: list = field(default_factory=lambda: [8.0, 9.0, 10.0])
    kl_warmup_epochs: float = 30.0
    kl_const_steps: int = 10
    kl_min: float = 1e-4
    kl_balance: bool = True
    # official NVAE divides each group's balancing coefficient by its size factor alpha_i
    # (NVAE.group_alpha); the thesis' code does not (its _balance_kl), so off by default
    kl_balance_size_factor: bool = False
    spectral_weight: float = 0.0  # thesis: 0.1 (optional)
    spectral_iterations: int = 1
    # ACNN: label-swap probability (denoising)
    label_swap: float = 0.1
    # before each validation, recompute the BatchNorm statistics from this many batches of 16
    # training masks, reconstructed in training mode (sdnet_tf/training/batchnorm.py); 0 keeps
    # the moving averages (the thesis' and ACNN's way)
    batchnorm_recalibration: int = 0
    nonfinite: str = "skip"  # skip | stop: what a step with a non-finite loss or gradient does
    max_nonfinite: int = 20  # consecutive skipped steps before the run stops
    seed: int = 1
    deterministic: bool = False  # as TrainConfig.deterministic
    backend: str = "tensorflow"  # tensorflow | jax: the Keras backend and the engine that trains
    jit_compile: bool = False  # TensorFlow: XLA; the JAX engine always compiles with XLA
    keep_checkpoints: int = 2
    log_every: int = 20
    validation_samples: int = 100  # prior samples drawn at each validation (anatomical validity)


@dataclass
class PriorDataConfig:
    path: str = ""
    split: int = 0
    spacing: float = DEFAULT_SPACING_MM
    augment: bool = True  # random rotations within +-rotation_range degrees (no flips: the heart is handed)
    rotation_range: float = 15.0
    cache_dir: str = "~/.cache/sdnet-tf"
    phantom_seed: int = 0
    # fraction of the split's training patients whose masks are used (whole subjects, the
    # same ones SDNet labels at that fraction with the same data seed: data.seed, or train.seed
    # when it is -1)
    labelled_fraction: float = 1.0
    # "spacing": SDNet's frame (spacing mm per pixel, centre crop), the frame the shape loss
    # needs; "heart": each frame cropped about its heart and resized, as the NVAE thesis' code
    # (data.masks.heart_frame), for comparing with the thesis' figures
    framing: str = field(default="spacing", metadata={"choices": ("spacing", "heart")})
    seed: int = field(default=-1, metadata={"minimum": -1})  # as DataConfig.seed


@dataclass
class PriorConfig(_Sections):
    """``sdnet-tf prior train nvae|acnn``: a shape prior trained on one-hot masks."""
    model: PriorModelConfig = field(default_factory=PriorModelConfig)
    train: PriorTrainConfig = field(default_factory=PriorTrainConfig)
    data: PriorDataConfig = field(default_factory=PriorDataConfig)


@dataclass
class SegmentationModelConfig:
    input_size: int = 128
    filters: int = 32
    depth: int = 4


@dataclass
class SegmentationLossConfig:
    cross_entropy: float = 1.0  # alpha
    shape_prior: str = ""  # a frozen prior's run directory; "" for a plain U-Net
    shape_omega: float = 0.0  # 0: estimated from data (ratio of the typical loss sizes)
    omega_batches: int = 20


@dataclass
class SegmentationTrainConfig:
    batch_size: int = field(default=8, metadata=AT_LEAST_ONE)
    epochs: int = field(default=50, metadata=AT_LEAST_ONE)
    steps_per_epoch: int = field(default=0, metadata={"minimum": 0})
    max_steps: int = field(default=0, metadata={"minimum": 0})
    learning_rate: float = 1e-3
    seed: int = 1
    deterministic: bool = False  # as TrainConfig.deterministic
    backend: str = "tensorflow"  # tensorflow | jax
    jit_compile: bool = False
    # before each validation, recompute the BatchNorm statistics from this many batches of 16
    # unaugmented training images (sdnet_tf/training/batchnorm.py); 0 keeps the moving averages
    batchnorm_recalibration: int = 0
    # validate and keep an exponential moving average of the weights (decay per step); 0: off
    weight_average: float = 0.0
    keep_checkpoints: int = 2
    log_every: int = 20
    nonfinite: str = "skip"
    max_nonfinite: int = 20


@dataclass
class SegmentationConfig(_Sections):
    """``sdnet-tf baseline train unet``: the 2-D U-Net baseline, with or without a shape loss."""
    model: SegmentationModelConfig = field(default_factory=SegmentationModelConfig)
    loss: SegmentationLossConfig = field(default_factory=SegmentationLossConfig)
    train: SegmentationTrainConfig = field(default_factory=SegmentationTrainConfig)
    data: PriorDataConfig = field(default_factory=PriorDataConfig)


@dataclass
class TLModelConfig:
    kind: str = field(default="tl", metadata={"choices": ("tl",)})
    # the images' and the decoded masks' size: the prior's input_size, which it must equal
    input_size: int = field(default=128, metadata=AT_LEAST_ONE)
    filters: int = 0  # the predictor's first-level channels; 0: the autoencoder's (its mirror)
    levels: int = 0  # the predictor's stride-2 levels; 0: the autoencoder's


@dataclass
class TLLossConfig:
    # the frozen ACNN shape autoencoder's run directory (sdnet-tf prior train acnn); required
    shape_prior: str = ""
    code: float = field(default=1.0, metadata=NON_NEGATIVE)  # squared Euclidean distance of the codes
    # pixel-averaged cross-entropy of the decoded mask; 0, as Oktay et al.'s T-L network
    cross_entropy: float = field(default=0.0, metadata=NON_NEGATIVE)


@dataclass
class TLConfig(_Sections):
    """``sdnet-tf baseline train tl``: ACNN's T-L network, an image encoder regressing a frozen
    ACNN autoencoder's code, segmenting through the autoencoder's decoder."""
    model: TLModelConfig = field(default_factory=TLModelConfig)
    loss: TLLossConfig = field(default_factory=TLLossConfig)
    train: SegmentationTrainConfig = field(default_factory=SegmentationTrainConfig)
    data: PriorDataConfig = field(default_factory=PriorDataConfig)


def _build_section(section_cls, values, source):
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        f = fields[name]
        if f.metadata.get("bool_or_auto"):
            if isinstance(value, str) and value.lower() == "auto":
                value = "auto"  # AUTO and Auto too, as SDNET_TF_ALLOCATOR
            if not (isinstance(value, bool) or value == "auto"):
                raise ConfigError(f"{source}.{name}: expected true, false or auto, got {value!r}")
            kwargs[name] = value
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs[name] = _check_choice(f, _coerce(value, type(default), f"{source}.{name}", f.metadata.get("items")),
                                     f"{source}.{name}")
    return section_cls(**kwargs)


def _section_field(section_cls, name):
    return next(f for f in dataclasses.fields(section_cls) if f.name == name)


def _check_choice(f, value, where):
    """``value``, or a ``ConfigError`` when the field lists its ``choices`` and the value is
    not one of them, sets a ``minimum`` (loss weights: 0) and the value is below it or not
    finite, with ``below`` too and the value is not under it (a probability threshold), or is
    an ``interval`` and the value is not [lo, hi] with 0 < lo <= hi."""
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where} {value!r}: expected one of {', '.join(choices)}")
    numbers = isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value)
    if f.metadata.get("interval") and numbers and not (len(value) == 2 and 0 < value[0] <= value[1] < math.inf):
        raise ConfigError(f"{where} {value!r}: expected [lo, hi] with 0 < lo <= hi")
    minimum, below = f.metadata.get("minimum"), f.metadata.get("below")
    if minimum is not None and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return value  # not a number at all: the type check reports it
        if below is not None and not (math.isfinite(number) and minimum <= number < below):
            raise ConfigError(f"{where} {value!r}: expected a number in [{minimum:g}, {below:g})")
        if not (math.isfinite(number) and number >= minimum):
            raise ConfigError(f"{where} {value!r}: expected a finite number of at least {minimum:g}")
    return value


def _coerce(value, kind, where, items=None):
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if kind is list and items is str:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{where}: expected a list of names, e.g. [A, B], got {value!r}")
    if kind is list:
        if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in value):
            return list(value)
        raise ConfigError(f"{where}: expected a list of numbers, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def resolve_config_path(name_or_path):
    """A path to a YAML file, or the name of one in ``configs/`` (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / name_or_path, CONFIG_DIR / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    raise ConfigError(f"config {name_or_path!r}: no such file, and not one of {available}")


def config_kind(name_or_path):
    """The config class a shipped file holds, by its name: ``nvae-*``, ``acnn-*`` and
    ``prior-*`` are ``PriorConfig``, ``unet-*`` ``SegmentationConfig``, ``tl-*`` ``TLConfig``,
    the rest SDNet's."""
    stem = Path(str(name_or_path)).stem
    if stem.startswith(("nvae-", "acnn-", "prior-")):
        return PriorConfig
    if stem.startswith("unet-"):
        return SegmentationConfig
    if stem.startswith("tl-"):
        return TLConfig
    return Config


def load_config(name_or_path=None, overrides=(), kind=None):
    """Load a config by name or path (defaults when None) and apply overrides.

    ``kind`` is the config class (``Config``, SDNet's, by default; ``PriorConfig``,
    ``SegmentationConfig`` and ``TLConfig`` for the shape priors, the U-Net baseline and the
    T-L network).
    """
    kind = kind or Config
    if name_or_path is None:
        config = kind()
    else:
        path = resolve_config_path(name_or_path)
        try:
            with open(path) as handle:
                values = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from error
        config = kind.from_dict(values, source=str(path))
    return config.override(overrides) if overrides else config


def config_changes(before, after, prefix="", defaults=None):
    """``["section.key: old -> new", ...]`` for every value that differs between two config
    dicts (``to_dict()`` or a loaded ``config.yaml``); keys only one side has count too, unless
    ``defaults`` (a ``to_dict()`` of the config class's defaults) gives that key the other
    side's value: a key added to the code after a run was saved, at the default that keeps the
    old behaviour, is no change."""
    changes = []
    defaults = defaults if isinstance(defaults, dict) else {}
    for key in sorted(set(before) | set(after), key=str):
        old, new = before.get(key, "(unset)"), after.get(key, "(unset)")
        default = defaults.get(key, "(unset)")
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{prefix}{key}.", default)
        elif old != new and not (key not in before and default == new) and not (key not in after and default == old):
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes


def save_config(config, path):
    """Write the resolved config as YAML, atomically. When ``path`` holds another config (a run
    resumed with other settings), the changed values are logged first, as a warning of the
    ``sdnet_tf.train`` log (the run's ``train.log``): a resumed run takes the new settings. A
    key the saved config lacks (added to the code since) is a change only when its value is
    not the default."""
    path = Path(path)
    values = config.to_dict()
    if path.is_file():
        try:
            before = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            before = None
        changes = config_changes(before, values, defaults=type(config)().to_dict()) if isinstance(before, dict) else []
        if changes:
            logging.getLogger("sdnet_tf.train").warning("%s: the run goes on with %d changed setting(s): %s", path.parent,
                                                        len(changes), "; ".join(changes))
    write_text(path, yaml.safe_dump(values, sort_keys=False))


SDNET2018_ARGUMENTS = ("input_size", "input_channels", "nz", "unet_filters", "unet_depth", "discriminator_filters")
UNET_GAN_ARGUMENTS = ("input_size", "input_channels", "num_classes", "unet_filters", "unet_depth",
                      "discriminator_filters", "spectral", "spectral_weight")


def model_kwargs(config):
    """Constructor arguments of the model of ``model.kind`` (``SDNet``, ``SDNet2018`` or ``UNetGAN``)."""
    values = dataclasses.asdict(config.model)
    kind = values.pop("kind")
    if kind == "sdnet2018":
        return {name: values[name] for name in SDNET2018_ARGUMENTS}
    if kind == "unet_gan":
        return {name: values[name] for name in UNET_GAN_ARGUMENTS}
    return values

