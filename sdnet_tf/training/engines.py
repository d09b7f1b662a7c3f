"""The one place an engine is chosen: by ``train.backend``, which must be Keras' backend.

Keras fixes its backend when it is first imported (``KERAS_BACKEND``), so an engine cannot
switch it; a mismatch is refused rather than training on the other backend. SDNet's five-step schedule has ``TFEngine`` / ``JAXEngine``; the single-loss
updates of the shape priors and the U-Net have ``StepEngine`` of ``prior_engine`` /
``prior_jax_engine``. The engine modules are imported here only, so TensorFlow is never
imported by a JAX run and JAX never by a TensorFlow run.
"""

from sdnet_tf.config import ConfigError
from sdnet_tf.runtime import require_backend
from sdnet_tf.training.schedule import SDNET2018_SCHEDULE, sdnet_schedule, unet_gan_schedule




def loss_weights(config):
    """SDNet's loss weights from a ``Config``'s ``loss`` section."""
    loss = config.loss
    return {"kl": loss.kl, "dice": loss.dice, "adversarial": loss.adversarial,
            "reconstruction": loss.reconstruction, "z_reconstruction": loss.z_reconstruction,
            "focal": loss.focal, "focal_gamma": loss.focal_gamma, "lv_volume": loss.lv_volume,
            "mask_reconstruction": loss.mask_reconstruction, "mask_image_adversarial": loss.mask_image_adversarial,
            "unlabelled_reconstruction": loss.unlabelled_reconstruction, "image_adversarial": loss.image_adversarial,
            "shape_projection": loss.shape_projection}


def schedule(config):
    """The steps of one iteration for ``config``: the MICCAI 2018 precursor's three, the U-Net
    baselines' (``schedule.unet_gan_schedule``), or SDNet's (``schedule.sdnet_schedule``)."""
    if config.model.kind == "sdnet2018":
        return SDNET2018_SCHEDULE
    if config.model.kind == "unet_gan":
        return unet_gan_schedule(config.loss.adversarial)
    return sdnet_schedule(config.loss.adversarial, config.model.lv_volume_head,
                          config.loss.shape_projection if config.loss.shape_prior else 0.0)


def sdnet_engine(model, config, run_dir=None, strategy=None):
    """The SDNet engine of ``config.train.backend`` for a built ``model``.

    Args:
        model: a built ``SDNet``.
        config: the resolved ``Config``.
        run_dir: where TensorBoard summaries go (TensorFlow only); None for none.
        strategy: a ``tf.distribute.Strategy`` whose scope created ``model`` (TensorFlow only).

    Raises:
        ValueError: an unknown backend.
        RuntimeError: Keras runs on another backend.
        ConfigError: a strategy is given for JAX.
    """
    require_backend(config.train.backend)
    apply_determinism(config.train)
    if config.train.backend == "jax":
        if strategy is not None:
            raise ConfigError("a tf.distribute strategy needs the TensorFlow engine")
        from sdnet_tf.training.jax_engine import JAXEngine

        return JAXEngine(model, schedule(config), loss_weights(config), config.train,
                         dice_mode=config.loss.dice_mode)
    from sdnet_tf.training.tf_engine import TFEngine

    return TFEngine(model, schedule(config), loss_weights(config), config.train,
                    dice_mode=config.loss.dice_mode, run_dir=run_dir, strategy=strategy)


def stateful_compiler(backend):
    """How ``backend`` compiles a function that updates variables as it runs (the weight
    average's update, BatchNorm recalibration's forward pass in training mode) into one call:
    ``compile(fn, variables, updated)`` returns ``call(*arrays)``, which runs ``fn`` and leaves
    every variable of ``updated`` as running ``fn`` eagerly would; ``variables`` are all the
    variables ``fn`` reads. The engine module's ``compile_stateful`` (TensorFlow: a
    ``tf.function``; JAX: ``jax.jit`` under a ``keras.StatelessScope``).

    Raises:
        ValueError: an unknown backend.
        RuntimeError: Keras runs on another backend.
    """
    require_backend(backend)
    if backend == "jax":
        from sdnet_tf.training import jax_engine as engine
    else:
        from sdnet_tf.training import tf_engine as engine
    return engine.compile_stateful


def step_engine(config):
    """The ``StepEngine`` class (priors, U-Net) of ``config.train.backend``.

    Raises:
        ConfigError: an unknown backend, or Keras runs on another one.
    """
    try:
        require_backend(config.train.backend)
    except (ValueError, RuntimeError) as error:
        raise ConfigError(str(error)) from error
    apply_determinism(config.train)
    if config.train.backend == "jax":
        from sdnet_tf.training.prior_jax_engine import StepEngine
    else:
        from sdnet_tf.training.prior_engine import StepEngine
    return StepEngine


def check_determinism(train):
    """Refuse ``train.deterministic`` with ``train.graph_rewriting: true`` on TensorFlow, before
    anything is read or written (``apply_determinism`` turns the rewriting off).

    Raises:
        ConfigError: both set.
    """
    if train.deterministic and getattr(train, "graph_rewriting", "auto") is True and train.backend != "jax":
        raise ConfigError("train.deterministic turns Grappler's graph rewriting off (with it, runs with one seed "
                          "differ); train.graph_rewriting: true contradicts it: set it to auto or false")


def apply_determinism(train):
    """With ``train.deterministic`` (a ``TrainConfig``, ``PriorTrainConfig`` or
    ``SegmentationTrainConfig``), make the backend's kernels deterministic for the rest of the
    process, so that the same seed, data and config give bit-identical weights run after run.

    TensorFlow: op determinism and Grappler's graph rewriting off (``tf_engine.enable_determinism``;
    process-wide, and not undone by a later run in the same process). Without them runs with one
    seed can part within 20 steps (README, Training, "Same seed, same weights"). JAX: XLA on a
    CPU is deterministic; on a GPU it needs ``XLA_FLAGS=--xla_gpu_deterministic_ops=true``
    before JAX starts, which the JAX engine checks.

    Raises:
        ConfigError: ``train.graph_rewriting: true`` with it (TensorFlow), or the JAX engine on
            a GPU without that flag.
    """
    check_determinism(train)
    if not train.deterministic:
        return
    if train.backend == "jax":
        from sdnet_tf.training.jax_engine import check_deterministic

        check_deterministic()
    else:
        from sdnet_tf.training.tf_engine import enable_determinism

        enable_determinism()
