#!/usr/bin/env python
"""How a run's foreground probabilities become labels, and what it does to the scores.

    python results/acdc/label_rule.py runs/acdc-cpu/sdnet-split0-100pct [more runs ...]

The label of a pixel is the argmax over [MYO, LV, RV, background] with background = 1 - the
sum of the three foreground probabilities (``sdnet_infer.preprocess.from_one_hot``, as the
original SDNet's softmax over four channels). A network trained with a Dice loss alone is not
calibrated: at the border of two structures it can give, say, LV 0.3 and MYO 0.3, so the
background (0.4) wins a pixel that is foreground with probability 0.6, and a gap opens
between the LV and the myocardium. The alternative rule labels a pixel foreground when the
foreground probabilities sum to more than 0.5, and then takes the most likely structure.

For each run this scores split 0's test patients with both rules (``sdnet-tf evaluate --run``'s
code, the prediction otherwise unchanged) and prints the 3-D Dice, the per-slice Dice, the
share of anatomically valid slices and the most frequent failed checks. Output goes to
``RUN/label-rule/{argmax,foreground-first}/`` and the figures to ``label_rule.json`` here.
"""

import collections
import csv
import json
import sys
from pathlib import Path

import numpy as np

from sdnet_tf.atomic import write_json

HERE = Path(__file__).resolve().parent


def foreground_first(masks):
    """Foreground probabilities [MYO, LV, RV] -> ACDC labels: foreground where their sum > 0.5,
    then the most likely structure."""
    from sdnet_infer.labels import BACKGROUND, SDNET_CHANNEL_LABELS

    structure = np.array(SDNET_CHANNEL_LABELS, np.uint8)[masks.argmax(-1)]
    return np.where(masks.sum(-1) > 0.5, structure, np.uint8(BACKGROUND))


def score(run, rule):
    import sdnet_infer.predict as predict
    from sdnet_infer.preprocess import from_one_hot
    from sdnet_tf.apps.evaluation import evaluate_run

    predict.from_one_hot = foreground_first if rule == "foreground-first" else from_one_hot
    try:
        out = Path(run) / "label-rule" / rule
        summary = evaluate_run(run, out)
    finally:
        predict.from_one_hot = from_one_hot
    fails = collections.Counter()
    for row in csv.DictReader(open(out / "slices.csv")):
        if row["Valid7 pred"] == "0":
            fails.update(f for f in row["Failed checks pred"].split(";") if f)
    return {"dice_3d": summary["dice_mean_3d"]["mean"],
            "slice_dice": summary["paper_slice_dice"]["SliceDice"]["mean"],
            "valid_slices_percent": summary["validity_percent"]["Valid7 pred"],
            "most_failed_checks": fails.most_common(5)}


def main(runs):
    from sdnet_tf.runtime import select_backend

    select_backend("tensorflow")
    target = HERE / "label_rule.json"
    results = json.loads(target.read_text()) if target.is_file() else {}
    for run in runs:
        name = Path(run).name
        results[name] = {rule: score(run, rule) for rule in ("argmax", "foreground-first")}
        for rule, r in results[name].items():
            print(f"{name:24s} {rule:17s} 3-D Dice {r['dice_3d']:.3f}  slice Dice {r['slice_dice']:.3f}  "
                  f"valid {r['valid_slices_percent']:.1f}%  {r['most_failed_checks'][:3]}", flush=True)
        write_json(target, results)


if __name__ == "__main__":
    main(sys.argv[1:])
