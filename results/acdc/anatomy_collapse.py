#!/usr/bin/env python
"""The anatomy factor of an SDNet run, epoch by epoch: the share of pixels each binary channel
sets, read from the training's image summaries, and a figure of the channels.

    python results/acdc/anatomy_collapse.py RUN_DIR [RUN_DIR ...] -o FIGURE.png [--epochs 9 12 13 14]

For each epoch a run logged (``train.image_summaries`` > 0: the anatomy channels and the
predicted masks of one training image, ``sdnet_tf/training/trainer.py``) it prints the share
of the image's pixels that each of the eight anatomy channels sets and the share of pixels the
segmentor marks as MYO, LV or RV, and draws every run's channel strips one epoch per row
(``--epochs``: those epochs only). A
channel that held the heart and empties, while the segmentor's masks go with it, is the
collapse this script was written to show (``README.md``, the precision ablation).
"""

import argparse
import io
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def summaries(run_dir):
    """{step: {tag: image array}} of the run's logged anatomy channels and predicted masks."""
    import tensorflow as tf
    from PIL import Image

    found = {}
    for events in sorted((Path(run_dir) / "tensorboard").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.tag in ("anatomy_channels", "predicted_masks") and value.HasField("tensor"):
                    encoded = tf.make_ndarray(value.tensor)
                    found.setdefault(event.step, {})[value.tag] = np.asarray(Image.open(io.BytesIO(encoded[2])))
    return dict(sorted(found.items()))


def occupancy(strip, channels=8):
    """The share of set pixels in each channel tile of an (H, channels * W) strip."""
    tiles = np.split(np.asarray(strip, np.float32).reshape(strip.shape[0], strip.shape[1], -1)[..., 0], channels,
                     axis=1)
    return [float((tile > 127).mean()) for tile in tiles]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="SDNet run directories")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the figure (.png)")
    parser.add_argument("--steps-per-epoch", type=int, default=100, help="the runs' iterations per epoch")
    parser.add_argument("--epochs", type=int, nargs="+", help="draw these epochs only (all are printed)")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        logged = summaries(run)
        if not logged:
            parser.error(f"{run}: no anatomy-channel summaries (train.image_summaries 0, or no tensorboard folder)")
        print(f"{run}")
        print("  epoch  anatomy channels 1-8: share of pixels set              masks MYO / LV / RV")
        for step, images in logged.items():
            shares = occupancy(images["anatomy_channels"])
            masks = images.get("predicted_masks")
            fg = ([float((masks[..., c] > 127).mean()) for c in range(3)] if masks is not None else [np.nan] * 3)
            print(f"  {step // args.steps_per_epoch:5d}  " + " ".join(f"{s:.3f}" for s in shares)
                  + "   " + " / ".join(f"{f:.4f}" for f in fg))
            if not args.epochs or step // args.steps_per_epoch in args.epochs:
                rows.append((f"{run.name}\nepoch {step // args.steps_per_epoch}", images["anatomy_channels"]))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        parser.error(f"none of epochs {args.epochs} was logged")
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.5 * len(rows)), squeeze=False)
    for axis, (label, strip) in zip(axes[:, 0], rows):
        axis.imshow(strip, cmap="gray", vmin=0, vmax=255)
        axis.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
        axis.set_xticks([])
        axis.set_yticks([])
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=80)
    print(f"figure: {args.output}")


if __name__ == "__main__":
    main()
