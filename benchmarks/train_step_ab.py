"""Side-by-side A/B of the SDNet training iteration between checkouts of this repository.

    python benchmarks/train_step_ab.py --config synthetic-quick base=/path/to/base candidate=.
    git worktree add /tmp/base COMMIT   # a checkout of the commit to compare with
    python benchmarks/train_step_ab.py --config sdnet-acdc-cpu base=. deterministic=.+train.deterministic=true

Each variant ``NAME=CHECKOUT[+SECTION.KEY=VALUE...]`` runs that checkout's
``benchmarks/train_step.py`` (without XLA, glibc's default allocator, ``--set`` overrides
passed on, then the variant's own) in a fresh process with the checkout
first on ``PYTHONPATH``; the variants alternate for ``--rounds`` rounds, and the median over the
rounds of each process's median iteration and of its first iteration (tracing and compiling) is
printed with the ratio to the first variant.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", metavar="NAME=CHECKOUT[+SECTION.KEY=VALUE...]")
    parser.add_argument("--config", default="synthetic-quick")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=7)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", default=None, help="also write the rounds and medians here as JSON")
    args = parser.parse_args()
    variants = []
    for spec in args.variants:
        name, _, rest = spec.partition("=")
        root, *own = rest.split("+")
        root = Path(root or ".").resolve()
        if not name or not (root / "benchmarks" / "train_step.py").is_file() or not all("=" in o for o in own):
            parser.error(f"{spec}: expected NAME=CHECKOUT[+SECTION.KEY=VALUE...], CHECKOUT a checkout of this "
                         "repository")
        variants.append((name, root, own))
    runs = {name: [] for name, _, _ in variants}
    for round_ in range(args.rounds):
        for name, root, own in variants:
            sets = [a for o in [*args.overrides, *own] for a in ("--set", o)]
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=f"{root}/runtime:{root}")
            command = [sys.executable, str(root / "benchmarks" / "train_step.py"), "--config", args.config,
                       "--no-xla", "--allocator", "default", "--iterations", str(args.iterations), "--warmup", "1",
                       *sets]
            out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root)
            if out.returncode:
                sys.exit(f"{name} failed:\n{out.stderr[-2000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append(result)
            print(f"round {round_ + 1} {name}: {result['median_s_per_iteration']:.3f} s / iteration, "
                  f"first {result['warmup_s']:.1f} s", file=sys.stderr, flush=True)
    summary = {name: {"median_s_per_iteration": statistics.median(r["median_s_per_iteration"] for r in rs),
                      "median_first_iteration_s": statistics.median(r["warmup_s"] for r in rs)}
               for name, rs in runs.items()}
    base = summary[variants[0][0]]
    print("| variant | s / iteration (rounds) | median | speed-up | first iteration s (rounds) | median |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        s = summary[name]
        iterations = ", ".join(f"{r['median_s_per_iteration']:.3f}" for r in rs)
        firsts = ", ".join(f"{r['warmup_s']:.1f}" for r in rs)
        speedup = base["median_s_per_iteration"] / s["median_s_per_iteration"]
        print(f"| {name} | {iterations} | {s['median_s_per_iteration']:.3f} | {speedup:.2f}x | {firsts} | "
              f"{s['median_first_iteration_s']:.1f} |")
    if args.out:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from sdnet_tf.atomic import write_text

        report = {"config": args.config, "overrides": args.overrides, "rounds": runs, "summary": summary,
                  "checkouts": {name: str(root) for name, root, _ in variants},
                  "variant_overrides": {name: own for name, _, own in variants}}
        write_text(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
