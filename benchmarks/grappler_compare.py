"""Grappler's graph rewriting on or off for the TensorFlow engine without XLA.

    python benchmarks/grappler_compare.py --config synthetic-quick [--repeat 3]

Runs ``benchmarks/train_step.py --no-xla`` with ``train.graph_rewriting`` true and false in
turn, each in its own fresh process (the setting is process-wide), ``--repeat`` times, and
prints each invocation's median seconds per iteration and first iteration, then the medians
over the invocations, the per-iteration speed-up with rewriting off and the seconds it
saves on the first iteration. Each invocation runs rewriting on first, then off.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from common import run_json


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="synthetic-quick")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    if args.repeat < 1 or args.iterations < 1:
        parser.error("--repeat and --iterations must be at least 1")
    script = Path(__file__).with_name("train_step.py")
    runs = {True: [], False: []}
    for invocation in range(args.repeat):
        for rewriting in (True, False):
            result = run_json([sys.executable, str(script), "--config", args.config, "--no-xla",
                               "--iterations", str(args.iterations), "--warmup", "1",
                               "--set", f"train.graph_rewriting={'true' if rewriting else 'false'}"])
            runs[rewriting].append(result)
            print(f"invocation {invocation + 1}, graph rewriting {'on ' if rewriting else 'off'}: "
                  f"{result['median_s_per_iteration']:.4f} s/it, first iteration {result['warmup_s']:.2f} s", flush=True)
    on = {k: statistics.median(r[k] for r in runs[True]) for k in ("median_s_per_iteration", "warmup_s")}
    off = {k: statistics.median(r[k] for r in runs[False]) for k in ("median_s_per_iteration", "warmup_s")}
    print(json.dumps({"config": args.config, "on": on, "off": off,
                      "speedup_off": round(on["median_s_per_iteration"] / off["median_s_per_iteration"], 3),
                      "first_iteration_saved_s": round(on["warmup_s"] - off["warmup_s"], 2)}))


if __name__ == "__main__":
    main()
