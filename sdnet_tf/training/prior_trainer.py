"""Training loops of the shape priors (``sdnet-tf prior train nvae|acnn``), of the U-Net baseline
(``sdnet-tf baseline train unet``, optionally with a frozen prior's shape loss) and of ACNN's
T-L network (``sdnet-tf baseline train tl``, an image encoder regressing a frozen ACNN
autoencoder's code).

All run in the one training loop (``loop.Loop``) as a ``StepTask``, with SDNet's run files
(``run_files``: checkpoints at each epoch end, ``best.npz`` + ``best.json``, ``history.csv``,
``scalars.jsonl``). The gradient mechanics live in ``prior_engine`` (TensorFlow) and
``prior_jax_engine`` (JAX), chosen by ``engines.step_engine``; this module is backend-free,
and a run can be resumed on the other backend.
"""

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import keras
import numpy as np

from sdnet_tf.atomic import write_json
from sdnet_tf.config import PriorConfig, save_config
from sdnet_tf.losses import resampled_size
from sdnet_tf.data.arrays import DataError
from sdnet_tf.data.masks import epoch_batches, prior_one_hot, rotate_labels, sample_pixel_mm
from sdnet_tf.data.sources import mask_sets
from sdnet_tf.metrics.shape import reconstruction_dice, valid_fraction
from sdnet_tf.inference import batched, load_prior
from sdnet_tf.models.priors import assign_values, build_prior, build_tl, variable_values
from sdnet_tf.models.unet import build_unet
from sdnet_tf.training import prior_objectives

from sdnet_tf.training.averaging import WeightAverage, validation_weights
from sdnet_tf.training.batchnorm import batchnorm_layers, recalibrate, recalibration_batches
from sdnet_tf.training.engines import stateful_compiler, step_engine
from sdnet_tf.training.logs import log_to_file, stop_logging
from sdnet_tf.training.loop import Loop, Task
from sdnet_tf.training.run_files import RunFiles, network_variables, optimizer_variables

log = logging.getLogger("sdnet_tf.train")



# ------------------------------------------------------------------------------ helpers
def valid_share(labels, spacing):
    """Share of label slices that pass the seven anatomical checks."""
    return valid_fraction(labels, (spacing, spacing))["valid"]


class StepTask(Task):
    """A model trained by one ``StepEngine`` (a prior, the U-Net, the T-L network) as a task of the loop.

    Args:
        name: the kind ("nvae", "acnn", "unet", "tl").
        model: the network.
        optimizer: its (built) optimiser.
        engine: the ``StepEngine``.
        training: the training ``MaskSet``.
        config: the resolved config (``train.seed``, ``train.batch_size``).
        steps_per_epoch: batches per epoch.
        make_inputs: ``make_inputs(training, index, rng, step)`` -> the step's inputs.
        validate: ``validate()`` -> metrics.
        score: ``(metric, "max" | "min")``.
        extra: other variables to checkpoint (spectral vectors, a seed state, the weight average).
        around_validation: ``around_validation(state)``, a context manager, or None.
        after_step: called after each step, or None.
        epoch_row: ``epoch_row(state)`` -> extra history columns, or None.
    """

    def __init__(self, name, model, optimizer, engine, training, config, steps_per_epoch, make_inputs, validate,
                 score, extra=(), around_validation=None, after_step=None, epoch_row=None):
        self.name, self.model, self.optimizer, self.engine = name, model, optimizer, engine
        self.training, self.config, self.train = training, config, config.train
        self.steps_per_epoch = steps_per_epoch
        self.make_inputs, self._validate, self.score = make_inputs, validate, score
        self.extra = list(extra)
        self._around, self._after, self._row = around_validation, after_step, epoch_row
        self._rng = None
        self._resumed_rng = None  # the epoch's random state of a checkpoint written inside an epoch

    def best_variables(self):
        return network_variables({self.name: self.model})

    def variables(self):
        return {**self.best_variables(), **optimizer_variables({"model": self.optimizer}),
                **{f"extra/{i:04d}": v for i, v in enumerate(self.extra)}}

    def batches(self, epoch, start, stop):
        # an epoch's batches and augmentation are drawn from (seed, epoch); a run stopped inside
        # an epoch (train.max_steps) resumes with the epoch's random state of its checkpoint,
        # so it draws what an uninterrupted run would have
        first = epoch * self.steps_per_epoch
        self._rng = np.random.default_rng([self.train.seed, epoch])
        batches = epoch_batches(len(self.training), self.train.batch_size, self._rng, self.steps_per_epoch)
        if start != first:
            if self._resumed_rng is None:  # a checkpoint of an earlier version, which did not keep it
                raise DataError(f"{self.name}: cannot resume in the middle of epoch {epoch + 1} (step {start}): "
                                "its checkpoint holds no random state; start again in a new run directory")
            self._rng.bit_generator.state = self._resumed_rng
        self._resumed_rng = None
        return batches[start - first:stop - first]

    def state_arrays(self):
        if self._rng is None:
            return {}
        return {"epoch_rng": np.frombuffer(json.dumps(self._rng.bit_generator.state).encode(), np.uint8)}

    def load_state_arrays(self, arrays):
        rng = arrays.get("epoch_rng")
        self._resumed_rng = None if rng is None else json.loads(bytes(rng).decode())

    def step(self, index, step):
        return self.engine.step(*self.make_inputs(self.training, index, self._rng, step),
                                where=f"{self.name} step {step + 1}")

    def validate(self):
        return self._validate()

    def around_validation(self, state):
        return self._around(state) if self._around is not None else contextlib.nullcontext()

    def after_step(self):
        if self._after is not None:
            self._after()

    def epoch_row(self, state):
        row = {"learning_rate": float(np.asarray(self.optimizer.learning_rate)), "skipped_steps": state["skipped"]}
        return {**row, **(self._row(state) if self._row is not None else {})}


def _prepare(config, run_dir, resume, progress):
    run_dir = Path(run_dir)
    engine_class = step_engine(config)  # a wrong backend is refused before anything is read or written
    if config.data.framing != "spacing" and not isinstance(config, PriorConfig):
        raise DataError(f"data.framing {config.data.framing} is for shape priors only: it crops each slice about "
                        "its ground-truth heart, which a network's test image does not come with")
    if not resume and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds checkpoints; use --resume or another --run-dir")
    sets, groups, description = mask_sets(config, progress)  # before the run directory: bad data leaves nothing
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "data.json", description)
    return run_dir, sets, groups, engine_class


def _schedule(train, training_slices):
    steps_per_epoch = train.steps_per_epoch or max(1, training_slices // train.batch_size)
    total = train.epochs * steps_per_epoch
    if train.max_steps:
        total = min(total, train.max_steps)
    return steps_per_epoch, total, math.ceil(total / steps_per_epoch)


def _run(task, run_dir, train, steps_per_epoch, total_steps, progress):
    """Resume and run ``task`` in the loop; returns (loop state, seconds, best record)."""
    files = RunFiles(run_dir, train.keep_checkpoints)
    loop = Loop(task, files, steps_per_epoch, total_steps, log_every=train.log_every, progress=progress)
    loop.resume()
    save_config(task.config, run_dir / "config.yaml")  # after a resume that did not refuse the run
    start = time.perf_counter()
    state = loop.run()
    return state, time.perf_counter() - start, files.best()


def _validation_weights(model, forward, inputs, train, average=None):
    """``around_validation`` for ``_loop``, as SDNet's Trainer validates: the averaged weights
    when ``average`` (a ``WeightAverage``) is given, then, with ``train.batchnorm_recalibration``
    = k, BatchNorm statistics recomputed by ``forward`` (the network in training mode) over k
    batches of 16 of ``inputs`` drawn by (seed, step). Neither touches a random stream."""

    def recalibrate_for(state):
        rng = np.random.default_rng([train.seed, state["step"], 2])
        batches = recalibration_batches(inputs, train.batchnorm_recalibration, 16, rng)
        recalibrate(forward, batchnorm_layers(model), batches)

    def around_validation(state):
        return validation_weights(model.variables, average,
                                  (lambda: recalibrate_for(state)) if train.batchnorm_recalibration else None)

    return around_validation


# ------------------------------------------------------------------------------ priors
def prior_loss(kind, model, train):
    """The training loss of a prior and the extra variables it keeps, ``(loss_fn, extra)``.

    NVAE: ``loss_fn(masks, kl_coefficient)``, the weighted negative ELBO plus, with
    ``train.spectral_weight``, the spectral penalty; ``extra`` are the power iteration's
    vectors, one per convolution kernel, which the loss advances. Shape autoencoder:
    ``loss_fn(masks)``, the denoising loss on label-swapped masks; ``extra`` is the swap's
    seed state. Both are checkpointed with the model.
    """
    from keras import ops

    from sdnet_tf import losses

    if kind == "acnn":
        from sdnet_tf.models.acnn import swap_labels

        generator = keras.random.SeedGenerator(train.seed)

        def denoising(masks):
            return prior_objectives.autoencoder(model, masks, swap_labels(masks, train.label_swap, generator))

        return denoising, [generator.state]
    betas = model.group_betas(train.kl_betas)
    alpha = model.group_alpha() if train.kl_balance_size_factor else [1.0] * len(betas)
    kernels = [v for v in model.trainable_variables if len(v.shape) == 4 and "depthwise" not in v.path]
    extra = []
    if train.spectral_weight:
        seeds = np.random.default_rng(train.seed)
        extra = [keras.Variable(seeds.standard_normal(int(np.prod(k.shape[:-1]))).astype("float32")
                                / math.sqrt(np.prod(k.shape[:-1])), trainable=False, name="spectral_u")
                 for k in kernels]

    def elbo(masks, coefficient):
        total, terms = prior_objectives.nvae(model, masks, coefficient, betas, alpha, train.kl_balance)
        if train.spectral_weight:
            sigmas, vectors = losses.spectral_norms(kernels, extra, train.spectral_iterations)
            for variable, vector in zip(extra, vectors):
                variable.assign(vector)
            terms["spectral"] = ops.sum(ops.stack(sigmas))
            total = total + train.spectral_weight * terms["spectral"]
        return total, terms

    return elbo, extra


def train_prior(config, run_dir, resume=True, progress=True):
    """Train an NVAE or a shape autoencoder on one-hot masks as ``config`` (a ``PriorConfig``)
    says; returns the run summary (also written to ``summary.json``)."""
    from keras import ops

    run_dir, sets, _, StepEngine = _prepare(config, run_dir, resume, progress)
    handler = log_to_file(run_dir)
    try:
        m, train = config.model, config.train
        keras.utils.set_random_seed(train.seed)
        model = build_prior(m, seed=train.seed)
        parameters = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
        log.info("%s prior: %d trainable parameters, masks %d x %d, %d / %d / %d training / validation / test "
                 "slices", m.kind, parameters, m.input_size,
                 m.input_size, *(len(sets[s]) for s in ("training", "validation", "test")))
        steps_per_epoch, total_steps, _ = _schedule(train, len(sets["training"]))
        warmup = int(round(train.warmup_epochs * steps_per_epoch))
        if warmup:  # linear from 0 to the learning rate, then the cosine over the remaining steps
            learning_rate = keras.optimizers.schedules.CosineDecay(
                0.0, decay_steps=max(1, total_steps - warmup), alpha=train.min_learning_rate / train.learning_rate,
                warmup_target=train.learning_rate, warmup_steps=warmup)
        else:
            learning_rate = keras.optimizers.schedules.CosineDecay(
                train.learning_rate, decay_steps=total_steps, alpha=train.min_learning_rate / train.learning_rate)
        optimizer = keras.optimizers.Adamax(learning_rate, epsilon=train.epsilon)
        spacing = sample_pixel_mm(sets)  # data.spacing, or the heart-framed masks' median

        loss_fn, extra = prior_loss(m.kind, model, train)
        if m.kind == "nvae":
            betas = model.group_betas(train.kl_betas)

            def make_inputs(subset, index, rng, step):
                coefficient = prior_objectives.kl_coefficient(step, steps_per_epoch, train.kl_warmup_epochs,
                                                              train.kl_const_steps, train.kl_min)
                return prior_one_hot(_augment(config, subset.labels[index], rng)), np.float32(coefficient)

            def evaluate_fn(masks):
                return prior_objectives.nvae_validation(model, masks, betas)

            def sample_fn(n):
                return ops.argmax(model.sample(n, 1.0), axis=-1)
        else:
            def make_inputs(subset, index, rng, step):
                return (prior_one_hot(_augment(config, subset.labels[index], rng)),)

            def evaluate_fn(masks):
                return prior_objectives.autoencoder(model, masks, masks, training=False)

            sample_fn = None

        engine = StepEngine(model.trainable_variables, loss_fn, optimizer, train.weight_decay, train.jit_compile,
                            train.nonfinite, train.max_nonfinite, state=model.non_trainable_variables + extra,
                            networks=(model,))
        evaluate = engine.compiled(evaluate_fn)
        sample = engine.compiled(sample_fn) if sample_fn is not None else None
        reconstruct = engine.compiled(lambda masks: ops.argmax(model.reconstruct(masks, training=False), axis=-1))

        def validate(subset):
            masks = prior_one_hot(subset.labels)
            totals = [float(evaluate(masks[i:i + 32])[0]) * len(masks[i:i + 32]) for i in range(0, len(masks), 32)]
            predicted = batched(reconstruct, masks)
            scores = reconstruction_dice(predicted, subset.labels)
            metrics = {"loss": sum(totals) / len(masks), **{f"dice_{k}": v for k, v in scores.items()}}
            if sample is not None and train.validation_samples:
                metrics["valid_samples"] = valid_share(np.asarray(sample(train.validation_samples)), spacing)
            return metrics

        def epoch_row(state):
            if m.kind != "nvae":
                return {}
            return {"kl_coefficient": prior_objectives.kl_coefficient(
                state["step"], steps_per_epoch, train.kl_warmup_epochs, train.kl_const_steps, train.kl_min)}

        # recalibration reads label maps and one-hot encodes each batch (the whole set one-hot
        # would take 4x float32 of memory); reconstruct is deterministic, so no random stream moves
        recalibration = _validation_weights(
            model, lambda labels: model.reconstruct(prior_one_hot(labels), training=True), sets["training"].labels,
            train)
        task = StepTask(m.kind, model, optimizer, engine, sets["training"], config, steps_per_epoch, make_inputs,
                        lambda: validate(sets["validation"]), ("loss", "min"), extra,
                        around_validation=recalibration, epoch_row=epoch_row)
        state, seconds, best = _run(task, run_dir, train, steps_per_epoch, total_steps, progress)
        summary = {"kind": m.kind, "epochs": state["epoch"], "steps": state["step"], "planned_steps": total_steps,
                   "steps_per_epoch": steps_per_epoch, "skipped_steps": state["skipped"],
                   "seconds_this_session": round(seconds, 1),
                   "trainable_parameters": parameters,
                   "best": best}
        write_json(run_dir / "summary.json", summary)
        return summary
    finally:
        stop_logging(handler)


def _augment(config, labels, rng):
    d = config.data
    if not d.augment or not d.rotation_range:
        return labels
    return rotate_labels(labels, rng.uniform(-d.rotation_range, d.rotation_range, len(labels)))


# ------------------------------------------------------------------------------ U-Net
def estimate_omega(terms_of, batches, key="cross_entropy"):
    """omega = mean ``key`` term / mean shape loss over ``batches``: the weight that makes the
    two terms equally large for the network at hand (the thesis' way of balancing them)."""
    ce, shape = [], []
    for inputs in batches:
        terms = terms_of(*inputs)
        ce.append(terms[key])
        shape.append(terms["shape"])
    if not np.mean(shape) > 0:
        raise ValueError("the shape loss is 0 on every batch used to estimate omega; set loss.shape_omega")
    return float(np.mean(ce) / np.mean(shape))


def resolve_omega(path, configured, terms_of, batches, key="cross_entropy", what="mean cross-entropy"):
    """The shape loss's weight: ``configured`` when set, else the one kept in ``path`` by an
    earlier start of the run, else ``estimate_omega`` on ``batches`` (written to ``path``)."""
    if configured:
        return float(configured)
    if path.is_file():
        return float(json.loads(path.read_text())["omega"])
    omega = estimate_omega(terms_of, batches, key)
    write_json(path, {"omega": omega, "batches": len(batches),
                      "how": f"{what} / mean shape loss of the initial network"})
    return omega


def check_prior_fits(prior_config, config, source=None):
    """A prior must read the U-Net's (or SDNet's) masks: its field of view within theirs.

    The network's masks are resampled to the prior's pixel spacing and cropped to its central
    window (``losses.prior_window``), so the spacings may differ; the prior's field of view,
    ``input_size x spacing`` in mm, must not exceed the network's by half a prior pixel or more
    (it would read beyond the network's masks).

    Args:
        prior_config: the prior's ``PriorConfig``.
        config: the config of the network given the prior.
        source: the prior's run directory, named in the error (default ``loss.shape_prior``).

    Returns:
        The frame scale: the network's mm per pixel over the prior's (1.0 for the same spacing),
        to be set as the prior's ``frame_scale``.

    Raises:
        DataError: naming the prior and both fields of view (pixels and mm) when the prior's is
            the larger, or a prior framed about each heart (``data.framing: heart``).
    """
    source = source if source is not None else config.loss.shape_prior
    _refuse_heart_framing(prior_config, source)
    scale = config.data.spacing / prior_config.data.spacing
    if abs(scale - 1.0) < 1e-6:
        scale = 1.0
    prior_size, size = prior_config.model.input_size, config.model.input_size
    if resampled_size(size, scale, prior_size) < prior_size:
        raise DataError(f"shape prior {source}: reads {prior_size} x {prior_size} masks at "
                        f"{prior_config.data.spacing:g} mm per pixel ({prior_size * prior_config.data.spacing:g} mm), "
                        f"larger than the network's {size} x {size} at {config.data.spacing:g} mm "
                        f"({size * config.data.spacing:g} mm; model.input_size, data.spacing)")
    return scale


def image_batch(config, subset, index, rng):
    """``(images, one-hot masks)`` of the slices ``index`` of ``subset``, both rotated by the
    same random angle per slice when ``data.augment`` and ``data.rotation_range`` say so."""
    images, labels = subset.images[index], subset.labels[index]
    if config.data.augment and config.data.rotation_range:
        from sdnet_tf.data.augment import rotate_batch

        angles = rng.uniform(-config.data.rotation_range, config.data.rotation_range, len(index))
        return rotate_batch(images, prior_one_hot(labels), angles)
    return images, prior_one_hot(labels)


def train_unet(config, run_dir, resume=True, progress=True):
    """Train the U-Net baseline as ``config`` (a ``SegmentationConfig``) says, with the shape
    loss of ``loss.shape_prior`` when set; returns the run summary."""
    from keras import ops

    prior = prior_config = None
    if config.loss.shape_prior:
        prior, prior_config = load_prior(config.loss.shape_prior)
        prior.frame_scale = check_prior_fits(prior_config, config)  # read by prior_objectives.shape_term
    run_dir, sets, _, StepEngine = _prepare(config, run_dir, resume, progress)
    handler = log_to_file(run_dir)
    try:
        train = config.train
        keras.utils.set_random_seed(train.seed)
        model = build_unet(config.model.input_size, config.model.filters, config.model.depth)
        steps_per_epoch, total_steps, _ = _schedule(train, len(sets["training"]))
        optimizer = keras.optimizers.Adam(train.learning_rate)
        spacing = config.data.spacing
        omega = 0.0  # set below before the first step, when the update reads it

        def loss_fn(images, masks):
            return prior_objectives.segmentation(model, images, masks, config.loss.cross_entropy, omega, prior)

        engine = StepEngine(model.trainable_variables, loss_fn, optimizer, 0.0, train.jit_compile,
                            train.nonfinite, train.max_nonfinite, state=model.non_trainable_variables,
                            frozen=prior.variables if prior is not None else (), networks=(model,))
        if prior is not None:
            rng = np.random.default_rng([train.seed, 999])
            index = epoch_batches(len(sets["training"]), train.batch_size, rng, config.loss.omega_batches)
            terms_of = engine.compiled(
                lambda x, y: prior_objectives.segmentation(model, x, y, 1.0, 0.0, prior)[1])
            omega = resolve_omega(run_dir / "omega.json", config.loss.shape_omega,
                                  lambda x, y: {k: float(v) for k, v in terms_of(x, y).items()},
                                  [(sets["training"].images[i], prior_one_hot(sets["training"].labels[i]))
                                   for i in index])
            log.info("shape loss of %s, omega = %.6g%s", config.loss.shape_prior, omega,
                     frame_note(config, prior_config, prior.frame_scale))

        def make_inputs(subset, index, rng, step):
            return image_batch(config, subset, index, rng)

        predict = engine.compiled(lambda x: ops.argmax(model(x, training=False), axis=-1))

        def validate(subset):
            predicted = batched(predict, subset.images)
            scores = reconstruction_dice(predicted, subset.labels)
            return {**{f"dice_{k}": v for k, v in scores.items()}, "valid_slices": valid_share(predicted, spacing)}

        average = WeightAverage(model.trainable_variables, train.weight_average,
                                compiler=stateful_compiler(keras.backend.backend())) if train.weight_average else None
        around_validation = _validation_weights(model, lambda x: model(x, training=True), sets["training"].images,
                                                 train, average)

        task = StepTask("unet", model, optimizer, engine, sets["training"], config, steps_per_epoch, make_inputs,
                        lambda: validate(sets["validation"]), ("dice_mean", "max"),
                        extra=average.variables() if average is not None else (),
                        around_validation=around_validation,
                        after_step=average.update if average is not None else None)
        state, seconds, best = _run(task, run_dir, train, steps_per_epoch, total_steps, progress)
        summary = {"model": "unet", "shape_prior": config.loss.shape_prior, "omega": omega if prior else 0.0,
                   "epochs": state["epoch"], "steps": state["step"], "planned_steps": total_steps,
                   "skipped_steps": state["skipped"], "seconds_this_session": round(seconds, 1), "best": best}
        write_json(run_dir / "summary.json", summary)
        return summary
    finally:
        stop_logging(handler)


# ------------------------------------------------------------------------------ T-L network
def load_code_prior(path):
    """The frozen ACNN autoencoder of the T-L network: ``(model, PriorConfig)`` of ``path``.

    Raises:
        DataError: ``path`` is empty, not a run directory, or a run of another kind (an NVAE
            prior, a U-Net, SDNet), each naming it.
        FileNotFoundError: the run has no ``best.npz`` yet (``load_prior``).
    """
    from sdnet_tf.inference import run_kind

    if not path:
        raise DataError("the T-L network needs a trained ACNN shape autoencoder: --shape-prior RUN "
                        "(loss.shape_prior), a run of sdnet-tf prior train acnn")
    try:
        kind = run_kind(path)
    except DataError as error:
        raise DataError(f"shape prior {error}") from error
    if kind != "acnn":
        what = "an NVAE prior" if kind == "nvae" else f"a {kind} run"
        raise DataError(f"shape prior {path}: {what}; the T-L network predicts the code of an ACNN shape "
                        "autoencoder (sdnet-tf prior train acnn)")
    return load_prior(path)


def frame_note(config, prior_config, scale):
    """The log's words on resampling a network's masks into a prior's frame ("" when none)."""
    if scale == 1.0:
        return ""
    size, prior_size = config.model.input_size, prior_config.model.input_size
    return (f"; the network's {size} x {size} masks at {config.data.spacing:g} mm are resampled to "
            f"{resampled_size(size, scale, prior_size)} x {resampled_size(size, scale, prior_size)} at the prior's "
            f"{prior_config.data.spacing:g} mm and their central {prior_size} x {prior_size} read")


def _refuse_heart_framing(prior_config, source):
    if getattr(prior_config.data, "framing", "spacing") != "spacing":
        raise DataError(f"shape prior {source}: trained on masks framed about each heart (data.framing: "
                        f"{prior_config.data.framing}), which a network's masks are not; train the prior "
                        "with data.framing: spacing")


def check_tl_prior(prior_config, config, source):
    """The T-L network decodes with the prior's decoder, so its images must be the prior's
    masks: the same size and the same spacing."""
    if prior_config.model.input_size != config.model.input_size:
        raise DataError(f"shape prior {source} decodes {prior_config.model.input_size} x "
                        f"{prior_config.model.input_size} masks; the T-L network's images must be the same size, "
                        f"not {config.model.input_size} (set model.input_size={prior_config.model.input_size})")
    _refuse_heart_framing(prior_config, source)
    if abs(prior_config.data.spacing - config.data.spacing) > 1e-6:
        raise DataError(f"shape prior {source}: trained at {prior_config.data.spacing:g} mm per pixel, the T-L "
                        f"network at {config.data.spacing:g} (data.spacing): they must match")


def train_tl(config, run_dir, resume=True, progress=True):
    """Train ACNN's T-L network as ``config`` (a ``TLConfig``) says; returns the run summary.

    The predictor learns to regress the frozen autoencoder's code of each slice's ground-truth
    mask (``prior_objectives.tl_code``); validation decodes the predicted codes of the
    validation images with the autoencoder's decoder and scores the masks (Dice per class,
    share of anatomically valid slices) and the code distance. ``best.npz`` and the
    checkpoints hold the autoencoder's weights beside the predictor's, and ``prior.yaml``
    the prior's config, so the run is read without the prior's run directory.

    Raises:
        DataError: no prior given, a prior that is not an ACNN run, or one trained at another
            spacing or size (``load_code_prior``, ``check_tl_prior``).
    """
    from keras import ops

    source = config.loss.shape_prior
    prior, prior_config = load_code_prior(source)
    check_tl_prior(prior_config, config, source)
    run_dir, sets, _, StepEngine = _prepare(config, run_dir, resume, progress)
    handler = log_to_file(run_dir)
    try:
        train = config.train
        keras.utils.set_random_seed(train.seed)
        model = build_tl(config.model, prior_config.model, seed=train.seed)
        assign_values(model.autoencoder, variable_values(prior), source=str(source))
        del prior
        save_config(prior_config, run_dir / "prior.yaml")
        predictor = model.predictor
        parameters = int(sum(int(np.prod(v.shape)) for v in predictor.trainable_variables))
        log.info("T-L network: predictor of %d trainable parameters (filters %d, levels %d) regressing the %d-d "
                 "code of the frozen autoencoder %s", parameters, predictor.filters, predictor.levels,
                 model.code_size, source)
        steps_per_epoch, total_steps, _ = _schedule(train, len(sets["training"]))
        optimizer = keras.optimizers.Adam(train.learning_rate)
        spacing = config.data.spacing
        weights = config.loss

        def loss_fn(images, masks):
            return prior_objectives.tl_code(model, images, masks, weights.code, weights.cross_entropy)

        engine = StepEngine(predictor.trainable_variables, loss_fn, optimizer, 0.0, train.jit_compile,
                            train.nonfinite, train.max_nonfinite, state=predictor.non_trainable_variables,
                            frozen=model.autoencoder.variables, networks=(predictor,))
        predict = engine.compiled(lambda x: ops.argmax(model(x, training=False), axis=-1))
        distance = engine.compiled(
            lambda x, y: prior_objectives.tl_code(model, x, y, 1.0, 0.0, training=False)[1]["code"])

        def validate(subset):
            predicted = batched(predict, subset.images)
            scores = reconstruction_dice(predicted, subset.labels)
            sums = [float(distance(subset.images[i:i + 32], prior_one_hot(subset.labels[i:i + 32])))
                    * len(subset.images[i:i + 32]) for i in range(0, len(subset), 32)]
            return {**{f"dice_{k}": v for k, v in scores.items()}, "valid_slices": valid_share(predicted, spacing),
                    "code_distance": sum(sums) / len(subset)}

        average = WeightAverage(predictor.trainable_variables, train.weight_average,
                                compiler=stateful_compiler(keras.backend.backend())) if train.weight_average else None
        around_validation = _validation_weights(predictor, lambda x: predictor(x, training=True),
                                                 sets["training"].images, train, average)
        task = StepTask("tl", model, optimizer, engine, sets["training"], config, steps_per_epoch,
                        lambda subset, index, rng, step: image_batch(config, subset, index, rng),
                        lambda: validate(sets["validation"]), ("dice_mean", "max"),
                        extra=average.variables() if average is not None else (),
                        around_validation=around_validation,
                        after_step=average.update if average is not None else None)
        state, seconds, best = _run(task, run_dir, train, steps_per_epoch, total_steps, progress)
        summary = {"model": "tl", "shape_prior": source, "epochs": state["epoch"], "steps": state["step"],
                   "planned_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                   "skipped_steps": state["skipped"], "seconds_this_session": round(seconds, 1),
                   "trainable_parameters": parameters, "best": best}
        write_json(run_dir / "summary.json", summary)
        return summary
    finally:
        stop_logging(handler)
