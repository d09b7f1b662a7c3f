"""TensorFlow engine: the gradient mechanics of the SDNet schedule.

With ``distribute``, the only modules of the package with ``tf.function``, ``GradientTape``,
``tf.distribute``, ``tf.train`` and ``tf.summary``. What each step optimises and updates
comes from ``schedule.Step`` and ``objectives``; this module turns a step into a compiled
update, on one device or on the replicas of a ``tf.distribute.Strategy``.
"""

import contextlib
import logging
import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from sdnet_tf.atomic import atomic_path
from sdnet_tf.data.arrays import DataError
from sdnet_tf.training import distribute, objectives
from sdnet_tf.training.optimizers import make_optimizer
from sdnet_tf.training.schedule import OPTIMIZERS, SDNET_SCHEDULE, shared_updates

log = logging.getLogger("sdnet_tf.train")


class TFEngine:
    """Compiled SDNet updates, checkpoints and TensorBoard summaries with TensorFlow.

    Args:
        model: a built ``SDNet``.
        schedule: the steps (``schedule.SDNET_SCHEDULE``).
        loss_weights: dict with ``kl``, ``dice``, ``adversarial``, ``reconstruction``,
            ``z_reconstruction``.
        train_config: a ``TrainConfig`` (optimiser, precision, XLA, batch size, checkpoint
            settings).
        dice_mode: "pooled" or "per_class".
        run_dir: where checkpoints and TensorBoard events go; None for none.
        strategy: a ``tf.distribute.Strategy`` whose scope created ``model``; None for one
            device. Its replicas share each global batch of ``train_config.batch_size``.
        resume_dir: the run directory whose checkpoints ``restore_latest`` reads (default
            ``run_dir``); a multi-worker run's other workers write to a directory of their
            own but resume from the chief's.
    """

    def __init__(self, model, schedule, loss_weights, train_config, dice_mode="pooled", run_dir=None,
                 strategy=None, resume_dir=None):
        self.model = model
        self.schedule = tuple(schedule)
        self.loss_weights = {k: float(v) for k, v in loss_weights.items()}
        self.config = train_config
        self.dice_mode = dice_mode
        self.strategy = strategy
        distribute.check_global_batch(train_config.batch_size, strategy)
        # as Keras' own fit does, no XLA under tf.distribute: the replicas' all-reduces run
        # between the compiled parts
        self.jit_compile = train_config.jit_compile and strategy is None
        if train_config.jit_compile and strategy is not None:
            log.info("XLA is off for the training updates under %s", type(strategy).__name__)
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            self.optimizers = {name: make_optimizer(train_config) for name in OPTIMIZERS}
            self.step_variables = {
                step.name: [v for net in step.trains for v in getattr(model, net).trainable_variables]
                for step in self.schedule
            }
            for name, optimizer in self.optimizers.items():
                union = {}
                for step in self.schedule:
                    if step.optimizer == name:
                        union.update({id(v): v for v in self.step_variables[step.name]})
                if union:
                    optimizer.build(list(union.values()))
        self.shape_prior, self.shape_omega = None, 0.0  # set by use_shape_prior before the first step
        self._updates = shared_updates(self.schedule, self._compile_update)
        # inference runs on this process's first replica: its variables equal every other's
        self._segment = tf.function(lambda x: objectives.segment_inference(self.model, x),
                                    jit_compile=train_config.jit_compile, reduce_retracing=True)
        self._inspect = tf.function(lambda x: self.model(x, training=False, sample=False))
        self.run_dir = Path(run_dir) if run_dir else None
        self.resume_dir = Path(resume_dir) if resume_dir else self.run_dir
        self._writer = None
        self._manager = None
        self._best_manager = None
        if self.run_dir is not None:
            self._checkpoint = tf.train.Checkpoint(**self._tracked(optimizers=True))
            self._manager = tf.train.CheckpointManager(
                self._checkpoint, str(self.run_dir / "checkpoints"), max_to_keep=train_config.keep_checkpoints,
                checkpoint_name="ckpt")
            self._best_manager = tf.train.CheckpointManager(
                tf.train.Checkpoint(**self._tracked(optimizers=False)), str(self.run_dir / "best"), max_to_keep=1,
                checkpoint_name="best")

    @classmethod
    def from_config(cls, model, config, run_dir=None, strategy=None, resume_dir=None):
        """The engine of the SDNet schedule with the loss weights and settings of a ``Config``."""
        loss = config.loss
        weights = {"kl": loss.kl, "dice": loss.dice, "adversarial": loss.adversarial,
                   "reconstruction": loss.reconstruction, "z_reconstruction": loss.z_reconstruction}
        return cls(model, SDNET_SCHEDULE, weights, config.train, dice_mode=loss.dice_mode, run_dir=run_dir,
                   strategy=strategy, resume_dir=resume_dir)

    def _tracked(self, optimizers):
        """Every variable to checkpoint, by a stable name.

        Keras 3 keeps sub-layers in lists that ``tf.train.Checkpoint`` does not traverse (it
        would miss BatchNorm statistics and seed-generator states), so the networks' and the
        optimisers' variables are listed explicitly, in their deterministic creation order.
        """
        tracked = {}
        for name, network in self.model.networks().items():
            for i, variable in enumerate(network.variables):
                tracked[f"{name}/{i:04d}"] = variable.value
        if optimizers:
            for name, optimizer in self.optimizers.items():
                for i, variable in enumerate(optimizer.variables):
                    tracked[f"optimizer_{name}/{i:04d}"] = variable.value
        return tracked

    # updates -----------------------------------------------------------------------------
    def _compile_update(self, step):
        objective = getattr(objectives, step.objective)
        variables = self.step_variables[step.name]
        optimizer = self.optimizers[step.optimizer]
        model, weights, dice_mode = self.model, self.loss_weights, self.dice_mode
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        sampler = model.modality_encoder.sampler
        distributed = self.strategy is not None

        def update(*inputs):
            """One replica's update on its slice of the batch (the whole batch on one device)."""
            replica = tf.distribute.get_replica_context()
            kwargs = {"dice_mode": dice_mode} if step.objective == "supervised" else {}
            if step.objective == "supervised" and self.shape_prior is not None:
                kwargs.update(prior=self.shape_prior, omega=self.shape_omega)
            if distributed and step.objective in objectives.SAMPLES_Z:
                # every replica draws the same eps for the global batch and takes its own
                # rows: each image gets the eps it would get on one device (where the
                # sampling layer draws that same (B, nz) batch itself)
                local = tf.shape(inputs[0])[0]
                eps = sampler.draw_noise((local * replica.num_replicas_in_sync, model.nz))  # (global B, nz)
                kwargs["noise"] = tf.gather(eps, replica.replica_id_in_sync_group * local + tf.range(local))
            with tf.GradientTape() as tape:
                if step.objective == "discriminator":
                    total, terms = objective(model, *inputs)
                else:
                    total, terms = objective(model, *inputs, weights, **kwargs)
                # the optimiser sums the replicas' gradients; every loss is a mean over equal
                # slices, and the spectral penalty is the same on every replica, so
                # 1 / replicas makes the sum the gradient of the global batch's loss
                loss = total / replica.num_replicas_in_sync
                loss = optimizer.scale_loss(loss) if scaled else loss
            grads = tape.gradient(loss, variables)
            optimizer.apply(grads, variables)
            return total, terms

        if self.strategy is None:
            return tf.function(update, jit_compile=self.jit_compile, reduce_retracing=True)
        strategy = self.strategy
        synchronise = distribute.replicas(strategy) > 1

        def distributed_update(*inputs):
            with distribute.synchronized_batchnorm(model) if synchronise else contextlib.nullcontext():
                outputs = strategy.run(update, args=inputs)
            # means over equal slices: their mean is the global batch's value
            return tf.nest.map_structure(lambda v: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None),
                                         outputs)

        return tf.function(distributed_update, reduce_retracing=True)

    def use_shape_prior(self, prior, omega):
        """Add ``omega`` times a frozen prior's shape loss to the supervised step (one device).

        Call before the first update: the compiled steps read the prior when first traced.
        """
        if self.strategy is not None:
            raise ValueError("the shape loss runs on one device: use train.distribute none")
        self.shape_prior, self.shape_omega = prior, float(omega)

    def shape_sizes(self, images, masks):
        """The weighted Dice and shape losses of a batch, in inference mode (omega's estimate)."""
        if not hasattr(self, "_shape_sizes"):
            self._shape_sizes = tf.function(lambda x, y: objectives.shape_sizes(
                self.model, x, y, self.loss_weights["dice"], self.dice_mode, self.shape_prior))
        return {k: float(v) for k, v in self._shape_sizes(images, masks).items()}

    def run_step(self, step, *inputs):
        """Apply one update to numpy ``inputs`` (global batches); returns its loss terms (and
        ``total``) as Python floats."""
        if self.strategy is not None:
            inputs = [distribute.split_batch(self.strategy, np.asarray(x)) for x in inputs]
        total, terms = self._updates[step.name](*inputs)
        out = {name: float(value) for name, value in terms.items()}
        out["total"] = float(total)
        return out

    def predict_masks(self, images, batch_size=16):
        """Foreground probabilities in inference mode, as a numpy array."""
        outputs = [np.asarray(self._segment(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
        return np.concatenate(outputs).astype(np.float32)

    def inspect(self, images):
        """Anatomy, reconstruction (own z, mean mode) and masks in inference mode, as numpy."""
        out = self._inspect(images)
        return {k: np.asarray(out[k], dtype=np.float32) for k in ("anatomy", "reconstruction", "masks")}

    # checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, iteration, state):
        """Save weights, optimiser slots and the schedule's numpy ``state`` (atomically)."""
        directory = self.run_dir / "checkpoints"
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / f"state-{iteration}.npz") as tmp:
            np.savez(tmp, **state)
        self._manager.save(checkpoint_number=iteration)
        kept = {int(re.search(r"ckpt-(\d+)$", p).group(1)) for p in self._manager.checkpoints}
        for old in directory.glob("state-*.npz"):
            match = re.fullmatch(r"state-(\d+)\.npz", old.name)
            if match and int(match.group(1)) not in kept:
                old.unlink()

    def restore_latest(self):
        """Restore the latest checkpoint of ``resume_dir``; returns its numpy state, or None if
        there is none."""
        if self._manager is None:
            return None
        directory = self.resume_dir / "checkpoints"
        path = tf.train.latest_checkpoint(str(directory))
        if path is None:
            if any(directory.glob("ckpt-*.npz")):
                raise DataError(f"{self.resume_dir}: its checkpoints were written by the JAX engine; "
                                "resume it with --backend jax")
            return None
        iteration = int(re.search(r"ckpt-(\d+)$", path).group(1))
        self._checkpoint.restore(path).assert_existing_objects_matched()
        with np.load(directory / f"state-{iteration}.npz") as data:
            return {k: data[k] for k in data.files}

    def save_best(self, iteration):
        self._best_manager.save(checkpoint_number=iteration)

    def restore_best(self):
        """Load the best validation weights into the model; False when none was saved."""
        if self._best_manager is None or self._best_manager.latest_checkpoint is None:
            return False
        tf.train.Checkpoint(**self._tracked(optimizers=False)).restore(
            self._best_manager.latest_checkpoint).assert_existing_objects_matched()
        return True

    # summaries ---------------------------------------------------------------------------
    def _summary_writer(self):
        if self._writer is None and self.run_dir is not None:
            self._writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard"))
        return self._writer

    def log_scalars(self, values, step):
        writer = self._summary_writer()
        if writer is None:
            return
        with writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, value, step=step)

    def log_images(self, images, step):
        """``images``: name -> (N, H, W, 1 or 3) float arrays in [0, 1]."""
        writer = self._summary_writer()
        if writer is None:
            return
        with writer.as_default():
            for name, value in images.items():
                tf.summary.image(name, value, step=step, max_outputs=len(value))
        writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
