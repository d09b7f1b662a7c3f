"""``train_run``: build data, model and engine for a config and train in a run directory."""

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path

import keras

from sdnet_infer.io import check_output_location
from sdnet_tf.atomic import write_json
from sdnet_tf.config import ConfigError, model_kwargs
from sdnet_tf.data.sources import load_arrays
from sdnet_tf.training.logs import log_to_file, stop_logging

log = logging.getLogger("sdnet_tf.train")


def train_run(config, run_dir, resume=True, max_iterations=None, progress=True, arrays=None, initial_weights=None):
    """Train SDNet (or the model of ``model.kind``) as ``config`` says; returns the run summary.

    ``initial_weights``: a run directory of the same model whose kept weights (``best.npz``)
    the networks start from, instead of their initialisation (a checkpoint of ``run_dir``,
    when there is one, still wins); the self-training rounds use it. With
    ``train.self_training_rounds`` the run is the self-training baseline
    (``self_training.train_self_training``).

    With ``resume`` a run directory holding checkpoints is continued from the last one;
    without it such a directory is refused rather than overwritten.

    With ``train.distribute`` "data_parallel" (JAX) the model is built and trained under
    ``keras.distribution.DataParallel`` over every JAX device (see ``jax_engine``).

    With ``train.distribute`` "multi_worker" every worker calls this with the same arguments;
    only the chief writes ``run_dir``. The others write their checkpoints and logs to a
    temporary directory, removed at the end, and resume from the chief's checkpoints, so
    ``run_dir`` must be readable by every worker.

    With ``data.factor_augmentation`` (a pre-trained SDNet run) the training arrays are first
    enlarged with images that run decodes from anatomy and modality factors of different
    vendors (``apps.factor_augmentation``), kept in ``factor_augmentation.npz`` and described
    in ``factor_augmentation.json``.
    """
    run_dir = Path(run_dir)
    jax = config.train.backend == "jax"
    distribute = config.train.distribute
    if jax and distribute not in ("none", "data_parallel"):
        what = ("a tf.distribute strategy of the TensorFlow engine" if distribute in ("mirrored", "multi_worker")
                else "unknown")
        raise ConfigError(f"train.distribute {distribute!r} is {what}; with train.backend jax use none or "
                          "data_parallel (keras.distribution.DataParallel over every JAX device)")
    if not jax and distribute == "data_parallel":
        raise ConfigError("train.distribute 'data_parallel' (keras.distribution.DataParallel) needs the JAX engine: "
                          "set train.backend jax (--backend jax), or use mirrored or multi_worker")
    from sdnet_tf.training.engines import check_determinism

    check_determinism(config.train)  # before the run directory is made
    for key in ("batchnorm_recalibration", "weight_average"):
        if getattr(config.train, key) and distribute != "none":
            raise ConfigError(f"train.{key} runs on one device: set it to 0 with train.distribute {distribute!r}")
    if not resume and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds checkpoints; use --resume or another --run-dir")
    check_output_location(run_dir)  # a run directory that cannot be made fails before any work
    build_sdnet(config)  # sizes the networks cannot take fail before the data are read (no weights made)
    if config.loss.shape_projection and not config.loss.shape_prior:
        raise ConfigError("loss.shape_projection needs loss.shape_prior (--shape-prior): the frozen prior "
                          "reconstructs the masks it compares them with")
    if config.loss.shape_prior:  # a missing or unfitting prior fails before anything is read or written
        from sdnet_tf.inference import read_prior_config
        from sdnet_tf.training.prior_trainer import check_prior_fits

        if config.train.distribute != "none":
            raise ConfigError("the shape loss (loss.shape_prior) runs on one device: use train.distribute none")
        check_prior_fits(read_prior_config(config.loss.shape_prior), config)
    d = config.data
    if d.resolution_augmentation and not d.augment:
        raise ConfigError("data.resolution_augmentation needs data.augment true (it is one of the augmentations)")
    if d.resolution_augmentation and not d.resolution_range[0] <= d.spacing <= d.resolution_range[1]:
        log.warning("data.spacing %g mm lies outside data.resolution_range %s mm: resolution augmentation will "
                    "always %s the images", d.spacing, d.resolution_range,
                    "magnify" if d.spacing > d.resolution_range[1] else "shrink")
    source_run = None
    if d.factor_augmentation:  # its files only: no weights are loaded before the strategy exists
        from sdnet_tf.apps.factor_augmentation import check_source_run

        source_run, _ = check_source_run(d.factor_augmentation, config, run_dir)
    description = None
    if arrays is None:
        # before the run directory exists: bad data leaves no half-made run behind
        arrays, description = load_arrays(config, progress=progress)
    if config.train.self_training_rounds:
        from sdnet_tf.apps.self_training import train_self_training

        return train_self_training(train_run, config, run_dir, resume, max_iterations, progress, arrays, description)
    strategy, chief, out_dir = None, True, run_dir
    if not jax:
        from sdnet_tf.training.distribute import is_chief, make_strategy, task

        # before any other TensorFlow operation: a multi-worker strategy sets up its collectives
        strategy = make_strategy(config.train.distribute)
        chief = is_chief(strategy)
        if not chief:
            out_dir = Path(tempfile.mkdtemp(prefix="sdnet-tf-{}{}-".format(*task(strategy))))
    out_dir.mkdir(parents=True, exist_ok=True)
    if description is not None:
        write_json(out_dir / "data.json", description)
    handler = log_to_file(out_dir)
    if not chief:
        log.info("task %s %d: the chief writes %s; this task writes to %s, removed at the end",
                 *task(strategy), run_dir, out_dir)
    try:
        if source_run is not None:
            arrays = _factor_augmentation(config, source_run, arrays, out_dir)
        return _train(config, out_dir, run_dir, strategy, resume, max_iterations, progress and chief, arrays,
                      initial_weights)
    finally:
        stop_logging(handler)
        if not chief:
            shutil.rmtree(out_dir, ignore_errors=True)


def _factor_augmentation(config, source_run, arrays, out_dir):
    """``arrays`` with the factor-based augmentation's images (generated, or read from the
    run's cache), logged in one line and described in ``factor_augmentation.json``."""
    from sdnet_tf.apps.factor_augmentation import CACHE_NAME, DESCRIPTION_NAME, factor_augment

    arrays, description = factor_augment(arrays, source_run, config, count=config.data.factor_augmentation_count,
                                         seed=config.train.seed, cache=Path(out_dir) / CACHE_NAME,
                                         batch_size=config.train.validation_batch_size)
    log.info("factor augmentation with %s: %d labelled and %d unlabelled images added (%s)", source_run,
             description["labelled"], description["unlabelled"], description["pairing"])
    write_json(Path(out_dir) / DESCRIPTION_NAME, description)
    return arrays


def apply_precision(config):
    """Set Keras' global dtype policy to ``config.train.precision`` ("float32", "mixed_bfloat16"
    or "mixed_float16"). Layers take the policy when they are created, so this must come before
    the model is built: a model built first stays float32 whatever the config says."""
    keras.config.set_dtype_policy(config.train.precision)


def _train(config, out_dir, run_dir, strategy, resume, max_iterations, progress, arrays, initial_weights=None):
    keras.utils.set_random_seed(config.train.seed)
    apply_precision(config)  # float32 too: a policy left by earlier work in this process must not leak in
    distribution = contextlib.nullcontext()
    if config.train.distribute == "data_parallel":
        from sdnet_tf.training.jax_engine import data_parallel

        parallel = data_parallel()
        log.info("data parallel over %d devices (keras.distribution.DataParallel)",
                 parallel.device_mesh.devices.size)
        distribution = parallel.scope()
    with distribution:
        return _fit(config, out_dir, run_dir, strategy, resume, max_iterations, progress, arrays, initial_weights)


def _use_shape_prior(engine, config, arrays, out_dir, batches=20):
    """Load the frozen prior, check it reads SDNet's masks and hand it to the engine with
    omega: ``loss.shape_omega``, or the weighted Dice loss over the shape loss of the initial
    network (``resolve_omega``, kept in ``omega.json`` for a resumed run)."""
    import numpy as np

    from sdnet_tf.inference import load_prior
    from sdnet_tf.training.prior_trainer import check_prior_fits, frame_note, resolve_omega

    if config.train.distribute != "none":
        raise ConfigError("the shape loss (loss.shape_prior) runs on one device: use train.distribute none")
    prior, prior_config = load_prior(config.loss.shape_prior)
    prior.frame_scale = check_prior_fits(prior_config, config)  # read by objectives.shape
    engine.use_shape_prior(prior, 0.0)  # the prior, for measuring the terms
    rng = np.random.default_rng([config.train.seed, 999])
    images, masks = arrays.labelled_images, arrays.labelled_masks
    draws = [rng.choice(len(images), config.train.batch_size) for _ in range(batches)]
    try:
        omega = resolve_omega(Path(out_dir) / "omega.json", config.loss.shape_omega, engine.shape_sizes,
                              [(images[i], masks[i]) for i in draws], "dice", "weighted Dice loss")
    except ValueError as error:
        raise ConfigError(str(error)) from error
    engine.use_shape_prior(prior, omega)
    log.info("shape loss of %s, omega = %.6g%s%s", config.loss.shape_prior, omega,
             frame_note(config, prior_config, prior.frame_scale),
             f"; label-free shape term on unlabelled images, weight {config.loss.shape_projection:g}"
             if config.loss.shape_projection else "")


# what the MICCAI 2018 precursor does not read: SDNet's other networks and options, and the
# losses of its modality encoder, segmentor and shape prior
SDNET_ONLY_LOSSES = ("kl", "z_reconstruction", "focal", "shape_prior", "shape_omega", "shape_projection")
# the only losses the U-Net baselines read
UNET_GAN_LOSSES = ("dice", "dice_mode", "adversarial", "focal", "focal_gamma")


def _refuse_sdnet_only_settings(config):
    """A ``ConfigError`` naming every setting a precursor or U-Net-baseline config changes from
    its default that its model would not read (``model.lv_volume_head``, ``model.decoder``,
    ``model.anatomy_channels``, ``loss.focal`` for the precursor, ``loss.reconstruction`` for a
    U-Net, ...), rather than a run that silently ignores them."""
    import dataclasses

    from sdnet_tf.config import SDNET2018_ARGUMENTS, UNET_GAN_ARGUMENTS, LossConfig, ModelConfig

    kind = config.model.kind
    reads = SDNET2018_ARGUMENTS + ("num_classes",) if kind == "sdnet2018" else UNET_GAN_ARGUMENTS

    def ignored_loss(name):
        return name in SDNET_ONLY_LOSSES if kind == "sdnet2018" else name not in UNET_GAN_LOSSES

    def default(f):
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()

    ignored = [f"model.{f.name}" for f in dataclasses.fields(ModelConfig)
               if f.name not in reads + ("kind",) and getattr(config.model, f.name) != default(f)]
    ignored += [f"loss.{f.name}" for f in dataclasses.fields(LossConfig)
                if ignored_loss(f.name) and getattr(config.loss, f.name) != default(f)]
    if ignored:
        what = "settings of the 2019 SDNet" if kind == "sdnet2018" else "settings of SDNet's other networks"
        raise ConfigError(f"model.kind {kind} does not read {', '.join(ignored)} ({what}): leave them at their "
                          "defaults")


def build_sdnet(config, seed=None):
    """The unbuilt model of ``model.kind`` for a ``Config``: ``SDNet`` (seeded with ``seed``),
    ``SDNet2018`` (deterministic z: no seed) or ``UNetGAN`` (the U-Net and GAN baselines).

    Raises:
        ConfigError: ``sdnet2018`` with ``model.num_classes`` other than 1 (it segments the
            myocardium only), or sizes the networks cannot take (``model.input_size`` not
            divisible by 2**``model.unet_depth``).
    """
    from sdnet_tf.models import SDNet, SDNet2018, UNetGAN

    t = config.train
    if t.self_training_threshold != 0.5 and not t.self_training_rounds:
        raise ConfigError("train.self_training_threshold is read only with train.self_training_rounds of 1 or more "
                          "(the self-training baseline): set both, or leave the threshold at 0.5")
    if t.self_training_rounds and config.data.factor_augmentation:
        raise ConfigError("train.self_training_rounds with data.factor_augmentation is not supported: each round "
                          "would decode new images from its own pseudo-labelled arrays; use one or the other")
    if config.model.kind == "unet_gan":
        _refuse_sdnet_only_settings(config)
        return UNetGAN(**model_kwargs(config))
    if t.self_training_rounds:
        raise ConfigError("train.self_training_rounds is the self-training baseline of model.kind unet_gan; "
                          f"model.kind {config.model.kind} does not read it")
    if config.model.kind == "sdnet2018":
        if config.model.num_classes != 1:
            raise ConfigError(f"model.kind sdnet2018 segments the myocardium only: set model.num_classes 1, "
                              f"not {config.model.num_classes}")
        _refuse_sdnet_only_settings(config)
        build, kwargs = SDNet2018, model_kwargs(config)
    else:
        build, kwargs = SDNet, dict(model_kwargs(config), seed=seed)
    try:
        return build(**kwargs)
    except ValueError as error:  # sizes the networks cannot take (an input size not divisible by 2**depth)
        raise ConfigError(f"model: {error}") from error


def engine_choices(engine, config):
    """What the engine chose for this run, where the config may say ``auto``: the backend, XLA
    (and the rule that set it), Grappler's graph rewriting, the allocator tuning, whether Adam
    and BatchNorm run as TensorFlow's fused kernels and the precision, as ``engine.json`` records them beside
    ``config.yaml``."""
    t = config.train
    xla = bool(getattr(engine, "jit_compile", True))
    if t.backend == "jax":
        rule = "always (the JAX engine)"
    elif getattr(engine, "xla", xla) and not xla:
        rule = "off under tf.distribute"
    else:
        rule = "auto" if t.jit_compile == "auto" else "train.jit_compile"
    rewriting = getattr(engine, "graph_rewriting", None)
    return {"backend": t.backend, "xla": xla, "xla_rule": rule,
            "graph_rewriting": None if t.backend == "jax" else bool(rewriting) if rewriting is not None else True,
            "allocator_tuned": bool(getattr(engine, "allocator_tuned", False)),
            "fused_optimizer": bool(getattr(engine, "fused_optimizer", False)),
            "fused_batchnorm": bool(getattr(engine, "fused_batchnorm", False)), "precision": t.precision}


def _fit(config, out_dir, run_dir, strategy, resume, max_iterations, progress, arrays, initial_weights=None):
    from sdnet_tf.training.engines import sdnet_engine
    from sdnet_tf.training.trainer import Trainer, Trainer2018, TrainerUNet

    # variables created in the strategy's scope are mirrored on every replica
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_sdnet(config, seed=config.train.seed)
        model.build()
    # the one engine choice (engines.sdnet_engine); TensorBoard events go to this task's directory
    engine = sdnet_engine(model, config, run_dir=out_dir, strategy=strategy)
    if config.loss.shape_prior:  # not for the precursor: build_sdnet refused it
        _use_shape_prior(engine, config, arrays, out_dir)
    task = {"sdnet2018": Trainer2018, "unet_gan": TrainerUNet}.get(config.model.kind, Trainer)
    trainer = task(model, arrays, config, out_dir, engine=engine, progress=progress, resume_dir=run_dir)
    t = config.train
    chosen = engine_choices(engine, config)
    why = {"auto": " by train.jit_compile auto for this size and device",
           "off under tf.distribute": " for the updates under tf.distribute"}.get(chosen["xla_rule"], "")
    log.info("model %s on the %s engine (%s, precision %s%s)", config.model.kind, t.backend,
             ("XLA" if chosen["xla"] else "no XLA") + why, t.precision,
             (", glibc allocator tuned" if chosen["allocator_tuned"] else "")
             + (", no Grappler graph rewriting" if chosen["graph_rewriting"] is False else ""))
    write_json(out_dir / "engine.json", chosen)
    counts = arrays.counts()
    log.info("data: %d labelled, %d unlabelled, %d validation images; %d iterations per epoch",
             counts["labelled"], counts["unlabelled"], counts["validation"], trainer.iterations_per_epoch)
    if initial_weights is not None:
        from sdnet_tf.training.run_files import RunFiles

        if not RunFiles(initial_weights).load_best(trainer.best_variables()):
            raise FileNotFoundError(f"{initial_weights}: no best.npz to start from")
        if trainer.average is not None:
            trainer.average.restart()
        log.info("networks start from the kept weights of %s", initial_weights)
    if resume:
        trainer.resume()
    trainer.fit(max_iterations=max_iterations)
    return trainer.finish()
