#!/usr/bin/env python
"""Keep an unfinished training run in the repository, and put it back to resume it.

    python results/park_run.py park runs/nvae-acdc-thesis results/shape-priors/acdc/parked
    python results/park_run.py restore results/shape-priors/acdc/parked/nvae-acdc-thesis runs
    python results/park_run.py park --weights-only runs/nvae-acdc-thesis results/shape-priors/acdc/parked

A run folder (``runs/``) is not tracked by git, and a training that takes longer than one
machine is kept (the NVAE prior on the thesis' schedule: about 4.5 hours on 2 CPU cores) would
otherwise start again from nothing. ``park`` copies the minimum to resume it exactly (the
newest checkpoint, with the optimiser's state and the random state, plus the kept best weights
``best.npz`` / ``best.json``, the config, the data description, the history and the log) into
``DEST/NAME``; ``restore`` copies a parked run into ``RUNS/NAME`` unless that folder already holds
a checkpoint at or past the parked one. The training command then resumes it (``--resume`` is
the default) and draws the batches an uninterrupted run would have. Files are written
atomically (a copy beside the target, then a rename). A parked run is deleted from the
repository once its run has finished and its results are in.

``park --weights-only`` keeps a finished run that later runs need as it is used, not to train
on: its best weights and records without the checkpoint (a prior whose shape loss other
trainings load with ``--shape-prior``: 8 MB instead of 33 MB). ``restore`` puts it back unless
the folder already holds the same best weights (``best.json``).
"""

import argparse
import shutil
import sys
from pathlib import Path

from sdnet_tf.atomic import atomic_path
from sdnet_tf.training.run_files import RunFiles

KEPT = ("config.yaml", "data.json", "history.csv", "scalars.jsonl", "train.log", "best.npz", "best.json",
        "summary.json", "prior.yaml")


def newest_checkpoint(run_dir):
    """``(step, path)`` of the run's newest checkpoint (``RunFiles.latest``), or ``(None, None)``."""
    path = RunFiles(run_dir).latest()
    return (None, None) if path is None else (int(path.stem.removeprefix("ckpt-")), path)


def _copy(source, target):
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as partial:
        shutil.copyfile(source, partial)


def park(run_dir, dest, weights_only=False):
    run_dir = Path(run_dir)
    if weights_only:
        if not (run_dir / "best.npz").is_file() or not (run_dir / "best.json").is_file():
            sys.exit(f"{run_dir}: no best weights to park (best.npz and best.json)")
    else:
        step, checkpoint = newest_checkpoint(run_dir)
        if checkpoint is None:
            sys.exit(f"{run_dir}: no checkpoint to park")
    target = Path(dest) / run_dir.name
    if target.exists():
        shutil.rmtree(target)  # an older parking of the same run
    for name in KEPT:
        if (run_dir / name).is_file():
            _copy(run_dir / name, target / name)
    if weights_only:
        print(f"parked {run_dir}'s best weights in {target}")
        return
    _copy(checkpoint, target / "checkpoints" / checkpoint.name)
    print(f"parked {run_dir} at step {step} in {target}")


def restore(parked, runs):
    parked = Path(parked)
    target = Path(runs) / parked.name
    step, _ = newest_checkpoint(parked)
    if step is None:  # park --weights-only: the best weights and records
        if not (parked / "best.json").is_file():
            sys.exit(f"{parked}: no parked checkpoint or best weights")
        if (target / "best.json").is_file() and (target / "best.json").read_bytes() == (
                parked / "best.json").read_bytes():
            print(f"{target} already holds these best weights; nothing restored")
            return
    else:
        have, _ = newest_checkpoint(target)
        if have is not None and have >= step:
            print(f"{target} already holds step {have} (parked: {step}); nothing restored")
            return
    for source in parked.rglob("*"):
        if source.is_file():
            _copy(source, target / source.relative_to(parked))
    print(f"restored {parked} {'(best weights)' if step is None else f'at step {step}'} into {target}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("park", help="copy RUN_DIR's newest checkpoint and records into DEST/NAME")
    p.add_argument("run_dir", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--weights-only", action="store_true",
                   help="a finished run: its best weights and records, not the checkpoint")
    r = sub.add_parser("restore", help="copy a parked run into RUNS/NAME to resume it")
    r.add_argument("parked", type=Path)
    r.add_argument("runs", type=Path)
    args = parser.parse_args()
    if args.action == "park":
        park(args.run_dir, args.dest, weights_only=args.weights_only)
    else:
        restore(args.parked, args.runs)


if __name__ == "__main__":
    main()
