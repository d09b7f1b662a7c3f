#!/usr/bin/env bash
# The shape-prior results on the ACDC training patients (split 0: 70 / 15 / 15 patients), as
# run on 2 CPU cores (about 3 hours): a shortened schedule of every model (see README, "Shape priors").
#   results/shape-priors/run.sh /path/to/ACDC/training [runs-folder]
set -euo pipefail
DATA=${1:?usage: run.sh ACDC_TRAINING_FOLDER [RUNS]}
RUNS=${2:-runs}
OUT=$(dirname "$0")
# NVAE Default-N with the thesis' architecture, objective (KL weights 8 / 9 / 10, spectral
# regularisation 0.1) and optimiser, on a CPU budget: 25 epochs instead of 100, the KL warm-up
# over 7.5 of them (the thesis' 30%) and the cosine decay over the 25
sdnet-tf prior train nvae --data "$DATA" -o "$RUNS/nvae-acdc" --epochs 25 --quiet --set train.kl_warmup_epochs=7.5
# ACNN shape autoencoder, 4 epochs
sdnet-tf prior train acnn --data "$DATA" -o "$RUNS/acnn-acdc" --epochs 4 --quiet
# U-Net without and with the NVAE's shape loss, 1 epoch (165 steps) each
sdnet-tf baseline train unet --data "$DATA" -o "$RUNS/unet-acdc" --epochs 1 --quiet
sdnet-tf baseline train unet --data "$DATA" -o "$RUNS/unet-shape-acdc" --epochs 1 --quiet --shape-prior "$RUNS/nvae-acdc"
sdnet-tf shape-eval "$RUNS/nvae-acdc" "$RUNS/acnn-acdc" "$RUNS/unet-acdc" "$RUNS/unet-shape-acdc" -o "$OUT" --quiet
for run in nvae-acdc acnn-acdc unet-acdc unet-shape-acdc; do
    cp "$RUNS/$run/history.csv" "$OUT/$run-history.csv"
done
