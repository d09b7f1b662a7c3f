#!/usr/bin/env python
"""The unseen-vendor experiment of Liu et al. (M&Ms 2020) on the four-vendor phantom.

    python results/mnms-phantom/run.py [--runs runs/mnms-phantom] [--seeds 1 2 3] [--only NAME ...]

Train on vendors A and B (labelled) and C (unlabelled), hold vendor D out, and score every
model on the test patients of A, B and C and on every patient of D (``sdnet-tf evaluate --run``,
per vendor). Five models, each with three seeds (``train.seed``: initial weights, batches and
augmentation; the patients are the same):

- U-Net: configs/baseline-mnms-phantom-quick.yaml (SDNet's U-Net, per-class Dice);
- U-Net + RA: the same with resolution augmentation;
- SDNet: configs/sdnet-mnms-phantom-quick.yaml without resolution augmentation;
- SDNet + RA: configs/sdnet-mnms-phantom-quick.yaml as shipped;
- SDNet + RA + FA: SDNet + RA of the same seed trained again from scratch with factor-based
  augmentation, the factors coming from the finished SDNet + RA run of that seed (as Liu et
  al. generate images with a pre-trained SDNet).

Each run's JSON goes to ``results/mnms-phantom/runs/<name>.json`` with its commands; a run
whose JSON exists is skipped and a run directory with checkpoints resumes, so the script can
be stopped and started again. ``table.md`` is rebuilt from every JSON present: mean 3-D Dice
(LV, MYO, RV) per vendor, mean and standard deviation over the seeds, and the paired
differences (RA's gain, FA's effect, SDNet + RA against the U-Net) with their spread.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sdnet_tf.atomic import write_json, write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RA_ON = ["--set", "data.resolution_augmentation=true"]
RA_OFF = ["--set", "data.resolution_augmentation=false"]
# name -> (config, extra options, display name); FA's source run is added per seed
MODELS = {
    "unet": ("baseline-mnms-phantom-quick", RA_OFF, "U-Net"),
    "unet-ra": ("baseline-mnms-phantom-quick", RA_ON, "U-Net + RA"),
    "sdnet": ("sdnet-mnms-phantom-quick", RA_OFF, "SDNet"),
    "sdnet-ra": ("sdnet-mnms-phantom-quick", RA_ON, "SDNet + RA"),
    "sdnet-ra-fa": ("sdnet-mnms-phantom-quick", RA_ON, "SDNet + RA + FA"),
}
VENDORS = ("A", "B", "C", "D")
# (label, minuend, subtrahend): paired differences over the seeds
CONTRASTS = [("RA's gain for the U-Net", "unet-ra", "unet"), ("RA's gain for SDNet", "sdnet-ra", "sdnet"),
             ("FA's effect on SDNet + RA", "sdnet-ra-fa", "sdnet-ra"),
             ("SDNet + RA against the U-Net", "sdnet-ra", "unet")]
TARGET = 0.05  # SDNet + RA over the U-Net on the unseen vendor D, mean Dice


def run_name(model, seed):
    return f"{model}-seed{seed}"


def commands(model, seed, runs):
    config, extra, _ = MODELS[model]
    run_dir = runs / run_name(model, seed)
    train = ["sdnet-tf", "train", "mnms", "--data", "phantom", "-c", config, "--seed", str(seed), *extra,
             "-o", str(run_dir), "--quiet"]
    if model == "sdnet-ra-fa":
        train += ["--set", f"data.factor_augmentation={runs / run_name('sdnet-ra', seed)}"]
    evaluate = ["sdnet-tf", "evaluate", "--run", str(run_dir), "-o", str(run_dir / "test"), "--quiet"]
    return run_dir, train, evaluate


def run(command, log):
    print("$ " + " ".join(command), flush=True)
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(command)}; see {log}")


def collect(model, seed, run_dir, seconds, cmds):
    summary = json.loads((run_dir / "test" / "summary.json").read_text())
    per_vendor = {}
    for vendor, entry in summary["per_vendor"].items():
        dice = entry.get("Dice", {})
        per_vendor[vendor] = {
            "role": entry["role"], "patients": entry["patients"], "cases": entry["cases"],
            "dice": {k: dice[k]["mean"] for k in ("LV", "MYO", "RV", "mean") if k in dice},
            "hd95_mm": entry["HD95"]["mean"]["mean"] if "HD95" in entry else None,
        }
    best = json.loads((run_dir / "best.json").read_text())
    result = {"name": run_name(model, seed), "model": model, "seed": seed, "per_vendor": per_vendor,
              "best_validation_dice": best.get("val_dice"), "best_epoch": best.get("epoch"),
              "train_seconds_this_invocation": round(seconds, 1), "commands": [" ".join(c) for c in cmds]}
    fa = run_dir / "factor_augmentation.json"
    if fa.is_file():
        record = json.loads(fa.read_text())
        result["factor_augmentation"] = {k: record.get(k) for k in ("source_run", "labelled", "unlabelled", "pairing")}
    return result


def mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def cell(values):
    mean, sd, n = mean_sd(values)
    return "—" if mean is None else f"{mean:.3f} ± {sd:.3f} ({n})"


def write_table(results):
    by = {(r["model"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})

    def dice(model, seed, vendor):
        r = by.get((model, seed))
        return r["per_vendor"].get(vendor, {}).get("dice", {}).get("mean") if r else None

    roles = {}
    for r in results:
        for vendor, entry in r["per_vendor"].items():
            roles.setdefault(vendor, (entry["role"], entry["patients"]))
    lines = ["# The unseen-vendor experiment on the four-vendor phantom", "",
             "Trained on vendors A and B (labelled) and C (unlabelled); vendor D is never seen. Mean 3-D Dice "
             "over LV, MYO and RV of the ED and ES frames of each vendor's test patients (A, B, C) and of every "
             "patient of D, as mean ± standard deviation over the seeds (their number in brackets). Made by "
             "`results/mnms-phantom/run.py`.", "",
             "| model | " + " | ".join(f"{v} ({roles.get(v, ('?', '?'))[0]}, {roles.get(v, ('?', '?'))[1]} test "
                                      f"patient{'s' if roles.get(v, ('?', 2))[1] != 1 else ''})" for v in VENDORS) + " |",
             "|---|" + "---|" * len(VENDORS)]
    for model, (_, _, label) in MODELS.items():
        lines.append(f"| {label} | " + " | ".join(cell([dice(model, s, v) for s in seeds]) for v in VENDORS) + " |")
    lines += ["", "## Paired differences over the seeds (same seed, mean Dice)", "",
              "| difference | " + " | ".join(VENDORS) + " |", "|---|" + "---|" * len(VENDORS)]
    for label, a, b in CONTRASTS:
        row = []
        for v in VENDORS:
            pairs = [dice(a, s, v) - dice(b, s, v) for s in seeds
                     if dice(a, s, v) is not None and dice(b, s, v) is not None]
            row.append(cell(pairs))
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    gains = [dice("sdnet-ra", s, "D") - dice("unet", s, "D") for s in seeds
             if dice("sdnet-ra", s, "D") is not None and dice("unet", s, "D") is not None]
    if gains:
        mean, sd, n = mean_sd(gains)
        verdict = "met" if mean >= TARGET else "missed"
        lines += ["", f"Target: SDNet + RA beats the U-Net on the unseen vendor D by at least {TARGET:.2f} mean Dice. "
                  f"Measured {mean:+.3f} ± {sd:.3f} over {n} seed(s): {verdict}."]
    write_text(HERE / "table.md", "\n".join(lines) + "\n")


def rebuild():
    results = [json.loads(p.read_text()) for p in sorted((HERE / "runs").glob("*.json"))]
    if results:
        write_table(results)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "mnms-phantom", help="where run directories go")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--only", nargs="*", default=None, help="run only these names (e.g. sdnet-ra-seed1)")
    args = parser.parse_args()
    out = HERE / "runs"
    out.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for model in MODELS:  # sdnet-ra before sdnet-ra-fa, whose factors it gives
            name = run_name(model, seed)
            if (out / f"{name}.json").is_file() or (args.only is not None and name not in args.only):
                continue
            run_dir, train, evaluate = commands(model, seed, args.runs.resolve())
            log = args.runs / f"{name}.log"
            start = time.perf_counter()
            run(train, log)
            seconds = time.perf_counter() - start
            run(evaluate, log)
            result = collect(model, seed, run_dir, seconds, [train, evaluate])
            write_json(out / f"{name}.json", result)
            print(f"{name}: " + ", ".join(f"{v} {result['per_vendor'][v]['dice'].get('mean', float('nan')):.3f}"
                                          for v in VENDORS if v in result["per_vendor"]), flush=True)
            rebuild()
    rebuild()


if __name__ == "__main__":
    sys.exit(main())
