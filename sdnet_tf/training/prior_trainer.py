"""Training loops of the shape priors (``sdnet-tf prior train nvae|acnn``) and of the U-Net baseline
(``sdnet-tf baseline train unet``, optionally with a frozen prior's shape loss).

Both loops share the run-directory layout:

- ``config.yaml`` (resolved config), ``data.json`` (patients and slice counts);
- ``checkpoints/ckpt-<epoch>.npz``: model and optimiser variables and the loop's state at the
  end of an epoch, written atomically; a killed run resumes from the newest one;
- ``best.npz`` + ``best.json``: the variables of the best validation epoch;
- ``history.csv`` (one row per epoch), ``scalars.jsonl`` (training terms every ``log_every``
  steps), ``train.log``, and ``summary.json`` at the end.

The gradient mechanics live in ``prior_engine`` (TensorFlow) and ``prior_jax_engine`` (JAX),
chosen by ``train.backend``, which must be Keras' backend; this module is backend-free. The
checkpoints are the same on both, so a run can be resumed on the other backend.
"""

import contextlib
import csv
import json
import logging
import math
import re
import time
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from sdnet_tf.atomic import atomic_path, write_json
from sdnet_tf.config import save_config
from sdnet_tf.data.arrays import DataError
from sdnet_tf.data.masks import epoch_batches, prior_one_hot, rotate_labels
from sdnet_tf.data.sources import mask_sets
from sdnet_tf.metrics.shape import reconstruction_dice, valid_fraction
from sdnet_tf.inference import batched, load_prior
from sdnet_tf.models.priors import assign_values, build_prior, variable_values
from sdnet_tf.models.unet import build_unet
from sdnet_tf.training import prior_objectives

from sdnet_tf.training.averaging import WeightAverage, validation_weights
from sdnet_tf.training.logs import log_to_file, stop_logging
from sdnet_tf.training.batchnorm import batchnorm_layers, recalibrate, recalibration_batches

log = logging.getLogger("sdnet_tf.train")

_CHECKPOINT = re.compile(r"ckpt-(\d+)\.npz")


# ------------------------------------------------------------------------------ helpers
def valid_share(labels, spacing):
    """Share of label slices that pass the seven anatomical checks."""
    return valid_fraction(labels, (spacing, spacing))["valid"]


class RunFiles:
    """Checkpoints, best weights, history and scalars of one run directory."""

    def __init__(self, run_dir, keep=2):
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.checkpoints = self.run_dir / "checkpoints"

    def latest(self):
        found = {int(m.group(1)): p for p in self.checkpoints.glob("ckpt-*.npz")
                 if (m := _CHECKPOINT.fullmatch(p.name))}
        return found[max(found)] if found else None

    def save_checkpoint(self, epoch, model, optimizer, state, extra=()):
        arrays = {f"model/{k}": v for k, v in variable_values(model).items()}
        arrays.update({f"optimizer/{i:04d}": np.asarray(v.value) for i, v in enumerate(optimizer.variables)})
        arrays.update({f"extra/{i:04d}": np.asarray(v.value) for i, v in enumerate(extra)})
        arrays["state"] = np.frombuffer(json.dumps(state).encode(), np.uint8)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.checkpoints / f"ckpt-{epoch}.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        kept = sorted(self.checkpoints.glob("ckpt-*.npz"), key=lambda p: int(_CHECKPOINT.fullmatch(p.name).group(1)))
        for old in kept[:-self.keep]:
            old.unlink()

    def restore(self, path, model, optimizer, extra=()):
        with np.load(path) as data:
            assign_values(model, {k[6:]: data[k] for k in data.files if k.startswith("model/")}, str(path))
            opt = sorted(k for k in data.files if k.startswith("optimizer/"))
            if len(opt) != len(optimizer.variables):
                raise DataError(f"{path}: {len(opt)} optimiser arrays for {len(optimizer.variables)} variables")
            for key, variable in zip(opt, optimizer.variables):
                variable.assign(data[key])
            for key, variable in zip(sorted(k for k in data.files if k.startswith("extra/")), extra):
                variable.assign(data[key])
            return json.loads(bytes(data["state"]).decode())

    def save_best(self, model, record):
        with atomic_path(self.run_dir / "best.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **variable_values(model))
        write_json(self.run_dir / "best.json", record)

    def best(self):
        """The best epoch's record (``best.json``), or {} before the first validation."""
        path = self.run_dir / "best.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def append_history(self, row):
        path = self.run_dir / "history.csv"
        rows = []
        if path.is_file():
            with open(path, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) < row["epoch"]]
        rows.append(row)
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, columns)
                writer.writeheader()
                writer.writerows(rows)

    def log_scalars(self, step, values):
        with open(self.run_dir / "scalars.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, **{k: round(v, 6) for k, v in values.items()}}) + "\n")


def step_engine(config):
    """The ``StepEngine`` class of ``config.train.backend``, which must be Keras' backend."""
    from sdnet_tf.config import ConfigError
    from sdnet_tf.runtime import require_backend

    try:
        require_backend(config.train.backend)
    except (ValueError, RuntimeError) as error:
        raise ConfigError(str(error)) from error
    if config.train.backend == "jax":
        from sdnet_tf.training.prior_jax_engine import StepEngine
    else:
        from sdnet_tf.training.prior_engine import StepEngine
    return StepEngine


def _prepare(config, run_dir, resume, progress):
    run_dir = Path(run_dir)
    engine_class = step_engine(config)  # a wrong backend is refused before anything is read or written
    if not resume and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds checkpoints; use --resume or another --run-dir")
    sets, groups, description = mask_sets(config, progress)  # before the run directory: bad data leaves nothing
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    write_json(run_dir / "data.json", description)
    return run_dir, sets, groups, engine_class


def _schedule(train, training_slices):
    steps_per_epoch = train.steps_per_epoch or max(1, training_slices // train.batch_size)
    total = train.epochs * steps_per_epoch
    if train.max_steps:
        total = min(total, train.max_steps)
    return steps_per_epoch, total, math.ceil(total / steps_per_epoch)


def _loop(name, config, run_dir, files, model, optimizer, engine, make_inputs, validate, select, sets,
          steps_per_epoch, total_steps, epochs, progress, extra=(), on_epoch=None, around_validation=None,
          after_step=None):
    """The shared epoch loop: resume, steps, validation, best, checkpoints, history.

    ``after_step()``, when given, runs after each step (the U-Net's weight average);
    ``around_validation(state)``, a context manager, wraps each epoch's validation and the
    saving of the best weights (the U-Net's averaged weights and BatchNorm recalibration)."""
    train = config.train
    state = {"epoch": 0, "step": 0, "best": None, "best_epoch": None, "skipped": 0}
    latest = files.latest()
    if latest is not None:
        state = files.restore(latest, model, optimizer, extra)
        log.info("resumed %s from %s (epoch %d, step %d)", name, latest, state["epoch"], state["step"])
    training = sets["training"]
    key, mode = select
    start = time.perf_counter()
    while state["epoch"] < epochs and state["step"] < total_steps:
        epoch = state["epoch"]
        rng = np.random.default_rng([train.seed, epoch])
        batches = epoch_batches(len(training), train.batch_size, rng, steps_per_epoch)
        batches = batches[:total_steps - state["step"]]
        sums, tick = {}, time.perf_counter()
        bar = tqdm(batches, desc=f"{name} epoch {epoch + 1}/{epochs}", unit="step", disable=not progress,
                   leave=False)
        for index in bar:
            terms = engine.step(*make_inputs(training, index, rng, state["step"]),
                                where=f"{name} step {state['step'] + 1}")
            state["step"] += 1
            state["skipped"] += int(terms["skipped"])
            if after_step is not None:
                after_step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            if state["step"] % train.log_every == 0:
                files.log_scalars(state["step"], terms)
            bar.set_postfix(loss=f"{terms['total']:.4g}")
        seconds = time.perf_counter() - tick
        with around_validation(state) if around_validation is not None else contextlib.nullcontext():
            metrics = validate(sets["validation"])
            score = metrics[key]
            better = state["best"] is None or (score < state["best"] if mode == "min" else score > state["best"])
            if better and np.isfinite(score):
                state["best"], state["best_epoch"] = float(score), epoch + 1
                files.save_best(model, {"epoch": epoch + 1, "step": state["step"], key: float(score), **metrics})
        state["epoch"] = epoch + 1
        row = {"epoch": epoch + 1, "step": state["step"], "seconds": round(seconds, 2),
               "learning_rate": float(np.asarray(optimizer.learning_rate)),
               **{f"train_{k}": round(v / max(1, len(batches)), 6) for k, v in sums.items()},
               **{f"val_{k}": round(v, 6) for k, v in metrics.items()}}
        if on_epoch is not None:
            row.update(on_epoch(state))
        files.append_history(row)
        files.save_checkpoint(epoch + 1, model, optimizer, state, extra)
        log.info("%s epoch %d/%d: step %d, %.0f s, validation %s%s", name, epoch + 1, epochs, state["step"],
                 seconds, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), " (best)" if better else "")
    return state, time.perf_counter() - start


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
    betas, alpha = model.group_betas(train.kl_betas), model.group_alpha()
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
        steps_per_epoch, total_steps, epochs = _schedule(train, len(sets["training"]))
        warmup = int(round(train.warmup_epochs * steps_per_epoch))
        if warmup:  # linear from 0 to the learning rate, then the cosine over the remaining steps
            learning_rate = keras.optimizers.schedules.CosineDecay(
                0.0, decay_steps=max(1, total_steps - warmup), alpha=train.min_learning_rate / train.learning_rate,
                warmup_target=train.learning_rate, warmup_steps=warmup)
        else:
            learning_rate = keras.optimizers.schedules.CosineDecay(
                train.learning_rate, decay_steps=total_steps, alpha=train.min_learning_rate / train.learning_rate)
        optimizer = keras.optimizers.Adamax(learning_rate, epsilon=train.epsilon)
        spacing = config.data.spacing

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
                            train.nonfinite, train.max_nonfinite, state=model.non_trainable_variables + extra)
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

        def on_epoch(state):
            row = {"skipped_steps": state["skipped"]}
            if m.kind == "nvae":
                row["kl_coefficient"] = prior_objectives.kl_coefficient(
                    state["step"], steps_per_epoch, train.kl_warmup_epochs, train.kl_const_steps, train.kl_min)
            return row

        # recalibration reads label maps and one-hot encodes each batch (the whole set one-hot
        # would take 4x float32 of memory); reconstruct is deterministic, so no random stream moves
        recalibration = _validation_weights(
            model, lambda labels: model.reconstruct(prior_one_hot(labels), training=True), sets["training"].labels,
            train)
        files = RunFiles(run_dir, train.keep_checkpoints)
        state, seconds = _loop(m.kind, config, run_dir, files, model, optimizer, engine, make_inputs, validate,
                               ("loss", "min"), sets, steps_per_epoch, total_steps, epochs, progress, extra,
                               on_epoch, around_validation=recalibration)
        best = files.best()
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


def check_prior_fits(prior_config, config):
    """A prior must read the U-Net's (or SDNet's) masks: same spacing, no larger size."""
    if abs(prior_config.data.spacing - config.data.spacing) > 1e-6:
        raise DataError(f"the shape prior was trained at {prior_config.data.spacing} mm per pixel, the network at "
                        f"{config.data.spacing}: they must match")
    if prior_config.model.input_size > config.model.input_size:
        raise DataError(f"the shape prior reads {prior_config.model.input_size} x {prior_config.model.input_size} "
                        f"masks, larger than the network's {config.model.input_size}")


def train_unet(config, run_dir, resume=True, progress=True):
    """Train the U-Net baseline as ``config`` (a ``SegmentationConfig``) says, with the shape
    loss of ``loss.shape_prior`` when set; returns the run summary."""
    from keras import ops

    prior = prior_config = None
    if config.loss.shape_prior:
        prior, prior_config = load_prior(config.loss.shape_prior)
        check_prior_fits(prior_config, config)
    run_dir, sets, _, StepEngine = _prepare(config, run_dir, resume, progress)
    handler = log_to_file(run_dir)
    try:
        train = config.train
        keras.utils.set_random_seed(train.seed)
        model = build_unet(config.model.input_size, config.model.filters, config.model.depth)
        steps_per_epoch, total_steps, epochs = _schedule(train, len(sets["training"]))
        optimizer = keras.optimizers.Adam(train.learning_rate)
        spacing = config.data.spacing
        omega = 0.0  # set below before the first step, when the update reads it

        def loss_fn(images, masks):
            return prior_objectives.segmentation(model, images, masks, config.loss.cross_entropy, omega, prior)

        engine = StepEngine(model.trainable_variables, loss_fn, optimizer, 0.0, train.jit_compile,
                            train.nonfinite, train.max_nonfinite, state=model.non_trainable_variables,
                            frozen=prior.variables if prior is not None else ())
        if prior is not None:
            rng = np.random.default_rng([train.seed, 999])
            index = epoch_batches(len(sets["training"]), train.batch_size, rng, config.loss.omega_batches)
            terms_of = engine.compiled(
                lambda x, y: prior_objectives.segmentation(model, x, y, 1.0, 0.0, prior)[1])
            omega = resolve_omega(run_dir / "omega.json", config.loss.shape_omega,
                                  lambda x, y: {k: float(v) for k, v in terms_of(x, y).items()},
                                  [(sets["training"].images[i], prior_one_hot(sets["training"].labels[i]))
                                   for i in index])
            log.info("shape loss weight omega = %.6g", omega)

        def make_inputs(subset, index, rng, step):
            images, labels = subset.images[index], subset.labels[index]
            if config.data.augment and config.data.rotation_range:
                from sdnet_tf.data.augment import rotate_batch

                angles = rng.uniform(-config.data.rotation_range, config.data.rotation_range, len(index))
                images, masks = rotate_batch(images, prior_one_hot(labels), angles)
                return images, masks
            return images, prior_one_hot(labels)

        predict = engine.compiled(lambda x: ops.argmax(model(x, training=False), axis=-1))

        def validate(subset):
            predicted = batched(predict, subset.images)
            scores = reconstruction_dice(predicted, subset.labels)
            return {**{f"dice_{k}": v for k, v in scores.items()}, "valid_slices": valid_share(predicted, spacing)}

        average = WeightAverage(model.trainable_variables, train.weight_average) if train.weight_average else None
        around_validation = _validation_weights(model, lambda x: model(x, training=True), sets["training"].images,
                                                 train, average)

        files = RunFiles(run_dir, train.keep_checkpoints)
        state, seconds = _loop("unet", config, run_dir, files, model, optimizer, engine, make_inputs, validate,
                               ("dice_mean", "max"), sets, steps_per_epoch, total_steps, epochs, progress,
                               extra=average.variables() if average is not None else (),
                               around_validation=around_validation,
                               after_step=average.update if average is not None else None)
        best = files.best()
        summary = {"model": "unet", "shape_prior": config.loss.shape_prior, "omega": omega if prior else 0.0,
                   "epochs": state["epoch"], "steps": state["step"], "planned_steps": total_steps,
                   "skipped_steps": state["skipped"], "seconds_this_session": round(seconds, 1), "best": best}
        write_json(run_dir / "summary.json", summary)
        return summary
    finally:
        stop_logging(handler)
