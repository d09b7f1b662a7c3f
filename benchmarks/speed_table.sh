#!/usr/bin/env bash
# The speed table of benchmarks/RESULTS.md ("The fused BatchNorm, and the table against
# PyTorch"): plain tf.function (the defaults: the fused BatchNorm since that table, where the
# first variant was Keras' BatchNorm ops and the second the fused kernel), the same with
# Keras' BatchNorm ops, and PyTorch
# eager with and without the allocator environment variables, side by side in each
# invocation, three invocations at 64, 128 and 224.
# VARIANTS (train_step.py --variants) and PREFIX (the JSON files' names) change the table, e.g.
# the Grappler table: VARIANTS=grappler-on,grappler-off,torch,torch-env PREFIX=grappler-speed
#   benchmarks/speed_table.sh [sizes]        e.g. benchmarks/speed_table.sh "64 128"
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${1:-64 128 224}
VARIANTS=${VARIANTS:-plain,keras-bn,torch,torch-env}
PREFIX=${PREFIX:-speed}
for i in 1 2 3; do
  for size in $SIZES; do
    case $size in
      64) config=synthetic-quick; n=9 ;;
      128) config=sdnet-acdc-cpu; n=7 ;;
      224) config=sdnet-acdc; n=3 ;;
      *) echo "unknown size $size (64, 128 or 224)" >&2; exit 2 ;;
    esac
    python benchmarks/train_step.py --compare --config "$config" --iterations "$n" \
      --variants "$VARIANTS" --out "benchmarks/results/$PREFIX-$size-$i.json" > /dev/null
  done
done
python - "$SIZES" "$PREFIX" <<'PY'
import json, statistics, sys
for size in sys.argv[1].split():
    runs = [json.load(open(f"benchmarks/results/{sys.argv[2]}-{size}-{i}.json"))["variants"] for i in (1, 2, 3)]
    names = [v["variant"] for v in runs[0]]
    print(f"\n{size} x {size}: s / iteration per invocation, median, first iteration s (median)")
    for k, name in enumerate(names):
        times = [r[k]["median_s_per_iteration"] for r in runs]
        first = [r[k].get("warmup_s") for r in runs]
        first = statistics.median(first) if None not in first else None
        print(f"  {name:<38} {', '.join(f'{t:.3f}' for t in times)}  median {statistics.median(times):.3f}"
              + (f"  first {first:.1f}" if first is not None else ""))
    best_torch = [min(v["median_s_per_iteration"] for v in r if "PyTorch" in v["variant"]) for r in runs]
    for k, name in enumerate(names):
        if "PyTorch" in name:
            continue
        ratios = [b / r[k]["median_s_per_iteration"] for r, b in zip(runs, best_torch)]
        print(f"  {name} against the best PyTorch variant, per invocation: "
              f"{', '.join(f'{x:.2f}x' for x in ratios)}; median {statistics.median(ratios):.2f}x")
PY
