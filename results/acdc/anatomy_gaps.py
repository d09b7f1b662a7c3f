#!/usr/bin/env python
"""Where SDNet's binarised anatomy is empty, and whether that is where its segmentation fails.

    python results/acdc/anatomy_gaps.py runs/acdc-cpu/sdnet-split0-100pct

The anatomy encoder ends in a softmax over C channels that is rounded (straight-through) to
{0, 1}: a pixel whose largest channel is at most 0.5 becomes all zeros, and the segmentor
sees no anatomy there. For the run's validation images this prints the share of pixels with an
empty anatomy vector inside the reference foreground (RV, MYO, LV) and outside it, and the share
of the segmentation's foreground errors (reference foreground labelled background) that fall
on empty-anatomy pixels. Written to ``anatomy_gaps.json`` here.
"""

import json
import sys
from pathlib import Path

import numpy as np

from sdnet_tf.atomic import write_json

HERE = Path(__file__).resolve().parent


def main(run):
    from sdnet_tf.runtime import select_backend

    select_backend("tensorflow")
    from sdnet_tf.data.sources import load_arrays
    from sdnet_tf.inference import load_run

    model, config = load_run(run)
    arrays, _ = load_arrays(config)
    images, masks = arrays.validation_images, arrays.validation_masks
    soft, empty, predicted_fg = [], [], []
    for i in range(0, len(images), 16):
        x = images[i:i + 16]
        s = np.asarray(model.anatomy_encoder.soft(x, training=False))
        binary = np.asarray(model.anatomy_encoder.rounding(s))  # the model's own binarisation
        probs = np.asarray(model.segmentor(binary, training=False))
        soft.append(s.max(-1))
        empty.append(binary.sum(-1) == 0)
        predicted_fg.append(probs.max(-1) > 1 - probs.sum(-1))  # a structure wins the argmax over background
    empty, predicted_fg, soft = np.concatenate(empty), np.concatenate(predicted_fg), np.concatenate(soft)
    reference_fg = masks.sum(-1) > 0.5
    missed = reference_fg & ~predicted_fg
    result = {
        "run": str(run), "images": int(len(images)),
        "empty_anatomy_in_reference_foreground": float(empty[reference_fg].mean()),
        "empty_anatomy_outside_reference_foreground": float(empty[~reference_fg].mean()),
        "foreground_pixels_labelled_background": float(missed[reference_fg].mean()),
        "share_of_those_on_empty_anatomy": float(empty[missed].mean()) if missed.any() else None,
        "largest_softmax_median_in_foreground": float(np.median(soft[reference_fg])),
    }
    for k, v in result.items():
        print(f"{k}: {v}")
    target = HERE / "anatomy_gaps.json"
    records = json.loads(target.read_text()) if target.is_file() else {}
    records[Path(run).name] = result
    write_json(target, records)


if __name__ == "__main__":
    main(sys.argv[1])
