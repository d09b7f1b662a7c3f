"""The files of one training run, the same for every model kind and both backends.

A run directory holds:

- ``config.yaml`` (the resolved config) and ``data.json`` (patients and slice counts);
- ``checkpoints/ckpt-<step>.npz``: one file per checkpoint, written atomically, the newest
  ``keep`` kept. Its arrays are ``variables/<name>`` (every Keras variable the run changes:
  the networks' weights and statistics, the optimisers' slots, the random-number states,
  the weight average, the spectral vectors), ``arrays/<key>`` (the loop's numpy state: the
  fake-mask pool, the early stopping) and ``loop`` (the loop's counters as JSON). A killed
  run resumes from the newest one, on either backend: values are numpy arrays named by a
  rule that does not depend on the backend or on Keras' process-wide layer counters;
- ``best.npz`` + ``best.json``: the networks' variables at the best validation epoch and
  that epoch's record;
- ``history.csv``: one row per epoch (``epoch``, ``step``, ``seconds``, ``val_<metric>``,
  ``train_<term>``), rewritten atomically so a resumed run drops the rows of epochs it
  repeats;
- ``scalars.jsonl``: the training terms every ``log_every`` steps, one JSON object a line;
- ``train.log`` and, at the end, ``summary.json``.

Backend-free: numpy, json and the runtime's atomic writer only.
"""

import csv
import json
import re
from pathlib import Path

import numpy as np

from sdnet_tf.atomic import atomic_path, write_json
from sdnet_tf.data.arrays import DataError, read_npz

_CHECKPOINT = re.compile(r"ckpt-(\d+)\.npz")


def network_variables(networks):
    """``{"<network>/<i>": variable}`` for a dict of networks, numbered in creation order.

    A network's constructor and ``build`` fix the order of its variables, so these names are
    the same in every process and on both backends (Keras' own variable paths carry layer
    names from process-wide counters, which are not).
    """
    return {f"{name}/{i:04d}": variable for name, network in networks.items()
            for i, variable in enumerate(network.variables)}


def optimizer_variables(optimizers):
    """``{"optimizer_<name>/<i>": variable}`` for a dict of built optimisers."""
    return {f"optimizer_{name}/{i:04d}": variable for name, optimizer in optimizers.items()
            for i, variable in enumerate(optimizer.variables)}


def _assign(variables, saved, source):
    """Assign ``saved[name]`` to every variable of ``variables``, checking names and shapes."""
    missing = [name for name in variables if name not in saved]
    if missing:
        raise DataError(f"{source}: no values for {len(missing)} variables ({', '.join(missing[:3])}, ...); "
                        "it was written for a different model or configuration")
    for name, variable in variables.items():
        value = saved[name]
        if tuple(value.shape) != tuple(variable.shape):
            raise DataError(f"{source}: {name} ({variable.path}) has shape {value.shape}, "
                            f"expected {tuple(variable.shape)}")
        variable.assign(value)


class RunFiles:
    """Checkpoints, best weights, history and scalars of one run directory.

    Args:
        run_dir: the run directory (created when a file is first written).
        keep: how many checkpoints to keep.
        resume_dir: where ``latest`` looks for checkpoints (default ``run_dir``): the other
            workers of a multi-worker run write to a directory of their own but resume from
            the chief's.
    """

    def __init__(self, run_dir, keep=2, resume_dir=None):
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.checkpoints = self.run_dir / "checkpoints"
        self.resume_dir = Path(resume_dir) if resume_dir is not None else self.run_dir

    # checkpoints -------------------------------------------------------------------------
    def _numbered(self, directory):
        if not directory.is_dir():
            return {}
        return {int(m.group(1)): p for p in directory.iterdir() if (m := _CHECKPOINT.fullmatch(p.name))}

    def checkpoints_newest_first(self):
        """Every checkpoint of ``resume_dir``, the newest first."""
        found = self._numbered(self.resume_dir / "checkpoints")
        return [found[k] for k in sorted(found, reverse=True)]

    def latest(self):
        """The newest checkpoint of ``resume_dir``, or None."""
        return next(iter(self.checkpoints_newest_first()), None)

    def save_checkpoint(self, step, variables, loop, arrays=None):
        """Write ``checkpoints/ckpt-<step>.npz`` atomically and drop all but the newest ``keep``.

        Args:
            step: the number of steps (SDNet: iterations) done.
            variables: ``{name: keras.Variable}``.
            loop: the loop's counters, a JSON-serialisable dict.
            arrays: ``{key: numpy array}``, other state.
        """
        saved = {f"variables/{name}": np.asarray(v.value) for name, v in variables.items()}
        saved.update({f"arrays/{key}": np.asarray(value) for key, value in (arrays or {}).items()})
        saved["loop"] = np.frombuffer(json.dumps(loop).encode(), np.uint8)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.checkpoints / f"ckpt-{step}.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **saved)
        kept = sorted(self._numbered(self.checkpoints).items())
        for _, old in kept[:-self.keep]:
            old.unlink()

    def restore(self, path, variables):
        """Assign a checkpoint's values to ``variables``; returns ``(loop, arrays)``.

        Raises:
            DataError: the file is unreadable, or holds other variables than ``variables``.
        """
        saved = read_npz(path)
        if "loop" not in saved:
            raise DataError(f"{path}: not a checkpoint of this version (no loop state)")
        _assign(variables, {k[len("variables/"):]: v for k, v in saved.items() if k.startswith("variables/")},
                str(path))
        arrays = {k[len("arrays/"):]: v for k, v in saved.items() if k.startswith("arrays/")}
        return json.loads(bytes(saved["loop"]).decode()), arrays

    # best weights ------------------------------------------------------------------------
    def save_best(self, variables, record):
        """Write ``best.npz`` (``{name: value}``) and then ``best.json`` (``record``), each atomically."""
        with atomic_path(self.run_dir / "best.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **{name: np.asarray(v.value) for name, v in variables.items()})
        write_json(self.run_dir / "best.json", record)

    def load_best(self, variables):
        """Assign ``best.npz`` to ``variables``; False when there is none yet."""
        path = self.run_dir / "best.npz"
        if not path.is_file():
            return False
        _assign(variables, read_npz(path), str(path))
        return True

    def best(self):
        """The best epoch's record (``best.json``), or {} before the first validation."""
        path = self.run_dir / "best.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    # logs --------------------------------------------------------------------------------
    def append_history(self, row):
        """Add one epoch's row to ``history.csv``, dropping rows of that epoch or later."""
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
        """Append ``{"step": step, name: value, ...}`` as one line of ``scalars.jsonl``."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "scalars.jsonl", "a") as handle:
            handle.write(json.dumps({"step": int(step), **{k: round(float(v), 6) for k, v in values.items()}})
                         + "\n")
