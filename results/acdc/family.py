#!/usr/bin/env python
"""The SDNet family's variants on real ACDC at the CPU protocol, beside the paper's figures.

    python results/acdc/family.py /path/to/ACDC/training [--runs runs/acdc-cpu]

For each planned run (the MICCAI 2018 precursor with configs/sdnet2018-acdc-cpu.yaml) it
trains with the public command (resuming a run directory that holds checkpoints), scores the
split's 15 test patients with ``sdnet-tf evaluate --run``, and writes
``results/acdc/family/<name>.json``; a run whose JSON exists is skipped. Then
``results/acdc/family/table.md`` is rebuilt with the myocardium figures of every JSON present
beside the same split and labelled fraction's SDNet and U-Net runs of ``run.py``
(``results/acdc/runs/``).
"""

import argparse
import importlib.util
import json
import time
from pathlib import Path

from sdnet_tf.atomic import write_json, write_text

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("acdc_table", HERE / "run.py")
table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table)  # the table's run() and history(), shared

OUT = HERE / "family"
# (config, split, labelled fraction): 6% of split 0 is 4 patients, 64 labelled images, the
# nearest of the precursor paper's columns being 68 images
PLAN = [("sdnet2018-acdc-cpu", 0, 0.06)]
# the precursor paper (MICCAI 2018): per-slice myocardium Dice by labelled ACDC images, with
# 1,200 unlabelled
PAPER_2018 = {284: 0.771, 142: 0.767, 68: 0.731, 34: 0.678, 11: 0.415}


def name_of(config, split, fraction):
    return f"{config.split('-')[0]}-split{split}-{fraction * 100:g}pct"


def collect(config, split, fraction, run_dir, seconds, cmds):
    summary = json.loads((run_dir / "test" / "summary.json").read_text())
    data = json.loads((run_dir / "data.json").read_text())
    myo = summary["segmented"]["MYO"] if "segmented" in summary else {
        "slice_dice": summary["paper_slice_dice"]["SliceDice MYO"], **summary["per_class"]["MYO"]["all"]}
    return {"name": name_of(config, split, fraction), "config": config, "split": split,
            "labelled_fraction": fraction, "labelled_patients": data["labelled_patients"],
            "labelled_images": data["labelled"], "unlabelled_images": data["unlabelled"],
            "test_patients": summary["run"]["patients"],
            "myo_slice_dice": myo["slice_dice"]["mean"], "myo_dice_3d": myo["Dice"]["mean"],
            "myo_hd95_mm": myo["HD95"]["mean"], "validation": table.history(run_dir, "sdnet"),
            "train_seconds_this_invocation": round(seconds, 1), "commands": [" ".join(c) for c in cmds]}


def nearest_paper_column(images):
    return min(PAPER_2018, key=lambda n: abs(n - images))


def write_table(results):
    lines = ["# The SDNet family on ACDC at the CPU protocol", "",
             "Myocardium only, on each split's 15 test patients (ED and ES). Made by `results/acdc/family.py`; "
             "SDNet and U-Net figures from `results/acdc/runs/` (same split and labelled patients).", "",
             "| model | split | labelled images (patients) | unlabelled | MYO per-slice Dice | MYO 3-D Dice | "
             "MYO HD95 (mm) | paper, per-slice (labelled images) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        column = nearest_paper_column(r["labelled_images"])
        lines.append(f"| MICCAI 2018 precursor | {r['split']} | {r['labelled_images']} ({len(r['labelled_patients'])}) | "
                     f"{r['unlabelled_images']} | {r['myo_slice_dice']:.3f} | {r['myo_dice_3d']:.3f} | "
                     f"{r['myo_hd95_mm']:.1f} | {PAPER_2018[column]:.3f} ({column}) |")
        for kind in ("sdnet", "unet"):
            path = HERE / "runs" / f"{table.run_name(kind, r['split'], r['labelled_fraction'])}.json"
            if path.is_file():
                other = json.loads(path.read_text())
                lines.append(f"| {table.NAMES[kind]} (three structures) | {r['split']} | "
                             f"{r['labelled_images']} ({len(other['labelled_patients'])}) | — | "
                             f"{other['slice_dice']['MYO']:.3f} | {other['dice_3d']['MYO']:.3f} | "
                             f"{other['hd95_mm']['MYO']:.1f} | — |")
    write_text(OUT / "table.md", "\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the ACDC training folder")
    parser.add_argument("--runs", type=Path, default=table.ROOT / "runs" / "acdc-cpu", help="where run directories go")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    for config, split, fraction in PLAN:
        name = name_of(config, split, fraction)
        out = OUT / f"{name}.json"
        if out.is_file():
            continue
        run_dir = args.runs / name
        train = ["sdnet-tf", "train", "acdc", "-c", config, "--data", str(args.data), "--split", str(split),
                 "--labelled-fraction", str(fraction), "-o", str(run_dir), "--quiet"]
        evaluate = ["sdnet-tf", "evaluate", "--run", str(run_dir), "-o", str(run_dir / "test"), "--quiet"]
        start = time.time()
        log = args.runs / f"{name}.log"
        args.runs.mkdir(parents=True, exist_ok=True)
        table.run(train, log)
        seconds = time.time() - start
        table.run(evaluate, log)
        result = collect(config, split, fraction, run_dir, seconds, [train, evaluate])
        write_json(out, result)
        print(f"{name}: MYO per-slice Dice {result['myo_slice_dice']:.3f}, 3-D Dice {result['myo_dice_3d']:.3f}",
              flush=True)
    results = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    if results:
        write_table(results)


if __name__ == "__main__":
    main()
