#!/usr/bin/env python
"""Where an NVAE's samples differ from real masks: the Frechet shape distance by descriptor.

    python results/shape-priors/fsd_breakdown.py runs/nvae-acdc-thesis [--samples 1000] [--temperature 1.0]

Draws the samples with ``sdnet-tf shape-eval``'s ``draw_samples`` (batches of 100 with seeds
0, 100, ...), so its FSD is the one in table.md, and for each of the 20 shape descriptors
(``sdnet_tf.metrics.shape.DESCRIPTORS``), standardised by the test masks' mean and standard
deviation as the FSD standardises them, reports:

- the test masks' and the samples' mean and standard deviation (standardised units);
- the descriptor's one-dimensional Frechet distance, ``(mean difference)^2 + (std difference)^2``:
  what it would add to the FSD if the descriptors were uncorrelated;
- the FSD with that descriptor left out (how much of the 20-dimensional distance it carries,
  correlations included);

and, since circularity (``4 pi A / P^2``) is unbounded for structures of a few pixels, how many
samples have a structure rounder than any test mask's, their areas, and the FSD without the
three circularity columns.

Writes ``acdc/<run name>-fsd-breakdown.json`` and ``.md`` next to table.md, and prints the table.
The training masks against the test masks (FSD 2.3 for split 0) are broken down the same way
as the reference of what real variation looks like.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from sdnet_tf.atomic import write_json, write_text

HERE = Path(__file__).resolve().parent


def breakdown(real, other):
    """Per-descriptor figures of ``other`` (N, 20) against ``real`` (M, 20), and the full FSD."""
    from sdnet_tf.metrics.shape import DESCRIPTORS, frechet_distance, standardise

    a, b = standardise(real, other)
    total = frechet_distance(a, b)
    rows = []
    for i, name in enumerate(DESCRIPTORS):
        keep = [j for j in range(len(DESCRIPTORS)) if j != i]
        rows.append({"descriptor": name,
                     "real_mean": float(a[:, i].mean()), "real_std": float(a[:, i].std(ddof=1)),
                     "other_mean": float(b[:, i].mean()), "other_std": float(b[:, i].std(ddof=1)),
                     "frechet_1d": float((a[:, i].mean() - b[:, i].mean()) ** 2
                                         + (a[:, i].std(ddof=1) - b[:, i].std(ddof=1)) ** 2),
                     "fsd_without": frechet_distance(a[:, keep], b[:, keep])})
    return total, rows


def circularity_outliers(real, other):
    """Per structure: how many rows of ``other`` exceed the test masks' largest circularity, the
    median area (mm^2) of those structures, and the FSD without the circularity columns."""
    from sdnet_tf.metrics.shape import DESCRIPTORS, frechet_distance, standardise

    out = {}
    for s in ("rv", "myo", "lv"):
        c, a = DESCRIPTORS.index(f"{s}_circularity"), DESCRIPTORS.index(f"{s}_area_mm2")
        high = other[:, c] > real[:, c].max()
        out[s] = {"real_max": float(real[:, c].max()), "other_max": float(other[:, c].max()),
                  "count": int(high.sum()), "median_area_mm2": float(np.median(other[high, a])) if high.any() else None}
    keep = [i for i, name in enumerate(DESCRIPTORS) if not name.endswith("_circularity")]
    a, b = standardise(real, other)
    out["fsd_without_circularity"] = frechet_distance(a[:, keep], b[:, keep])
    return out


def markdown(title, total, rows, label):
    lines = [f"### {title}: FSD {total:.1f}", "",
             f"| descriptor | test mean / std | {label} mean / std | 1-D Frechet | FSD without it |",
             "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["frechet_1d"]):
        lines.append(f"| {r['descriptor']} | {r['real_mean']:+.2f} / {r['real_std']:.2f} | "
                     f"{r['other_mean']:+.2f} / {r['other_std']:.2f} | {r['frechet_1d']:.1f} | "
                     f"{r['fsd_without']:.1f} |")
    return lines


def at_least_two(text):
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text}: the Frechet distance needs at least 2 samples")
    return value


def above_zero(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: a temperature must be above 0")
    return value


def main(argv=None):
    from sdnet_tf.apps.shape_eval import draw_samples
    from sdnet_tf.data.sources import mask_sets
    from sdnet_tf.inference import load_prior
    from sdnet_tf.data.masks import sample_pixel_mm
    from sdnet_tf.metrics.shape import shape_descriptors

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="an NVAE run directory")
    parser.add_argument("--samples", type=at_least_two, default=1000,
                        help="samples to draw (at least 2: the distance needs their covariance)")
    parser.add_argument("--temperature", type=above_zero, default=1.0, help="the prior's temperature (> 0)")
    args = parser.parse_args(argv)

    model, config = load_prior(args.run)
    if config.model.kind != "nvae":
        sys.exit(f"{args.run}: a {config.model.kind} run; the breakdown samples an NVAE")
    sets, _, _ = mask_sets(config, progress=False)
    sample_mm = sample_pixel_mm(sets)  # as shape-eval measures them (heart framing: pixel sizes per frame)
    drawn = draw_samples(model, args.samples, args.temperature)
    real = shape_descriptors(sets["test"].labels, sets["test"].pixel_spacing())
    generated = shape_descriptors(drawn, (sample_mm, sample_mm))
    samples_total, sample_rows = breakdown(real, generated)
    outliers = circularity_outliers(real, generated)
    training_total, training_rows = breakdown(real, shape_descriptors(sets["training"].labels,
                                                                      sets["training"].pixel_spacing()))
    name = args.run.name
    result = {"run": str(args.run), "samples": args.samples, "temperature": args.temperature,
              "test_slices": len(real), "fsd_samples": samples_total, "by_descriptor_samples": sample_rows,
              "circularity_outliers": outliers,
              "fsd_training": training_total, "by_descriptor_training": training_rows,
              "command": f"python results/shape-priors/fsd_breakdown.py {args.run} --samples {args.samples} "
                         f"--temperature {args.temperature:g}"}
    lines = [f"# Frechet shape distance of {name} by descriptor", "",
             f"Made by `{result['command']}`. Standardised units: each descriptor minus the test masks' mean, "
             "over their standard deviation (as the FSD standardises).", ""]
    lines += markdown(f"{args.samples} samples at T = {args.temperature:g} against the {len(real)} test slices",
                      samples_total, sample_rows, "samples")
    lines += ["", f"FSD without the three circularity columns: {outliers['fsd_without_circularity']:.1f}. "
              "Samples with a structure rounder than any test mask's:", ""]
    for s in ("rv", "myo", "lv"):
        o = outliers[s]
        area = f", median area {o['median_area_mm2']:.0f} mm^2" if o["count"] else ""
        lines.append(f"- {s.upper()}: {o['count']} of {args.samples} (circularity up to {o['other_max']:.2f}; "
                     f"test masks' largest {o['real_max']:.2f}{area})")
    lines += [""] + markdown("Training masks against the test masks (real variation)", training_total,
                             training_rows, "training")
    out = HERE / "acdc"
    write_json(out / f"{name}-fsd-breakdown.json", result)
    write_text(out / f"{name}-fsd-breakdown.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
