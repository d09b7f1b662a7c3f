#!/usr/bin/env python
"""Keep an unfinished training run in the repository, and put it back to resume it.

    python results/park_run.py park runs/nvae-acdc-thesis results/shape-priors/acdc/parked
    python results/park_run.py restore results/shape-priors/acdc/parked/nvae-acdc-thesis runs

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
"""

import argparse
import re
import shutil
import sys
from pathlib import Path

KEPT = ("config.yaml", "data.json", "history.csv", "scalars.jsonl", "train.log", "best.npz", "best.json",
        "summary.json", "prior.yaml")
STEP = re.compile(r"ckpt-(\d+)\.npz$")


def newest_checkpoint(run_dir):
    """``(step, path)`` of the run's newest checkpoint, or ``(None, None)``."""
    found = [(int(STEP.search(p.name).group(1)), p) for p in (Path(run_dir) / "checkpoints").glob("ckpt-*.npz")
             if STEP.search(p.name)]
    return max(found) if found else (None, None)


def _copy(source, target):
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    partial.replace(target)


def park(run_dir, dest):
    run_dir = Path(run_dir)
    step, checkpoint = newest_checkpoint(run_dir)
    if checkpoint is None:
        sys.exit(f"{run_dir}: no checkpoint to park")
    target = Path(dest) / run_dir.name
    if target.exists():
        shutil.rmtree(target)  # an older parking of the same run
    for name in KEPT:
        if (run_dir / name).is_file():
            _copy(run_dir / name, target / name)
    _copy(checkpoint, target / "checkpoints" / checkpoint.name)
    print(f"parked {run_dir} at step {step} in {target}")


def restore(parked, runs):
    parked = Path(parked)
    step, checkpoint = newest_checkpoint(parked)
    if checkpoint is None:
        sys.exit(f"{parked}: no parked checkpoint")
    target = Path(runs) / parked.name
    have, _ = newest_checkpoint(target)
    if have is not None and have >= step:
        print(f"{target} already holds step {have} (parked: {step}); nothing restored")
        return
    for source in parked.rglob("*"):
        if source.is_file():
            _copy(source, target / source.relative_to(parked))
    print(f"restored {parked} at step {step} into {target}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("park", help="copy RUN_DIR's newest checkpoint and records into DEST/NAME")
    p.add_argument("run_dir", type=Path)
    p.add_argument("dest", type=Path)
    r = sub.add_parser("restore", help="copy a parked run into RUNS/NAME to resume it")
    r.add_argument("parked", type=Path)
    r.add_argument("runs", type=Path)
    args = parser.parse_args()
    if args.action == "park":
        park(args.run_dir, args.dest)
    else:
        restore(args.parked, args.runs)


if __name__ == "__main__":
    main()
