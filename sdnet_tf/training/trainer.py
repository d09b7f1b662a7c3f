"""SDNet as a task of the one training loop (``loop.Loop``): its schedule, fake-mask pool,
validation, best weights and image summaries.

Backend-agnostic: everything that touches gradients is delegated to an engine, the one of
``train.backend`` (``engines.sdnet_engine``); the run's files are ``run_files.RunFiles``,
the same on both backends, so a run begun on one resumes on the other.
"""

import dataclasses
import logging
import math
from pathlib import Path

import keras
import numpy as np

from sdnet_infer.labels import SDNET_CHANNELS
from sdnet_tf.atomic import atomic_path, write_json
from sdnet_tf.config import save_config
from sdnet_tf.data.arrays import DataError
from sdnet_tf.losses import dice_coefficient
from sdnet_tf.training.averaging import WeightAverage, validation_weights
from sdnet_tf.training.batchnorm import batchnorm_layers, recalibrate, recalibration_batches
from sdnet_tf.training.engines import sdnet_engine, stateful_compiler
from sdnet_tf.training.guard import NonFiniteError
from sdnet_tf.training.loop import Loop, Task
from sdnet_tf.training.run_files import RunFiles, network_variables, optimizer_variables
from sdnet_tf.training.schedule import BatchSampler, EarlyStopping, FakePool

log = logging.getLogger("sdnet_tf.train")


def validation_dice(predicted, masks):
    """Mean over images of the soft Dice pooled over the foreground channels."""
    return float(np.mean(np.asarray(dice_coefficient(predicted, masks))))


def _mask_rgb(masks):
    """(N, H, W, L) masks to (N, H, W, 3) colours in [0, 1]."""
    colours = np.array([[0.2, 0.8, 0.2], [0.9, 0.2, 0.2], [0.2, 0.4, 1.0]], np.float32)[: masks.shape[-1]]
    return np.clip(masks @ colours, 0.0, 1.0)


def _step_inputs(step, batch, fakes):
    if step.objective in ("supervised", "supervised_unet"):
        return batch["labelled_images"], batch["labelled_masks"]
    if step.objective in ("unsupervised", "unsupervised_unet"):
        return (batch["unlabelled_images"],)
    if step.objective == "z_reconstruction":
        return batch[f"{step.batch}_images"], batch[f"z_{step.batch}"]
    if step.objective == "discriminator":
        return batch["real_masks"], fakes
    raise ValueError(f"step {step.name}: unknown objective {step.objective!r}")


class Trainer(Task):
    """Runs the SDNet schedule on ``SDNetArrays`` with an engine, in the one training loop.

    One loop step is one iteration of the five updates (``schedule.sdnet_schedule``); an
    epoch is ``train.iterations_per_epoch`` iterations (default: one pass over the larger of
    the labelled and unlabelled sets); validation Dice picks the kept weights and feeds the
    early stopping.

    Args:
        model: a built ``SDNet``.
        arrays: the training and validation arrays.
        config: the resolved ``Config``.
        run_dir: the run directory (``run_files``' layout, and TensorBoard summaries on
            TensorFlow); created if needed.
        engine: an engine instance; the one of ``config.train.backend`` when None.
        progress: show progress bars.
        resume_dir: where ``resume`` reads checkpoints (default ``run_dir``; a multi-worker
            run's other workers resume from the chief's).
    """

    name = "sdnet"
    score = ("dice", "max")

    def __init__(self, model, arrays, config, run_dir, engine=None, progress=True, resume_dir=None):
        self.model = model
        self.arrays = arrays.check(config.model.input_size, config.model.num_classes)
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        t = config.train
        self.engine = engine if engine is not None else sdnet_engine(model, config, self.run_dir)
        self.schedule = self.engine.schedule  # without the discriminator step at adversarial weight 0
        d = config.data
        self.sampler = BatchSampler(arrays, t.batch_size, t.seed, augment=d.augment, rotation_range=d.rotation_range,
                                    nz=config.model.nz, spacing=d.spacing,
                                    resolution_range=d.resolution_range if d.resolution_augmentation else None)
        self.pool = FakePool(t.pool_size)
        self.average = None
        self._recalibration = None  # (BatchNorm layers, compiled forward pass): set at the first recalibration
        if t.weight_average:
            self.average = WeightAverage([v for net in model.networks().values() for v in net.trainable_variables],
                                         t.weight_average, compiler=stateful_compiler(keras.backend.backend()))
        self.stopper = EarlyStopping(t.patience, t.min_delta)
        self.iterations_per_epoch = t.iterations_per_epoch or self.sampler.iterations_per_epoch()
        self.files = RunFiles(self.run_dir, t.keep_checkpoints, resume_dir)
        self.loop = Loop(self, self.files, self.iterations_per_epoch, t.epochs * self.iterations_per_epoch,
                         log_every=t.log_every, checkpoint_every=t.checkpoint_every, progress=progress)

    # the loop's counters -----------------------------------------------------------------
    @property
    def iteration(self):
        """Iterations done."""
        return self.loop.state["step"]

    @iteration.setter
    def iteration(self, value):
        self.loop.state["step"] = int(value)

    @property
    def best_dice(self):
        """The best validation Dice so far (-inf before the first validation)."""
        best = self.loop.state["best"]
        return -math.inf if best is None else best

    @property
    def stopped(self):
        return self.loop.state["stopped"]

    # what a checkpoint keeps -------------------------------------------------------------
    def best_variables(self):
        return network_variables(self.model.networks())

    def variables(self):
        variables = {**self.best_variables(), **optimizer_variables(self.engine.optimizers)}
        if self.average is not None:
            variables.update({f"weight_average/{i:04d}": v for i, v in enumerate(self.average.variables())})
        return variables

    def state_arrays(self):
        return self.pool.state()

    def load_state_arrays(self, arrays):
        self.pool.load_state(arrays)

    def resume(self):
        """Restore the latest checkpoint of the run directory; returns the iteration reached.

        A run written before checkpoints were ``.npz`` files (TensorFlow checkpoints and
        ``state-<i>.npz``) is read once on the TensorFlow engine and goes on in the new form.
        """
        if self.files.latest() is None and (self.files.resume_dir / "checkpoints" / "checkpoint").is_file():
            self._resume_tensorflow_checkpoint()
            log.info("resumed %s at iteration %d", self.run_dir, self.iteration)
        else:
            self.loop.resume()  # which logs the checkpoint it read
        return self.iteration

    def _resume_tensorflow_checkpoint(self):
        directory = self.files.resume_dir / "checkpoints"
        if not hasattr(self.engine, "restore_tensorflow_checkpoint"):
            raise DataError(f"{self.files.resume_dir}: its checkpoints are TensorFlow checkpoints of an earlier "
                            "version; resume it with --backend tensorflow once, which rewrites them")
        old = self.engine.restore_tensorflow_checkpoint(self.variables(), directory)
        iteration = int(old["iteration"])
        best = float(old["best_dice"])
        self.loop.state.update(step=iteration, epoch=iteration // self.iterations_per_epoch,
                               best=best if math.isfinite(best) else None, stopped=bool(old["stopped"]),
                               stopper={"best": float(old["stopper_best"]), "wait": int(old["stopper_wait"])})
        self.stopper.load_state(self.loop.state["stopper"])
        self.pool.load_state(old)
        if self.average is not None:
            if "weight_average_0000" not in old:
                raise DataError(f"{self.run_dir}: its checkpoint has no weight average; resume it with "
                                "train.weight_average 0, as it was trained")
            self.average.load_state(old)
        model_file = self.files.resume_dir / "model.keras"
        if model_file.is_file() and not (self.run_dir / "best.npz").is_file():
            # the best epoch's weights were a TensorFlow checkpoint too; model.keras holds them
            import keras

            kept = keras.models.load_model(model_file)
            self.files.save_best(network_variables(kept.networks()), self.files.best())

    # one iteration -----------------------------------------------------------------------
    def _run_iteration(self, iteration):
        batch = self.sampler.batches(iteration)
        results = {}
        for step in self.schedule:
            fakes = None
            if step.objective == "discriminator":
                self.pool.add(self.engine.predict_masks(batch["discriminator_images"]))
                fakes = self.pool.sample(self.config.train.batch_size, self.sampler.pool_rng(iteration))
                batch = dict(batch, real_masks=batch["real_masks"][: len(fakes)])
            results[step.name] = self.engine.run_step(step, *_step_inputs(step, batch, fakes))
        return results

    def train_iteration(self):
        """Run the five steps of the next iteration outside the loop; returns the loss terms by step."""
        results = self._run_iteration(self.iteration)
        self.after_step()
        self.iteration += 1
        return results

    def batches(self, epoch, start, stop):
        return range(start, stop)  # each iteration's batches are drawn from (seed, iteration)

    def step(self, iteration, step):
        results = self._run_iteration(iteration)
        terms = {f"{name}/{term}": value for name, terms in results.items() for term, value in terms.items()}
        bad = [f"{name} = {value}" for name, value in terms.items() if not math.isfinite(value)]
        if bad:  # the weights are spoilt: stop before a checkpoint keeps them
            raise NonFiniteError(f"{self.run_dir}: a non-finite loss at iteration {iteration + 1} ({', '.join(bad[:3])}); "
                                 "training stopped, the last checkpoint (before it) is kept: lower "
                                 "train.learning_rate, or check the data and the loss settings")
        return terms

    def after_step(self):
        if self.average is not None:
            self.average.update()

    def postfix(self, terms):
        shown = {"dice": "supervised/dice", "rec": "supervised/reconstruction", "adv": "unsupervised/adversarial"}
        return {name: f"{terms[key]:.3f}" for name, key in shown.items() if key in terms}

    def log_scalars(self, step, values):
        self.engine.log_scalars(values, step)

    def epoch_message(self, epoch, epochs, state, metrics, means, seconds, better):
        return (f"epoch {epoch}: val Dice {metrics['dice']:.4f}{' (best)' if better else ''}, "
                f"sup Dice loss {means.get('supervised/dice', float('nan')):.4f}, "
                f"rec {means.get('supervised/reconstruction', float('nan')):.4f}, {seconds:.1f} s")

    # the loop ----------------------------------------------------------------------------
    def fit(self, max_iterations=None):
        """Train until the epoch limit, early stopping, or ``max_iterations`` in total.

        Returns a dict with the iteration reached, the best validation Dice and whether early
        stopping fired. The run can be resumed from its last checkpoint.
        """
        # written once the run has resumed (or starts): a resume refused for another model
        # leaves the run's config.yaml as it was
        save_config(self.config, self.run_dir / "config.yaml")
        self.loop.run(stop_at=max_iterations)
        return {"iteration": self.iteration, "best_dice": self.best_dice, "stopped_early": self.stopped}

    def save_checkpoint(self):
        """Write a checkpoint of the current iteration."""
        self.loop.save_checkpoint()

    # validation --------------------------------------------------------------------------
    def around_validation(self, state):
        # validation, the kept weights and the images are of the averaged weights when
        # train.weight_average is set; training goes on from the raw ones
        t = self.config.train
        return validation_weights(self._model_variables(), self.average,
                                  self.recalibrate_batchnorm if t.batchnorm_recalibration else None)

    def validate(self):
        t, a = self.config.train, self.arrays
        predicted = self.engine.predict_masks(a.validation_images, t.validation_batch_size)
        dice = validation_dice(predicted, a.validation_masks)
        self._log_images()
        return {"dice": dice, "loss": 1.0 - dice}

    def best_record(self, epoch, step, metrics):
        return {"epoch": epoch, "iteration": step, "val_dice": float(metrics["dice"])}

    def on_best(self, record):
        """Write the best weights so far as ``model.keras`` too (atomically), so a run still
        training, or stopped, can be used for prediction, evaluation, export and reports
        (``sdnet_tf.inference.load_run`` says which epoch)."""
        with atomic_path(self.run_dir / "model.keras") as tmp:
            self.model.save(tmp)

    def _model_variables(self):
        return [v for net in self.model.networks().values() for v in net.variables]

    def recalibrate_batchnorm(self):
        """Recompute the BatchNorm statistics of the anatomy encoder, the modality encoder and
        the segmentor with the current weights from ``train.batchnorm_recalibration`` batches of
        unaugmented training images (labelled and unlabelled), drawn as a function of (seed,
        iteration) so a resumed run draws the same ones (``batchnorm.recalibrate``)."""
        t, a = self.config.train, self.arrays
        labelled = len(a.labelled_images)
        rng = np.random.default_rng([t.seed, self.iteration, 2])
        indices = recalibration_batches(np.arange(labelled + len(a.unlabelled_images)), t.batchnorm_recalibration,
                                        t.validation_batch_size, rng)

        def images(index):
            return np.concatenate([a.labelled_images[index[index < labelled]],
                                   a.unlabelled_images[index[index >= labelled] - labelled]])

        if self._recalibration is None:  # the layers, and the forward pass compiled once (traced at its first call)
            networks = self._batchnorm_networks()
            layers = batchnorm_layers(*networks)
            moving = [v for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
            forward = stateful_compiler(keras.backend.backend())(
                self._batchnorm_forward, [v for net in networks for v in net.variables], moving)
            self._recalibration = layers, forward
        layers, forward = self._recalibration
        return recalibrate(forward, layers, (images(index) for index in indices), compiled=True)

    def _batchnorm_networks(self):
        return self.model.anatomy_encoder, self.model.modality_encoder, self.model.segmentor

    def _batchnorm_forward(self, x):
        anatomy, _, _, _ = self.model.decompose(x, training=True, sample=False)
        self.model.segmentor(anatomy, training=True)

    def _log_images(self):
        n = self.config.train.image_summaries
        if n <= 0:
            return
        images = self.arrays.validation_images[:n]
        self.engine.log_images({"input": (images + 1.0) / 2.0, **self._summary_images(images),
                                "true_masks": _mask_rgb(self.arrays.validation_masks[:n])}, self.iteration)

    def _summary_images(self, images):
        """The model's own image summaries of validation ``images``: name -> (n, H, W, 1 or 3) in [0, 1]."""
        out = self.engine.inspect(images)
        anatomy = out["anatomy"]  # (n, H, W, C) -> channels side by side
        return {"reconstruction": np.clip((out["reconstruction"] + 1.0) / 2.0, 0.0, 1.0),
                "anatomy_channels": np.concatenate([anatomy[..., c:c + 1] for c in range(anatomy.shape[-1])], axis=2),
                "predicted_masks": _mask_rgb(out["masks"])}

    def finish(self):
        """Load the best validation weights, save ``model.keras`` atomically, write a summary."""
        restored = self.files.load_best(self.best_variables())
        with atomic_path(self.run_dir / "model.keras") as tmp:
            self.model.save(tmp)
        # complete: the schedule ran to its end or early stopping ended it; false for a run
        # stopped by max_iterations (--max-iterations), which the same command resumes
        summary = {"iteration": self.iteration, "best_val_dice": self.best_dice,
                   "stopped_early": self.stopped, "weights": "best" if restored else "last",
                   "complete": bool(self.stopped or self.iteration >= self.loop.total_steps)}
        write_json(self.run_dir / "summary.json", summary)
        self.engine.close()
        return summary


class Trainer2018(Trainer):
    """The MICCAI 2018 precursor (``models.SDNet2018``) in the same loop, run files and validation.

    Its masks are the myocardium channel of SDNet's arrays. One iteration is its code's three
    updates (``schedule.SDNET2018_SCHEDULE``): the unlabelled and the labelled generator steps,
    then both discriminators. The discriminators' fakes come, as in that code, from one pool of
    the latest ``train.pool_size`` items that holds fake masks and fake images together (the code
    adds both to one pool, noting that it regularises the mask discriminator early on): the
    segmentations of the iteration's discriminator images, then the iteration's true labelled
    masks decoded with those images' z. The real masks are drawn from the labelled batch's
    masks and masks of the whole training split; the real images are the discriminator images.
    """

    name = "sdnet2018"

    def __init__(self, model, arrays, config, run_dir, engine=None, progress=True, resume_dir=None):
        myo = SDNET_CHANNELS.index("MYO")
        arrays = dataclasses.replace(arrays, **{name: getattr(arrays, name)[..., myo:myo + 1]
                                                for name in ("labelled_masks", "real_masks", "validation_masks")})
        super().__init__(model, arrays, config, run_dir, engine=engine, progress=progress, resume_dir=resume_dir)

    def _run_iteration(self, iteration):
        batch = self.sampler.batches(iteration)
        size = self.config.train.batch_size
        results = {}
        for step in self.schedule:
            if step.objective == "unsupervised_2018":
                inputs = (batch["unlabelled_images"],)
            elif step.objective == "supervised_2018":
                inputs = (batch["labelled_images"], batch["labelled_masks"])
            else:
                rng = self.sampler.pool_rng(iteration)
                images, masks = batch["discriminator_images"], batch["labelled_masks"]
                self.pool.add(self.engine.predict_masks(images))
                fake_masks = self.pool.sample(size, rng)
                self.pool.add(self.engine.infer("fake_images_2018", images, masks))
                fake_images = self.pool.sample(size, rng)
                candidates = np.concatenate([masks, batch["real_masks"]])
                real_masks = candidates[rng.choice(len(candidates), size=len(fake_masks), replace=False)]
                inputs = (real_masks, fake_masks, images[: len(fake_images)], fake_images)
            results[step.name] = self.engine.run_step(step, *inputs)
        return results

    def _batchnorm_networks(self):
        return self.model.decomposer, self.model.reconstructor

    def _batchnorm_forward(self, x):
        mask, z = self.model.decompose(x, training=True)
        self.model.reconstruct(mask, z, training=True)


class TrainerUNet(Trainer):
    """The U-Net baselines (``models.UNetGAN``) in SDNet's loop, batches, fake-mask pool and
    validation: one iteration is the supervised Dice step on the labelled batch, then, with
    ``loss.adversarial`` > 0 (the GAN baseline), the adversarial step on the unlabelled batch
    and the discriminator step on the pool's fakes, as SDNet's (``schedule.unet_gan_schedule``).
    BatchNorm recalibration and the image summaries are of the U-Net."""

    name = "unet_gan"

    def _batchnorm_networks(self):
        return (self.model.unet,)

    def _batchnorm_forward(self, x):
        self.model.unet(x, training=True)

    def epoch_message(self, epoch, epochs, state, metrics, means, seconds, better):
        adversarial = means.get("unsupervised/adversarial")
        return (f"epoch {epoch}: val Dice {metrics['dice']:.4f}{' (best)' if better else ''}, "
                f"sup Dice loss {means.get('supervised/dice', float('nan')):.4f}"
                + (f", adv {adversarial:.4f}" if adversarial is not None else "") + f", {seconds:.1f} s")

    def _summary_images(self, images):
        return {"predicted_masks": _mask_rgb(self.engine.predict_masks(images))}
