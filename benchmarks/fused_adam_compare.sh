#!/usr/bin/env bash
# The fused Adam kernel against Keras' per-weight Adam and PyTorch, side by side, three
# invocations at 64 and at 128 (benchmarks/RESULTS.md, "Adam as one kernel per weight").
#   benchmarks/fused_adam_compare.sh [iterations]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-9}
for i in 1 2 3; do
  python benchmarks/train_step.py --compare --config synthetic-quick --iterations "$N" \
    --variants plain,keras-adam,torch,torch-env --out "benchmarks/results/fused-adam-64-$i.json" > /dev/null
  python benchmarks/train_step.py --compare --config sdnet-acdc-cpu --iterations "$N" \
    --variants plain,keras-adam,torch,torch-env --out "benchmarks/results/fused-adam-128-$i.json" > /dev/null
done
