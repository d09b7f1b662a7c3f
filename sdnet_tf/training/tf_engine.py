"""TensorFlow engine: the gradient mechanics of the SDNet schedule.

The only module of the package with ``tf.function``, ``GradientTape``, ``tf.train`` and
``tf.summary``. What each step optimises and updates comes from ``schedule.Step`` and
``objectives``; this module turns a step into a compiled update.
"""

import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from sdnet_tf.atomic import atomic_path
from sdnet_tf.data.arrays import DataError
from sdnet_tf.training import objectives
from sdnet_tf.training.optimizers import make_optimizer
from sdnet_tf.training.schedule import OPTIMIZERS


class TFEngine:
    """Compiled SDNet updates, checkpoints and TensorBoard summaries with TensorFlow.

    Args:
        model: a built ``SDNet``.
        schedule: the steps (``schedule.SDNET_SCHEDULE``).
        loss_weights: dict with ``kl``, ``dice``, ``adversarial``, ``reconstruction``,
            ``z_reconstruction``.
        train_config: a ``TrainConfig`` (optimiser, precision, XLA, checkpoint settings).
        dice_mode: "pooled" or "per_class".
        run_dir: where checkpoints and TensorBoard events go; None for none.
    """

    def __init__(self, model, schedule, loss_weights, train_config, dice_mode="pooled", run_dir=None):
        self.model = model
        self.schedule = tuple(schedule)
        self.loss_weights = {k: float(v) for k, v in loss_weights.items()}
        self.config = train_config
        self.dice_mode = dice_mode
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
        # steps that differ only in their batch (the two z-reconstruction steps) share one
        # compiled update
        compiled = {}
        self._updates = {}
        for step in self.schedule:
            key = (step.objective, step.optimizer, step.trains)
            if key not in compiled:
                compiled[key] = self._compile_update(step)
            self._updates[step.name] = compiled[key]
        self._segment = tf.function(lambda x: objectives.segment_inference(self.model, x),
                                    jit_compile=train_config.jit_compile, reduce_retracing=True)
        self._inspect = tf.function(lambda x: self.model(x, training=False, sample=False))
        self.run_dir = Path(run_dir) if run_dir else None
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

        def update(*inputs):
            with tf.GradientTape() as tape:
                if step.objective == "supervised":
                    total, terms = objective(model, *inputs, weights, dice_mode=dice_mode)
                elif step.objective == "discriminator":
                    total, terms = objective(model, *inputs)
                else:
                    total, terms = objective(model, *inputs, weights)
                loss = optimizer.scale_loss(total) if scaled else total
            grads = tape.gradient(loss, variables)
            optimizer.apply(grads, variables)
            return total, terms

        return tf.function(update, jit_compile=self.config.jit_compile, reduce_retracing=True)

    def run_step(self, step, *inputs):
        """Apply one update; returns its loss terms (and ``total``) as Python floats."""
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
        """Restore the latest checkpoint; returns its numpy state, or None if there is none."""
        if self._manager is None or self._manager.latest_checkpoint is None:
            if self._manager is not None and any((self.run_dir / "checkpoints").glob("ckpt-*.npz")):
                raise DataError(f"{self.run_dir}: its checkpoints were written by the JAX engine; "
                                "resume it with --backend jax")
            return None
        path = self._manager.latest_checkpoint
        iteration = int(re.search(r"ckpt-(\d+)$", path).group(1))
        self._checkpoint.restore(path).assert_existing_objects_matched()
        with np.load(self.run_dir / "checkpoints" / f"state-{iteration}.npz") as data:
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
