"""The training loop of every model kind: SDNet, the shape priors and the U-Net baseline.

One loop of epochs of steps (an SDNet step is one iteration of its five updates) with the
same hooks for every kind: resume from the newest checkpoint, a progress bar per epoch,
the training terms every ``log_every`` steps, checkpoints every ``checkpoint_every`` steps
and at each epoch end, validation at each epoch end (inside the kind's validation weights),
the best epoch's weights, early stopping, the history row and the log line. What a kind
trains and how it is scored is a ``Task``; the gradient mechanics are in the engines, the
files in ``run_files``. Backend-free.
"""

import contextlib
import logging
import time

import numpy as np
from tqdm.auto import tqdm

from sdnet_tf.data.arrays import DataError, UnreadableFile

log = logging.getLogger("sdnet_tf.train")


class Task:
    """What the loop trains. Subclasses give ``name``, ``variables``, ``best_variables``,
    ``batches``, ``step`` and ``validate``; the other hooks are optional.

    Attributes:
        name: the kind, for the progress bar and the log ("sdnet", "nvae", "unet", ...).
        score: ``(metric, "max" | "min")``: which validation metric picks the best epoch.
        stopper: an ``EarlyStopping`` fed ``1 - metric`` ("max") or the metric ("min"), or
            None for no early stopping.
    """

    name = "model"
    score = ("loss", "min")
    stopper = None

    def variables(self):
        """``{name: keras.Variable}``: everything a checkpoint keeps."""
        raise NotImplementedError

    def best_variables(self):
        """``{name: keras.Variable}``: what ``best.npz`` keeps (the networks)."""
        raise NotImplementedError

    def batches(self, epoch, start, stop):
        """The inputs of steps ``start`` to ``stop`` (global step numbers) of ``epoch``."""
        raise NotImplementedError

    def step(self, inputs, step):
        """One training step on ``inputs``; returns ``{term: float}`` (``skipped`` 1.0 when
        a guard dropped it)."""
        raise NotImplementedError

    def validate(self):
        """``{metric: float}`` on the validation set."""
        raise NotImplementedError

    def around_validation(self, state):
        """A context manager around validation and the saving of the best weights."""
        return contextlib.nullcontext()

    def best_record(self, epoch, step, metrics):
        """The ``best.json`` record of a new best epoch."""
        return {"epoch": epoch, "step": step, **metrics}

    def on_best(self, record):
        """Called after ``best.npz`` and ``best.json`` are written (SDNet writes ``model.keras``)."""

    def epoch_row(self, state):
        """Extra columns of an epoch's history row."""
        return {}

    def state_arrays(self):
        """Numpy state for the checkpoint (``{key: array}``)."""
        return {}

    def load_state_arrays(self, arrays):
        """Restore what ``state_arrays`` returned."""

    def after_step(self):
        """Called after each step (the weight average)."""

    def log_scalars(self, step, values):
        """Called with what goes to ``scalars.jsonl`` (TensorBoard mirrors it on TensorFlow)."""

    def epoch_message(self, epoch, epochs, state, metrics, means, seconds, better):
        """The log line of an epoch."""
        return (f"{self.name} epoch {epoch}/{epochs}: step {state['step']}, {seconds:.1f} s, validation "
                + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + (" (best)" if better else ""))

    def postfix(self, terms):
        """The progress bar's figures for one step's terms."""
        return {"loss": f"{terms['total']:.4g}"} if "total" in terms else {}


def new_state():
    """The loop's counters before the first step."""
    return {"epoch": 0, "step": 0, "best": None, "best_epoch": None, "skipped": 0, "stopped": False,
            "stopper": None}


class Loop:
    """Runs a ``Task`` for ``total_steps`` steps of ``steps_per_epoch``, resumably.

    Args:
        task: the ``Task``.
        files: the run's ``RunFiles``.
        steps_per_epoch: steps between validations.
        total_steps: the planned steps; a last partial epoch is validated at its end.
        log_every: steps between lines of ``scalars.jsonl`` (0: none).
        checkpoint_every: steps between checkpoints inside an epoch (0: at epoch ends only).
        progress: show a progress bar per epoch.
    """

    def __init__(self, task, files, steps_per_epoch, total_steps, log_every=0, checkpoint_every=0, progress=True):
        self.task = task
        self.files = files
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = int(total_steps)
        self.epochs = -(-self.total_steps // self.steps_per_epoch)
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self._stepped = False  # whether this process has run a step yet (the first one compiles)
        self.progress = progress
        self.state = new_state()

    # state -------------------------------------------------------------------------------
    def resume(self):
        """Restore the newest readable checkpoint, if any; returns the step reached.

        A damaged newest checkpoint (a truncated or corrupted file) is skipped with a warning
        for the one before it; a checkpoint of another model is an error (``DataError``).
        """
        candidates = self.files.checkpoints_newest_first()
        latest = None
        for path in candidates:
            try:
                loop, arrays = self.files.restore(path, self.task.variables())
            except UnreadableFile as error:
                log.warning("%s; trying the checkpoint before it", error)
                continue
            latest = path
            break
        else:
            if candidates:
                raise DataError(f"{self.files.resume_dir / 'checkpoints'}: no readable checkpoint "
                                f"({len(candidates)} damaged); move the folder away to start again")
        if latest is not None:
            self.state = {**new_state(), **loop}
            if self.task.stopper is not None and self.state["stopper"] is not None:
                self.task.stopper.load_state(self.state["stopper"])
            self.task.load_state_arrays(arrays)
            log.info("resumed %s from %s (epoch %d, step %d)", self.task.name, latest, self.state["epoch"],
                     self.state["step"])
        return self.state["step"]

    def save_checkpoint(self):
        if self.task.stopper is not None:
            self.state["stopper"] = self.task.stopper.state()
        self.files.save_checkpoint(self.state["step"], self.task.variables(), self.state, self.task.state_arrays())

    # the loop ----------------------------------------------------------------------------
    def run(self, stop_at=None):
        """Train to the end of the schedule, early stopping, or ``stop_at`` steps in all
        (without validating there, as a run killed at that step); returns the loop state.
        A checkpoint is written whenever the loop returns."""
        total = self.total_steps if stop_at is None else min(self.total_steps, stop_at)
        state, task = self.state, self.task
        if state["step"] and state["step"] >= total and not state["stopped"]:
            # a resumed run asked for no more than it has done (e.g. --epochs below the epochs done)
            log.info("%s: %d steps (epoch %d) done already, at or past the %d asked for; nothing to train",
                     task.name, state["step"], state["step"] // self.steps_per_epoch, total)
        while state["step"] < total and not state["stopped"]:
            epoch = state["step"] // self.steps_per_epoch
            epoch_end = min((epoch + 1) * self.steps_per_epoch, self.total_steps)
            stop = min(epoch_end, total)
            sums, count, tick = {}, 0, time.perf_counter()
            bar = tqdm(total=stop - state["step"], desc=f"{task.name} epoch {epoch + 1}/{self.epochs}",
                       unit="step", disable=not self.progress, leave=False, dynamic_ncols=True)
            for inputs in task.batches(epoch, state["step"], stop):
                first = not self._stepped
                if first:  # the first step of a process traces (and with XLA compiles) every update
                    bar.set_postfix_str("first step: tracing and compiling")
                    started = time.perf_counter()
                terms = task.step(inputs, state["step"])
                if first:
                    self._stepped = True
                    log.info("%s: first step in %.1f s (tracing and compiling the updates)", task.name,
                             time.perf_counter() - started)
                state["step"] += 1
                state["skipped"] += int(terms.get("skipped", 0))
                task.after_step()
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                if self.log_every and state["step"] % self.log_every == 0:
                    self._scalars({f"train/{k}": v for k, v in terms.items()})
                bar.update(1)
                bar.set_postfix(task.postfix(terms))
                if self.checkpoint_every and state["step"] % self.checkpoint_every == 0 and state["step"] < stop:
                    self.save_checkpoint()
            bar.close()
            if state["step"] == epoch_end:
                self._end_epoch(epoch, {k: v / max(count, 1) for k, v in sums.items()},
                                time.perf_counter() - tick)
            self.save_checkpoint()
        return state

    def _scalars(self, values):
        self.files.log_scalars(self.state["step"], values)
        self.task.log_scalars(self.state["step"], values)

    def _end_epoch(self, epoch, means, seconds):
        state, task = self.state, self.task
        key, mode = task.score
        with task.around_validation(state):
            metrics = task.validate()
            score = float(metrics[key])
            better = np.isfinite(score) and (state["best"] is None or
                                             (score < state["best"] if mode == "min" else score > state["best"]))
            if better:
                state["best"], state["best_epoch"] = score, epoch + 1
                record = task.best_record(epoch + 1, state["step"], metrics)
                self.files.save_best(task.best_variables(), record)
                task.on_best(record)
        state["epoch"] = epoch + 1
        if task.stopper is not None:
            state["stopped"] = bool(task.stopper.update(1.0 - score if mode == "max" else score))
        row = {"epoch": epoch + 1, "step": state["step"], "seconds": round(seconds, 3),
               **{f"val_{k}": v for k, v in metrics.items()},
               **{f"train_{k}": round(v, 6) for k, v in means.items()}, **task.epoch_row(state)}
        self.files.append_history(row)
        self._scalars({**{f"validation/{k}": v for k, v in metrics.items()},
                       **{f"epoch/{k}": v for k, v in means.items()}})
        log.info("%s", task.epoch_message(epoch + 1, self.epochs, state, metrics, means, seconds, better))
        if state["stopped"]:
            log.info("early stopping after epoch %d (no improvement of %.3g for %d epochs)",
                     epoch + 1, task.stopper.min_delta, task.stopper.patience)
