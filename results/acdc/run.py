#!/usr/bin/env python
"""The SDNet paper's label-fraction table at the CPU protocol, against the U-Net, GAN and self-training baselines.

    python results/acdc/run.py /path/to/ACDC/training [--runs runs/acdc-cpu] [--only NAME ...]
    python results/acdc/run.py /path/to/ACDC/training --ablation batch-dice [--fraction 0.015]
    python results/acdc/run.py /path/to/ACDC/training --partial --ablation bfloat16   # its best epoch so far
    python results/acdc/run.py /path/to/ACDC/training --partial --only sdnet-split0-100pct   # likewise
    python results/acdc/run.py /path/to/ACDC/training --backend jax --parallel 4   # e.g. a GPU machine without TensorFlow
    python results/acdc/run.py /path/to/ACDC/training --replicate sdnet-split2-1.5pct --backend jax   # again, elsewhere
    python results/acdc/run.py /path/to/ACDC/training --replicate sdnet-split0-1.5pct --seed 2   # another seed, same subjects

For each planned run (SDNet with configs/sdnet-acdc-cpu.yaml and the U-Net with
configs/unet-acdc-cpu.yaml, at the same labelled subjects; the GAN and self-training
baselines, configs/gan-acdc-cpu.yaml and configs/self-training-acdc-cpu.yaml, at split 0 with
1.5% and 100% labels) it trains with the public command
(resuming a run directory that holds checkpoints), scores the split's 15 test patients with
``sdnet-tf evaluate --run`` (per-slice Dice as the paper, ACDC 3-D Dice, HD95, anatomically
valid slices), and writes ``results/acdc/runs/<name>.json`` with the run's validation
history. A run whose JSON exists is skipped, so the script can be stopped and started again.
Then ``table.md`` and ``learning_curves.png`` are rebuilt from every JSON present.
The commands it runs are printed and recorded in each JSON.
"""

import argparse
import csv
import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sdnet_tf.atomic import write_json, write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# (split, labelled fraction): split 0 at the paper's four fractions first, then splits 1
# and 2 at one subject and all labels; per split, each model kind
PLAN = [(0, 1.0), (0, 0.015), (0, 0.06), (0, 0.25), (1, 0.015), (2, 0.015), (1, 1.0), (2, 1.0)]
KINDS = ("unet", "sdnet")
# the SDNet papers' other baselines (configs gan-acdc-cpu and self-training-acdc-cpu: the U-Net
# in SDNet's own pipeline), at split 0 with one subject and with all labels, before splits 1 and 2
BASELINES = ("gan", "self-training")
BASELINE_PLAN = [(0, 0.015), (0, 1.0)]
JOBS = ([(kind, split, fraction) for split, fraction in PLAN[:4] for kind in KINDS]
        + [(kind, split, fraction) for split, fraction in BASELINE_PLAN for kind in BASELINES]
        + [(kind, split, fraction) for split, fraction in PLAN[4:] for kind in KINDS])
PAPER = {1.0: 84, 0.25: 81, 0.06: 78, 0.015: 73}  # SDNet, ACDC, per-slice Dice (%), 3-fold
NAMES = {"sdnet": "SDNet", "unet": "U-Net", "gan": "GAN", "self-training": "self-training"}
CONFIGS = {"sdnet": "sdnet-acdc-cpu", "gan": "gan-acdc-cpu", "self-training": "self-training-acdc-cpu"}
# what costs SDNet against the U-Net: each ablation is SDNet at split 0 and 100% labels with
# these overrides of configs/sdnet-acdc-cpu.yaml, written to ablations/sdnet-split0-100pct-NAME.json
ABLATIONS = {
    # one Dice per class over the whole batch instead of per slice: a structure absent from a
    # slice (the RV below the base) is no longer an all-or-nothing term of its own
    "batch-dice": ["--set", "loss.dice_mode=batch"],
    # twice the iterations (the 100% run's validation Dice was still rising at epoch 30)
    "60-epochs": ["--epochs", "60"],
    # every pixel gets exactly one anatomy channel (rounding leaves 12% of heart pixels with
    # none, where 71% of the missed heart pixels are: anatomy_gaps.py)
    "argmax-binarisation": ["--set", "model.binarisation=argmax"],
    # reduced precision (benchmarks/RESULTS.md, "bfloat16 on the CPU"): its effect on the scores,
    # against "float32", the same protocol run again on the same code and machine (the table's
    # run was trained on another CPU by an earlier version, whose rounding differs)
    "bfloat16": ["--set", "train.precision=mixed_bfloat16"],
    "float32": [],
}


def run_name(kind, split, fraction):
    return f"{kind}-split{split}-{fraction * 100:g}pct"


def seed_options(config_name, seed):
    """The options that train ``config_name`` with ``train.seed`` ``seed`` on the subjects of
    the config's own seed (``data.seed``): a run's spread from its seed, its subjects kept."""
    from sdnet_tf.config import config_kind, load_config
    from sdnet_tf.data.sources import data_seed

    own = data_seed(load_config(config_name, kind=config_kind(config_name)))
    return ["--seed", str(seed), "--set", f"data.seed={own}"]


def commands(kind, split, fraction, data, run_dir, extra=(), backend="tensorflow", seed=None):
    engine = [] if backend == "tensorflow" else ["--backend", backend]
    config = CONFIGS.get(kind, "unet-acdc-cpu")
    seeded = [] if seed is None else seed_options(config, seed)
    if kind in CONFIGS:
        train = ["sdnet-tf", "train", "acdc", "-c", config, "--data", str(data), "--split", str(split),
                 "--labelled-fraction", str(fraction), "-o", str(run_dir), "--quiet", *engine, *extra, *seeded]
    else:
        train = ["sdnet-tf", "baseline", "train", "unet", "-c", config, "--data", str(data), "--split", str(split),
                 "--set", f"data.labelled_fraction={fraction}", "-o", str(run_dir), "--quiet", *engine, *seeded]
    evaluate = ["sdnet-tf", "evaluate", "--run", str(run_dir), "-o", str(run_dir / "test"), "--quiet"]
    return train, evaluate


def run(command, log):
    print("$ " + " ".join(command), flush=True)
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(command)}; see {log}")


def history(run_dir, kind):
    """Validation Dice per epoch; a self-training run's rounds one after another."""
    rounds = sorted(run_dir.glob("round-*"), key=lambda p: int(p.name.split("-")[1]))
    if rounds:
        curve = []
        for round_dir in rounds:
            curve += [dict(r, epoch=r["epoch"] + len(curve)) for r in history(round_dir, kind)]
        return curve
    path = run_dir / "history.csv"
    rows = list(csv.DictReader(open(path))) if path.is_file() else []
    key = "val_dice_mean" if kind == "unet" else "val_dice"
    return [{"epoch": int(r["epoch"]), "val_dice": float(r[key]), "seconds": float(r["seconds"])} for r in rows]


def failed_checks(slices_csv):
    """How the predicted test slices fail the anatomical checks (``evaluate``'s slices.csv):
    ``invalid_slices``, the slices the valid-slice share counts as invalid (column "Valid7
    pred", the thesis' seven checks), ``invalid_slices_painchaud`` (column "ValidP pred", all 16
    of Painchaud's criteria), and under ``checks`` how many slices fail each check of column
    "Failed checks pred" (the 16, so a slice failing several counts under each), most first."""
    counts = Counter()
    invalid = invalid_painchaud = 0
    with open(slices_csv, newline="") as f:
        for row in csv.DictReader(f):
            invalid += row["Valid7 pred"] == "0"
            invalid_painchaud += row["ValidP pred"] == "0"
            counts.update(c for c in (row.get("Failed checks pred") or "").split(";") if c)
    return {"invalid_slices": invalid, "invalid_slices_painchaud": invalid_painchaud,
            "checks": dict(counts.most_common())}


def collect(kind, split, fraction, run_dir, seconds, cmds, test_dir=None):
    test_dir = test_dir or run_dir / "test"
    summary = json.loads((test_dir / "summary.json").read_text())
    classes = summary["per_class"]
    paper = summary["paper_slice_dice"]
    data = json.loads((run_dir / "data.json").read_text())
    labelled = data.get("labelled_patients", data.get("training_patients"))
    return {
        "name": run_name(kind, split, fraction), "model": kind, "split": split, "labelled_fraction": fraction,
        "labelled_patients": labelled,
        "test_patients": summary["run"]["patients"],
        "slice_dice": {"mean": paper["SliceDice"]["mean"],
                       **{c: paper[f"SliceDice {c}"]["mean"] for c in ("LV", "RV", "MYO")}},
        "dice_3d": {"mean": summary["dice_mean_3d"]["mean"],
                    **{c: classes[c]["all"]["Dice"]["mean"] for c in ("LV", "RV", "MYO")}},
        "hd95_mm": {c: classes[c]["all"]["HD95"]["mean"] for c in ("LV", "RV", "MYO")},
        "valid_slices_percent": summary["validity_percent"]["Valid7 pred"],
        "valid_reference_slices_percent": summary["validity_percent"]["Valid7 ref"],
        "failed_checks": failed_checks(test_dir / "slices.csv"),
        "validation": history(run_dir, kind),
        "train_seconds_this_invocation": round(seconds, 1),
        "commands": [" ".join(c) for c in cmds],
    }


def fmt(value, scale=1.0, digits=3):
    return "—" if value is None else f"{value * scale:.{digits}f}"


def engine_mark(result):
    return " †" if result and result.get("backend") == "jax" else ""


def largest_drop(curve, after=3):
    values = [r["val_dice"] for r in curve]
    drops = [values[i - 1] - values[i] for i in range(max(1, after), len(values))]
    return max(drops) if drops else None


def write_table(results):
    lines = ["# SDNet and its baselines on ACDC at the CPU protocol", "",
             "Scored on each split's 15 test patients (ED and ES). Made by `results/acdc/run.py`; "
             "configs `sdnet-acdc-cpu`, `unet-acdc-cpu`, `gan-acdc-cpu` and `self-training-acdc-cpu`.", "",
             "## Per-slice Dice, the paper's measure (%, mean over MYO, LV, RV)", "",
             "| split | labelled | labelled subjects | SDNet (paper, 3-fold, full size) | SDNet (ours) | U-Net (ours) | "
             "GAN (ours) | self-training (ours) |",
             "|---|---|---|---|---|---|---|---|"]
    by = {(r["model"], r["split"], r["labelled_fraction"]): r for r in results}
    keys = sorted({(r["split"], r["labelled_fraction"]) for r in results}, key=lambda k: (k[0], -k[1]))
    for split, fraction in keys:
        runs = [by.get((kind, split, fraction)) for kind in ("sdnet", "unet", *BASELINES)]
        subjects = len(next(r for r in runs if r)["labelled_patients"])
        lines.append(f"| {split} | {fraction * 100:g}% | {subjects} | {PAPER.get(fraction, '—')} | "
                     + " | ".join(fmt(r and r["slice_dice"]["mean"], 100, 1) + engine_mark(r) for r in runs) + " |")
    lines += ["", "## ACDC 3-D Dice, HD95 and anatomically valid slices", "",
              "| split | labelled | model | 3-D Dice mean | LV | RV | MYO | HD95 LV / RV / MYO (mm) | valid slices | "
              "largest validation drop after epoch 3 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for split, fraction in keys:
        for kind in KINDS + BASELINES:
            r = by.get((kind, split, fraction))
            if r is None:
                continue
            d, h = r["dice_3d"], r["hd95_mm"]
            lines.append(f"| {split} | {fraction * 100:g}% | {NAMES[kind]}{engine_mark(r)} | {fmt(d['mean'])} | {fmt(d['LV'])} | "
                         f"{fmt(d['RV'])} | {fmt(d['MYO'])} | {fmt(h['LV'], digits=1)} / {fmt(h['RV'], digits=1)} / "
                         f"{fmt(h['MYO'], digits=1)} | {fmt(r['valid_slices_percent'], digits=1)}% | "
                         f"{fmt(largest_drop(r['validation']))} |")
    devices = sorted({"{1} ({0})".format(*r["device"].split(" ", 1)).replace("(gpu)", "GPU")
                      for r in results if r.get("backend") == "jax"})
    if devices:
        lines += ["", f"† trained with the JAX engine (`--backend jax`) on {', '.join(devices)}; the others with "
                      "TensorFlow on this project's 2-core CPU. Same configs, data and number of iterations; the "
                      "engines' parity is tested, their random streams differ."]
    write_text(HERE / "table.md", "\n".join(lines) + "\n")
    write_readme_section(lines[4:], results)


README_START = "<!-- acdc-table:start (written by results/acdc/run.py) -->"
README_END = "<!-- acdc-table:end -->"


def write_readme_section(table_lines, results):
    """Put the two tables (and what is still to run) between the README's markers, so the
    README shows exactly what table.md shows."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    done = {(r["model"], r["split"], r["labelled_fraction"]) for r in results}
    missing = [run_name(kind, split, fraction) for kind, split, fraction in JOBS if (kind, split, fraction) not in done]
    drops = {r["name"]: largest_drop(r["validation"]) for r in results}
    body = [line.replace("## ", "#### ", 1) if line.startswith("## ") else line for line in table_lines]
    body += ["", f"Largest fall of validation Dice between consecutive epochs after epoch 3, over all runs: "
             f"{max(d for d in drops.values() if d is not None):.3f} (the protocol's target: at most 0.05)."
             if any(d is not None for d in drops.values()) else "",
             "", "Not run yet: " + (", ".join(missing) if missing else "none") + ".", "",
             "![learning curves](results/acdc/learning_curves.png)"]
    start = text.index(README_START) + len(README_START)
    end = text.index(README_END)
    write_text(readme, text[:start] + "\n" + "\n".join(body) + "\n" + text[end:])


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = sorted({r["split"] for r in results})
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4), squeeze=False)
    for ax, split in zip(axes[0], splits):
        for r in sorted((r for r in results if r["split"] == split), key=lambda r: (r["model"], -r["labelled_fraction"])):
            curve = r["validation"]
            note = f" (epochs {r['epochs_done']} of {r['epochs_planned']}, running)" if r.get("partial") else ""
            ax.plot([c["epoch"] for c in curve], [c["val_dice"] for c in curve],
                    {"sdnet": "-", "unet": "--", "gan": ":", "self-training": "-."}[r["model"]],
                    label=f"{NAMES[r['model']]} {r['labelled_fraction'] * 100:g}%{note}")
        ax.set(title=f"split {split}: validation Dice per epoch", xlabel="epoch (100 iterations)",
               ylabel="validation Dice", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "learning_curves.png", dpi=100)


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected a whole number of at least 1")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="?", help="the ACDC training folder (before --only's names)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "acdc-cpu", help="where run directories go")
    parser.add_argument("--only", nargs="*", default=None, help="run only these names (e.g. sdnet-split0-100pct)")
    parser.add_argument("--partial", action="store_true",
                        help="score the best epoch so far of the run named by --only NAME, still training or "
                             "stopped, into results/acdc/partial/NAME-epochE.json (not the table); with "
                             "--ablation, that ablation's run, into results/acdc/ablations/partial/")
    parser.add_argument("--ablation", choices=sorted(ABLATIONS), default=None,
                        help="train and score one ablation of SDNet at split 0, 100%% labels, into "
                             "results/acdc/ablations/ (not the table)")
    parser.add_argument("--fraction", type=float, choices=sorted({f for _, f in PLAN}), default=1.0,
                        help="with --ablation: the labelled fraction of split 0 (default 1.0; the table's fractions)")
    parser.add_argument("--replicate", metavar="NAME", default=None,
                        help="train and score planned run NAME again with --backend on this machine, into "
                             "results/acdc/replicates/NAME-BACKEND-DEVICE.json (not the table): e.g. a run "
                             "first trained on a GPU, repeated on the CPU")
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help="with --replicate: train.seed N on the table run's subjects (data.seed its seed), "
                             "into NAME-seedN-BACKEND-DEVICE.json: the spread from the seed")
    parser.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow",
                        help="the training engine of new runs (jax: e.g. on a GPU machine without TensorFlow; "
                             "each JSON records the engine and device)")
    parser.add_argument("--parallel", type=positive, default=1, metavar="N",
                        help="train N planned runs at once (one device shared; default 1)")
    args = parser.parse_args()
    if args.data is None:
        parser.error("the ACDC training folder is required, before --only (whose names take every word after it)")
    if args.seed is not None and not args.replicate:
        parser.error("--seed goes with --replicate NAME")
    if args.replicate and (args.only or args.ablation or args.partial):
        parser.error("--replicate NAME trains that one run again: without --only, --ablation or --partial")
    if args.partial and (len(args.only or ()) == 1) == bool(args.ablation):
        parser.error("--partial scores one run: name it with --only NAME, or give --ablation")
    if args.partial and args.ablation:
        return score_partial(f"{run_name('sdnet', 0, args.fraction)}-{args.ablation}", args.runs / "ablations",
                             HERE / "ablations" / "partial", table=False, ablation=args.ablation,
                             backend=args.backend)
    if args.ablation:
        return ablation(args.ablation, args.data, args.runs, args.backend, args.fraction)
    asked = set(args.only or ()) | ({args.replicate} if args.replicate else set())
    unknown = sorted(asked - {run_name(*job) for job in JOBS})
    if unknown:
        parser.error(f"{'--replicate' if args.replicate else '--only'} {' '.join(unknown)}: not a planned run; "
                     "planned: " + ", ".join(run_name(*job) for job in JOBS))
    if args.partial:
        if not (args.runs / args.only[0] / "best.json").is_file():
            parser.error(f"--partial: {args.runs / args.only[0]} has no validated epoch yet (best.json)")
        return score_partial(args.only[0], args.runs)
    if args.replicate:
        return replicate(next(job for job in JOBS if run_name(*job) == args.replicate), args.data, args.runs,
                         args.backend, args.seed)
    out = HERE / "runs"
    out.mkdir(exist_ok=True)
    todo = [job for job in JOBS if not (out / f"{run_name(*job)}.json").is_file()
            and (args.only is None or run_name(*job) in args.only)]
    device = device_name(args.backend)
    failed = []
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {run_name(*job): pool.submit(train_and_score, *job, args.data, args.runs, out, args.backend, device)
                   for job in todo}
        for name, future in futures.items():
            try:
                future.result()
            except (Exception, SystemExit) as error:  # the others carry on
                print(f"{name}: {error}", flush=True)
                failed.append(name)
    rebuild()
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)}")


def device_name(backend):
    """What trained the runs, for each JSON: the CPU, or JAX's first device (e.g. an H200)."""
    if backend == "jax":
        probe = "import jax; d = jax.devices()[0]; print(f'{d.platform} {d.device_kind}')"
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() or "jax"
    import platform

    return f"cpu {platform.processor() or platform.machine()}"


_REBUILD = threading.Lock()


def train_and_score(kind, split, fraction, data, runs, out, backend="tensorflow", device=None):
    """One planned run: train (resuming), evaluate, write ``out/<name>.json``, rebuild the table."""
    name = run_name(kind, split, fraction)
    if (out / f"{name}.json").is_file():  # finished since the plan was made (e.g. on another machine)
        print(f"{name}: already in {out / (name + '.json')}; skipped", flush=True)
        return
    run_dir = runs / name
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmds = commands(kind, split, fraction, data, run_dir, backend=backend)
    start = time.perf_counter()
    run(cmds[0], runs / f"{name}.log")
    seconds = time.perf_counter() - start
    run(cmds[1], runs / f"{name}.log")
    result = collect(kind, split, fraction, run_dir, seconds, cmds)
    result.update(backend=backend, device=device)
    write_json(out / f"{name}.json", result)
    print(f"{name}: slice Dice {result['slice_dice']['mean']:.3f}, 3-D Dice {result['dice_3d']['mean']:.3f}, "
          f"valid slices {result['valid_slices_percent']:.1f}%", flush=True)
    with _REBUILD:
        rebuild()


def ablation(which, data, runs, backend="tensorflow", fraction=1.0):
    """SDNet at split 0 and the labelled ``fraction`` (default 100%) with the overrides
    ``ABLATIONS[which]``: trained (resumed when its run directory holds checkpoints), scored, and
    written to ``ablations/sdnet-split0-<fraction>pct-WHICH.json`` beside the protocol run's figures."""
    name = f"{run_name('sdnet', 0, fraction)}-{which}"
    target = HERE / "ablations" / f"{name}.json"
    if target.is_file():  # as the table's runs: a finished ablation is not scored again
        print(f"{name}: already in {target}; skipped", flush=True)
        return
    run_dir = runs / "ablations" / name
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmds = commands("sdnet", 0, fraction, data, run_dir, ABLATIONS[which], backend=backend)
    protocol = runs / run_name("sdnet", 0, fraction)
    if which == "60-epochs" and not run_dir.exists() and (protocol / "summary.json").is_file():
        # the learning rate decays per step, whatever the planned length, so the first 30
        # epochs of a 60-epoch run are the protocol run's: continue from its last checkpoint
        shutil.copytree(protocol, run_dir, ignore=shutil.ignore_patterns("test", "test-epoch*"))
    start = time.perf_counter()
    run(cmds[0], runs / "ablations" / f"{name}.log")
    seconds = time.perf_counter() - start
    run(cmds[1], runs / "ablations" / f"{name}.log")
    result = collect("sdnet", 0, fraction, run_dir, seconds, cmds)
    result.update(name=name, ablation=which, overrides=ABLATIONS[which], backend=backend, device=device_name(backend))
    target.parent.mkdir(exist_ok=True)
    write_json(target, result)
    print(f"{name}: slice Dice {result['slice_dice']['mean']:.3f}, 3-D Dice {result['dice_3d']['mean']:.3f}, "
          f"valid slices {result['valid_slices_percent']:.1f}%", flush=True)


def check_subjects(result, first_path):
    """Record in ``result`` whether its labelled subjects are the first run's (``first_path``, a
    result JSON; ``same_subjects`` None when it is absent or predates the record), and say so
    when they are not: a replicate is meant to differ from its first run in its seed alone."""
    first = json.loads(Path(first_path).read_text()) if Path(first_path).is_file() else {}
    if "labelled_patients" not in first or "labelled_patients" not in result:
        result["same_subjects"] = None
        return
    result["same_subjects"] = first["labelled_patients"] == result["labelled_patients"]
    if not result["same_subjects"]:
        print(f"warning: {result['name']} labelled patients {result['labelled_patients']}, the first run "
              f"{first['labelled_patients']} ({first_path}): not the same subjects", file=sys.stderr, flush=True)


def replicate_name(name, backend="tensorflow", platform="cpu", seed=None):
    """The file name (no suffix) of run ``name``'s replicate in ``replicates/``:
    ``NAME[-seedN]-BACKEND-PLATFORM``, e.g. ``sdnet-split0-1.5pct-seed2-tensorflow-cpu``."""
    return f"{name}{'' if seed is None else f'-seed{seed}'}-{backend}-{platform}"


def replicate(job, data, runs, backend, seed=None):
    """Planned run ``job`` trained and scored again with ``backend`` on this machine, into
    ``replicates/<name>-<backend>-<platform>.json`` beside the table's run: the same config,
    data and seed, another engine or device (e.g. whether what a GPU run did happens on the CPU).
    With ``seed``, ``train.seed`` ``seed`` on the same subjects (``seed_options``), into
    ``replicates/<name>-seed<seed>-<backend>-<platform>.json``."""
    name = run_name(*job)
    device = device_name(backend)
    tag = replicate_name(name, backend, device.split()[0], seed)
    out = HERE / "replicates"
    if (out / f"{tag}.json").is_file():
        print(f"{tag}: already in {out / (tag + '.json')}; skipped", flush=True)
        return
    run_dir = runs / "replicates" / tag
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmds = commands(*job, data, run_dir, backend=backend, seed=seed)
    start = time.perf_counter()
    run(cmds[0], runs / "replicates" / f"{tag}.log")
    seconds = time.perf_counter() - start
    run(cmds[1], runs / "replicates" / f"{tag}.log")
    result = collect(*job, run_dir, seconds, cmds)
    result.update(name=tag, replicate_of=name, backend=backend, device=device)
    if seed is not None:
        result["seed"] = seed
    check_subjects(result, HERE / "runs" / f"{name}.json")
    out.mkdir(exist_ok=True)
    write_json(out / f"{tag}.json", result)
    print(f"{tag}: slice Dice {result['slice_dice']['mean']:.3f}, 3-D Dice {result['dice_3d']['mean']:.3f}, "
          f"valid slices {result['valid_slices_percent']:.1f}%, largest validation drop after epoch 3 "
          f"{largest_drop(result['validation']):.3f}", flush=True)


def score_partial(name, runs, out=HERE / "partial", table=True, ablation=None, backend="tensorflow"):
    """Evaluate run ``runs/name``, not finished (its best validation epoch so far), into
    ``out/NAME-epochE.json`` with which epoch of how many it is; the table takes finished runs
    only, and with ``table`` the learning curves show the partial run as running. ``ablation``
    names the ``ABLATIONS`` entry the run was trained with, with the ``backend`` it trains on."""
    kind, rest = name.split("-split")
    split, fraction = int(rest.split("-")[0]), float(rest.split("-")[1][:-3]) / 100
    run_dir = runs / name
    best = json.loads((run_dir / "best.json").read_text())
    test_dir = run_dir / f"test-epoch{best['epoch']}"
    cmds = commands(kind, split, fraction, "DATA", run_dir, ABLATIONS[ablation] if ablation else ())
    evaluate = ["sdnet-tf", "evaluate", "--run", str(run_dir), "-o", str(test_dir), "--quiet"]
    run(evaluate, runs / f"{name}.log")
    result = collect(kind, split, fraction, run_dir, 0.0, [cmds[0], evaluate], test_dir=test_dir)
    if ablation:
        result.update(name=name, ablation=ablation, overrides=ABLATIONS[ablation], backend=backend,
                      device=device_name(backend))
    import yaml

    planned = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"]
    result.update(partial=True, best_epoch=best["epoch"], epochs_done=len(result["validation"]),
                  epochs_planned=planned)
    target = out / f"{name}-epoch{best['epoch']}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, result)
    if table:
        rebuild()
    print(f"{name} (best epoch {best['epoch']} of {len(result['validation'])} done): slice Dice "
          f"{result['slice_dice']['mean']:.3f}, 3-D Dice {result['dice_3d']['mean']:.3f}, "
          f"valid slices {result['valid_slices_percent']:.1f}%; {target}", flush=True)


def rebuild():
    results = [json.loads(p.read_text()) for p in sorted((HERE / "runs").glob("*.json"))]
    if results:
        write_table(results)
    # the curves also show runs scored before they finished (the latest score of each), until
    # the finished run replaces them
    finished = {r["name"] for r in results}
    partial = {}
    for path in sorted((HERE / "partial").glob("*.json")):
        record = json.loads(path.read_text())
        if record["name"] not in finished and record["epochs_done"] >= partial.get(record["name"], {}).get(
                "epochs_done", -1):
            partial[record["name"]] = record
    if results or partial:
        plot(results + list(partial.values()))


if __name__ == "__main__":
    sys.exit(main())
