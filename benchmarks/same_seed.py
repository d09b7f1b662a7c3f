"""Do runs with one seed give the same weights? A prior trained for a few steps ``--runs``
times (default 2) with the default kernels and as often with ``train.deterministic=true``, each
run in a fresh process, and every later run of a mode compared with its first, array by array.

    python benchmarks/same_seed.py --data /path/to/ACDC/training            # NVAE, 20 steps
    python benchmarks/same_seed.py --data phantom --config acnn-acdc --steps 10
    python benchmarks/same_seed.py --data DATA --env TF_ENABLE_ONEDNN_OPTS=0 --modes default
    python benchmarks/same_seed.py --data DATA --modes default --runs 4

Prints, per mode and later run, how many weight arrays of the last checkpoint differ from the
first run's, the largest absolute difference and the validation losses. The default kernels do
not part every pair: whether they do depends on how the threads are scheduled (README, Training, "Same
seed, same weights"). The runs go to a temporary folder, removed afterwards.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdnet_tf.atomic import write_text  # noqa: E402

MODES = {"default": [], "deterministic": ["--set", "train.deterministic=true"]}


def train(run_dir, args, mode, env):
    command = ["sdnet-tf", "prior", "train", args.kind, "-c", args.config, "--data", args.data, "--epochs", "1",
               "--set", f"train.steps_per_epoch={args.steps}", *MODES[mode],
               *[a for o in args.set for a in ("--set", o)], "-o", str(run_dir), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    checkpoint = run_dir / "checkpoints" / f"ckpt-{args.steps}.npz"
    loss = json.loads((run_dir / "best.json").read_text())["loss"]
    with np.load(checkpoint) as stored:
        return {k: stored[k] for k in stored.files if stored[k].dtype.kind == "f"}, loss, " ".join(command)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="an ACDC training folder, or 'phantom'")
    parser.add_argument("--kind", default="nvae", choices=("nvae", "acnn"))
    parser.add_argument("--config", default="nvae-acdc", help="a prior config (name in configs/ or path)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment of the runs")
    parser.add_argument("--runs", type=int, default=2, help="runs per mode (at least 2)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--out", help="also write the result here as JSON")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.runs < 2:
        parser.error("--runs must be at least 2: each later run is compared with the first")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **dict(e.split("=", 1) for e in args.env))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            a, loss_a, command = train(Path(tmp) / f"{mode}-1", args, mode, env)
            for run in range(2, args.runs + 1):
                b, loss_b, _ = train(Path(tmp) / f"{mode}-{run}", args, mode, env)
                differences = {k: float(np.abs(a[k] - b[k]).max()) for k in a}
                rows.append({"mode": mode, "run": run, "arrays": len(differences),
                             "arrays_differing": sum(d > 0 for d in differences.values()),
                             "largest_difference": max(differences.values()), "validation_losses": [loss_a, loss_b],
                             "command": command})
                print(f"{mode}, run {run} against run 1: {rows[-1]['arrays_differing']} of {len(differences)} weight "
                      f"arrays differ, largest difference {rows[-1]['largest_difference']:.3g}; validation losses "
                      f"{loss_a} and {loss_b}", flush=True)
    if args.out:
        write_text(args.out, json.dumps({"env": args.env, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
