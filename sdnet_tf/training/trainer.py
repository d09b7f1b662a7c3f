"""The SDNet training loop: schedule, pool, validation, early stopping, checkpoints, logs.

Backend-agnostic: everything that touches gradients is delegated to an engine, the one of
``train.backend`` (``TFEngine`` for "tensorflow", ``JAXEngine`` for "jax").
"""

import csv
import logging
import math
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sdnet_tf.atomic import atomic_path, write_json
from sdnet_tf.config import save_config
from sdnet_tf.losses import dice_coefficient
from sdnet_tf.runtime import require_backend
from sdnet_tf.training.averaging import WeightAverage, validation_weights
from sdnet_tf.training.batchnorm import batchnorm_layers, recalibrate, recalibration_batches
from sdnet_tf.training.schedule import SDNET_SCHEDULE, BatchSampler, EarlyStopping, FakePool

log = logging.getLogger("sdnet_tf.train")


def validation_dice(predicted, masks):
    """Mean over images of the soft Dice pooled over the foreground channels."""
    return float(np.mean(np.asarray(dice_coefficient(predicted, masks))))


def _mask_rgb(masks):
    """(N, H, W, L) masks to (N, H, W, 3) colours in [0, 1]."""
    colours = np.array([[0.2, 0.8, 0.2], [0.9, 0.2, 0.2], [0.2, 0.4, 1.0]], np.float32)[: masks.shape[-1]]
    return np.clip(masks @ colours, 0.0, 1.0)




def make_engine(model, config, run_dir):
    """The engine of ``config.train.backend``, which must be the backend Keras runs on.

    Keras fixes its backend when it is first imported (``KERAS_BACKEND``), so the engine
    cannot switch it; a mismatch is refused rather than training on the other backend.
    """
    backend = config.train.backend
    require_backend(backend)
    if backend == "jax":
        from sdnet_tf.training.jax_engine import JAXEngine as Engine
    else:
        from sdnet_tf.training.tf_engine import TFEngine as Engine
    weights = {"kl": config.loss.kl, "dice": config.loss.dice, "adversarial": config.loss.adversarial,
               "reconstruction": config.loss.reconstruction, "z_reconstruction": config.loss.z_reconstruction}
    return Engine(model, SDNET_SCHEDULE, weights, config.train, dice_mode=config.loss.dice_mode, run_dir=run_dir)


def _step_inputs(step, batch, fakes):
    if step.objective == "supervised":
        return batch["labelled_images"], batch["labelled_masks"]
    if step.objective == "unsupervised":
        return (batch["unlabelled_images"],)
    if step.objective == "z_reconstruction":
        return batch[f"{step.batch}_images"], batch[f"z_{step.batch}"]
    if step.objective == "discriminator":
        return batch["real_masks"], fakes
    raise ValueError(f"step {step.name}: unknown objective {step.objective!r}")


class Trainer:
    """Runs the SDNet schedule on ``SDNetArrays`` with an engine.

    Args:
        model: a built ``SDNet``.
        arrays: the training and validation arrays.
        config: the resolved ``Config``.
        run_dir: the run directory (config, checkpoints, logs, TensorBoard); created if needed.
        engine: an engine instance; the one of ``config.train.backend`` when None.
        progress: show progress bars.
    """

    def __init__(self, model, arrays, config, run_dir, engine=None, progress=True):
        self.model = model
        self.arrays = arrays.check(config.model.input_size, config.model.num_classes)
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        t = config.train
        self.engine = engine if engine is not None else make_engine(model, config, self.run_dir)
        self.schedule = SDNET_SCHEDULE
        self.sampler = BatchSampler(arrays, t.batch_size, t.seed, augment=config.data.augment,
                                    rotation_range=config.data.rotation_range, nz=config.model.nz)
        self.pool = FakePool(t.pool_size)
        self.average = None
        if t.weight_average:
            self.average = WeightAverage([v for net in model.networks().values() for v in net.trainable_variables],
                                         t.weight_average)
        self.stopper = EarlyStopping(t.patience, t.min_delta)
        self.iterations_per_epoch = t.iterations_per_epoch or self.sampler.iterations_per_epoch()
        self.iteration = 0
        self.best_dice = -math.inf
        self.stopped = False
        save_config(config, self.run_dir / "config.yaml")

    # state -------------------------------------------------------------------------------
    def state(self):
        state = {"iteration": np.int64(self.iteration), "best_dice": np.float64(self.best_dice),
                 "stopped": np.bool_(self.stopped), "stopper_best": np.float64(self.stopper.best),
                 "stopper_wait": np.int64(self.stopper.wait)}
        state.update(self.pool.state())
        if self.average is not None:
            state.update(self.average.state())
        return state

    def load_state(self, state):
        self.iteration = int(state["iteration"])
        self.best_dice = float(state["best_dice"])
        self.stopped = bool(state["stopped"])
        self.stopper.load_state({"best": state["stopper_best"], "wait": state["stopper_wait"]})
        self.pool.load_state(state)
        if self.average is not None:
            if "weight_average_0000" not in state:
                raise ValueError(f"{self.run_dir}: its checkpoint has no weight average; resume it with "
                                 "train.weight_average 0, as it was trained")
            self.average.load_state(state)

    def resume(self):
        """Restore the latest checkpoint of the run directory; returns the iteration reached."""
        state = self.engine.restore_latest()
        if state is not None:
            self.load_state(state)
            log.info("resumed %s at iteration %d", self.run_dir, self.iteration)
        return self.iteration

    # one iteration -----------------------------------------------------------------------
    def train_iteration(self):
        """Run the five steps of one iteration; returns the loss terms by step."""
        batch = self.sampler.batches(self.iteration)
        results = {}
        for step in self.schedule:
            fakes = None
            if step.objective == "discriminator":
                self.pool.add(self.engine.predict_masks(batch["discriminator_images"]))
                fakes = self.pool.sample(self.config.train.batch_size, self.sampler.pool_rng(self.iteration))
                real = batch["real_masks"][: len(fakes)]
                batch = dict(batch, real_masks=real)
            results[step.name] = self.engine.run_step(step, *_step_inputs(step, batch, fakes))
        if self.average is not None:
            self.average.update()
        self.iteration += 1
        return results

    # the loop ----------------------------------------------------------------------------
    def fit(self, max_iterations=None):
        """Train until the epoch limit, early stopping, or ``max_iterations`` in total.

        Returns a dict with the iteration reached, the best validation Dice and whether early
        stopping fired. The run can be resumed from its last checkpoint.
        """
        t = self.config.train
        per_epoch = self.iterations_per_epoch
        total = t.epochs * per_epoch
        if max_iterations is not None:
            total = min(total, max_iterations)
        history_path = self.run_dir / "history.csv"
        while self.iteration < total and not self.stopped:
            epoch = self.iteration // per_epoch
            epoch_end = min((epoch + 1) * per_epoch, total)
            sums = {}
            count = 0
            start = time.perf_counter()
            bar = tqdm(total=epoch_end - self.iteration, desc=f"epoch {epoch + 1}/{t.epochs}", unit="it",
                       disable=not self.progress, leave=False, dynamic_ncols=True)
            while self.iteration < epoch_end:
                results = self.train_iteration()
                flat = {f"{step}/{name}": value for step, terms in results.items() for name, value in terms.items()}
                for key, value in flat.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                if t.log_every and self.iteration % t.log_every == 0:
                    self.engine.log_scalars({f"train/{k}": v for k, v in flat.items()}, self.iteration)
                bar.update(1)
                bar.set_postfix(dice=f"{results['supervised']['dice']:.3f}",
                                rec=f"{results['supervised']['reconstruction']:.3f}",
                                adv=f"{results['unsupervised']['adversarial']:.3f}")
                if t.checkpoint_every and self.iteration % t.checkpoint_every == 0 and self.iteration < epoch_end:
                    self.engine.save_checkpoint(self.iteration, self.state())
            bar.close()
            if self.iteration == (epoch + 1) * per_epoch:
                self._end_epoch(epoch, {k: v / max(count, 1) for k, v in sums.items()},
                                time.perf_counter() - start, history_path)
            self.engine.save_checkpoint(self.iteration, self.state())
        return {"iteration": self.iteration, "best_dice": self.best_dice, "stopped_early": self.stopped}

    def _end_epoch(self, epoch, means, seconds, history_path):
        t = self.config.train
        a = self.arrays
        # validation, the kept weights and the images are of the averaged weights when
        # train.weight_average is set; training goes on from the raw ones
        with validation_weights(self._model_variables(), self.average,
                                self.recalibrate_batchnorm if t.batchnorm_recalibration else None):
            predicted = self.engine.predict_masks(a.validation_images, t.validation_batch_size)
            dice = validation_dice(predicted, a.validation_masks)
            improved = dice > self.best_dice
            if improved:
                self.best_dice = dice
                self.engine.save_best(self.iteration)
                self._save_best_model(epoch + 1, dice)
            self._log_images()
        val_loss = 1.0 - dice
        self.stopped = self.stopper.update(val_loss)
        row = {"epoch": epoch + 1, "iteration": self.iteration, "seconds": round(seconds, 3),
               "val_dice": dice, "val_loss": val_loss, **means}
        self.engine.log_scalars({"validation/dice": dice, "validation/loss": val_loss,
                                 **{f"epoch/{k}": v for k, v in means.items()}}, self.iteration)
        new = not history_path.exists()
        with open(history_path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        message = (f"epoch {epoch + 1}: val Dice {dice:.4f}{' (best)' if improved else ''}, "
                   f"sup Dice loss {means.get('supervised/dice', float('nan')):.4f}, "
                   f"rec {means.get('supervised/reconstruction', float('nan')):.4f}, {seconds:.1f} s")
        log.info(message)
        if self.stopped:
            log.info("early stopping after epoch %d (no improvement of %.3g for %d epochs)",
                     epoch + 1, t.min_delta, t.patience)

    def _model_variables(self):
        return [v for net in self.model.networks().values() for v in net.variables]

    def recalibrate_batchnorm(self):
        """Recompute the BatchNorm statistics of the anatomy encoder, the modality encoder and
        the segmentor with the current weights from ``train.batchnorm_recalibration`` batches of
        unaugmented training images (labelled and unlabelled), drawn as a function of (seed,
        iteration) so a resumed run draws the same ones (``batchnorm.recalibrate``)."""
        t, a, model = self.config.train, self.arrays, self.model
        labelled = len(a.labelled_images)
        rng = np.random.default_rng([t.seed, self.iteration, 2])
        indices = recalibration_batches(np.arange(labelled + len(a.unlabelled_images)), t.batchnorm_recalibration,
                                        t.validation_batch_size, rng)

        def images(index):
            return np.concatenate([a.labelled_images[index[index < labelled]],
                                   a.unlabelled_images[index[index >= labelled] - labelled]])

        def forward(x):
            anatomy, _, _, _ = model.decompose(x, training=True, sample=False)
            model.segmentor(anatomy, training=True)

        layers = batchnorm_layers(model.anatomy_encoder, model.modality_encoder, model.segmentor)
        return recalibrate(forward, layers, (images(index) for index in indices))

    def _save_best_model(self, epoch, dice):
        """Write the best weights so far as ``model.keras`` and describe them in ``best.json``
        (both atomically), so a run still training, or stopped, can be used for prediction,
        evaluation, export and reports (``sdnet_tf.inference.load_run`` says which epoch)."""
        with atomic_path(self.run_dir / "model.keras") as tmp:
            self.model.save(tmp)
        write_json(self.run_dir / "best.json", {"epoch": epoch, "iteration": self.iteration,
                                                "val_dice": float(dice)})

    def _log_images(self):
        n = self.config.train.image_summaries
        if n <= 0:
            return
        a = self.arrays
        images = a.validation_images[:n]
        out = self.engine.inspect(images)
        anatomy = out["anatomy"]  # (n, H, W, C) -> channels side by side
        tiled = np.concatenate([anatomy[..., c:c + 1] for c in range(anatomy.shape[-1])], axis=2)
        self.engine.log_images({
            "input": (images + 1.0) / 2.0,
            "reconstruction": np.clip((out["reconstruction"] + 1.0) / 2.0, 0.0, 1.0),
            "anatomy_channels": tiled,
            "predicted_masks": _mask_rgb(out["masks"]),
            "true_masks": _mask_rgb(a.validation_masks[:n]),
        }, self.iteration)

    def finish(self):
        """Load the best validation weights, save ``model.keras`` atomically, write a summary."""
        restored = self.engine.restore_best()
        with atomic_path(self.run_dir / "model.keras") as tmp:
            self.model.save(tmp)
        summary = {"iteration": self.iteration, "best_val_dice": self.best_dice,
                   "stopped_early": self.stopped, "weights": "best" if restored else "last"}
        write_json(self.run_dir / "summary.json", summary)
        self.engine.close()
        return summary
