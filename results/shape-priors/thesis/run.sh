#!/usr/bin/env bash
# The NVAE on the thesis' full schedule (configs/nvae-acdc.yaml: 100 epochs, KL warm-up over 30,
# cosine decay over the 100), ACDC split 0, evaluated on the 15 held-out test patients.
#   results/shape-priors/thesis/run.sh /path/to/ACDC/training [runs-folder] [--backend jax]
# About 2.6 hours of training steps on 2 CPU cores (0.54-0.60 s a step, benchmarks/RESULTS.md),
# plus validation. The run resumes from its last epoch, so the script can be stopped and started
# again (on either backend: a GPU machine with JAX can finish it); each call evaluates the best
# epoch so far and copies the history here.
set -euo pipefail
DATA=${1:?usage: run.sh ACDC_TRAINING_FOLDER [RUNS] [--backend jax]}
RUNS=${2:-runs}
shift $(( $# < 2 ? $# : 2 ))
OUT=$(dirname "$0")
sdnet-tf prior train nvae --data "$DATA" -o "$RUNS/nvae-acdc-thesis" --quiet "$@"
sdnet-tf shape-eval "$RUNS/nvae-acdc-thesis" -o "$OUT" --quiet
cp "$RUNS/nvae-acdc-thesis/history.csv" "$OUT/nvae-acdc-thesis-history.csv"
