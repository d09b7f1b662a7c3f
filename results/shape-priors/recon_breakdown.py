#!/usr/bin/env python
"""Where a prior's per-slice reconstruction Dice is lost: by structure size and by place in the stack.

    python results/shape-priors/recon_breakdown.py runs/nvae-acdc-thesis

Reconstructs the run's test masks as ``sdnet-tf shape-eval`` does (the kept weights, posterior
means, the most likely label per pixel), so the per-slice means are table.md's, and for each
structure (RV, MYO, LV) splits the slices that count towards its per-slice Dice (those where the
reference or the reconstruction has it) into:

- quartiles of the reference structure's area in mm^2 (each slice at its own pixel size), plus
  the slices where the reference lacks the structure and the reconstruction draws it;
- thirds of the stack by slice position (first, middle and last third of each ED or ES volume;
  ACDC stores most volumes base first, so the last third is mostly apical).

For each group: the slices, their mean Dice, and the group's share of the structure's shortfall
(the sum of ``1 - Dice`` over its slices, over the whole sum: where the distance from 1 comes
from). Writes ``acdc/<run name>-recon-breakdown.json`` and ``.md`` next to table.md and prints
the table.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from sdnet_infer.labels import STRUCTURES  # {"RV": 1, "MYO": 2, "LV": 3}
from sdnet_tf.atomic import write_json, write_text

HERE = Path(__file__).resolve().parent


def slice_records(predicted, reference, pixel_mm, positions, patients, phases):
    """Per structure, the slices that count towards its per-slice Dice: ``{name: {"dice", "area_mm2",
    "third"}}`` arrays, ``third`` 0, 1 or 2 for the first, middle and last third of the slice's volume."""
    from sdnet_tf.metrics.overlap import dice

    frame = np.array([f"{p}-{f}" for p, f in zip(patients, phases)])
    count = {key: int(np.sum(frame == key)) for key in np.unique(frame)}
    relative = np.array([pos / max(count[key] - 1, 1) for pos, key in zip(positions, frame)])
    third = np.minimum((relative * 3).astype(int), 2)
    out = {}
    for name, label in STRUCTURES.items():
        scores, areas, thirds = [], [], []
        for p, r, pixel, t in zip(predicted, reference, pixel_mm, third):
            value = dice(p == label, r == label)
            if np.isnan(value):  # neither has it: not part of the per-slice mean
                continue
            scores.append(value)
            areas.append(float(np.count_nonzero(r == label)) * pixel * pixel)
            thirds.append(t)
        out[name] = {"dice": np.array(scores), "area_mm2": np.array(areas), "third": np.array(thirds)}
    return out


def groups(record):
    """The rows of one structure: area quartiles of the slices whose reference has it, the
    slices where only the reconstruction has it, and the thirds of the stack."""
    scores, areas, thirds = record["dice"], record["area_mm2"], record["third"]
    shortfall = float(np.sum(1.0 - scores))
    present = areas > 0
    edges = np.quantile(areas[present], [0.25, 0.5, 0.75]) if present.any() else np.zeros(3)
    bins = np.digitize(areas, edges)
    rows = []

    def row(label, chosen):
        n = int(np.sum(chosen))
        rows.append({"group": label, "slices": n, "mean_dice": float(scores[chosen].mean()) if n else None,
                     "shortfall_share": float(np.sum(1.0 - scores[chosen]) / shortfall) if shortfall else 0.0})

    bounds = ([float(areas[present].min()), *edges.tolist(), float(areas.max())] if present.any()
              else [0.0] * 5)
    for q in range(4):
        row(f"area quartile {q + 1} ({bounds[q]:.0f}-{bounds[q + 1]:.0f} mm^2)", present & (bins == q))
    row("absent from the reference", ~present)
    for t, label in enumerate(("first third of the stack", "middle third", "last third")):
        row(label, thirds == t)
    larger = present & (bins > 0)
    return {"slices": int(scores.size), "mean_dice": float(scores.mean()), "rows": rows,
            "mean_dice_without_smallest_quartile": float(scores[larger].mean()) if larger.any() else None}


def main(argv=None):
    from sdnet_tf.apps.shape_eval import reconstruct_labels
    from sdnet_tf.data.sources import mask_sets
    from sdnet_tf.inference import load_prior
    from sdnet_tf.training.run_files import RunFiles

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a shape prior's run directory (NVAE or ACNN)")
    args = parser.parse_args(argv)
    if not (args.run / "config.yaml").is_file():
        sys.exit(f"{args.run}: no config.yaml; not a prior's run directory")
    model, config = load_prior(args.run)
    sets, _, _ = mask_sets(config, progress=False)
    test = sets["test"]
    records = slice_records(reconstruct_labels(model, test.labels), test.labels, test.pixel_mm, test.positions, test.patients,
                            test.phases)
    epoch = RunFiles(args.run).best().get("epoch")
    result = {"run": str(args.run), "kept_epoch": epoch, "test_slices": len(test),
              "structures": {name: groups(record) for name, record in records.items()},
              "command": f"python results/shape-priors/recon_breakdown.py {args.run}"}
    structures = result["structures"].values()
    result["mean_dice"] = float(np.mean([s["mean_dice"] for s in structures]))
    result["mean_dice_without_smallest_quartile"] = float(np.mean([s["mean_dice_without_smallest_quartile"]
                                                                   for s in structures]))
    name = args.run.name
    lines = [f"# Per-slice reconstruction Dice of {name} by structure size and stack position", "",
             f"Made by `{result['command']}` (kept weights: epoch {epoch}) on the {len(test)} test slices; per-slice mean over RV, MYO and LV "
             f"{result['mean_dice']:.3f}; over each structure's slices in area quartiles 2-4 only (its smallest "
             f"quarter and the slices without it in the reference left out) "
             f"{result['mean_dice_without_smallest_quartile']:.3f}. Shortfall share: the group's part of the sum "
             "of 1 - Dice over the structure's slices.", ""]
    for structure, summary in result["structures"].items():
        lines += [f"## {structure}: {summary['slices']} slices, mean Dice {summary['mean_dice']:.3f}", "",
                  "| group | slices | mean Dice | shortfall share |", "|---|---|---|---|"]
        for r in summary["rows"]:
            mean = "—" if r["mean_dice"] is None else f"{r['mean_dice']:.3f}"
            lines.append(f"| {r['group']} | {r['slices']} | {mean} | {r['shortfall_share'] * 100:.0f}% |")
        lines.append("")
    out = HERE / "acdc"
    write_json(out / f"{name}-recon-breakdown.json", result)
    write_text(out / f"{name}-recon-breakdown.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
