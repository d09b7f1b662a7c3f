#!/usr/bin/env python
"""Shape priors on ACDC split 0, and what they do for the U-Net and SDNet at the CPU protocol.

    python results/shape-priors/acdc.py /path/to/ACDC/training [--runs runs] [--only NAME ...]
    python results/shape-priors/acdc.py --table          # rebuild table.md and the curves only
    python results/shape-priors/acdc.py DATA --retrain nvae-acdc-thesis   # its run folder was lost: again
    python results/shape-priors/acdc.py DATA --replicate sdnet-shape-split0-1.5pct   # a second run
    python results/shape-priors/acdc.py DATA --replicate sdnet-shape-split0-1.5pct --seed 2   # another seed
    python results/shape-priors/acdc.py phantom --smoke --runs /tmp/smoke   # every step, 2 steps each

The runs, in this order (each trained with the public command, resuming a run directory that
holds checkpoints; a run whose JSON is in results/shape-priors/acdc/ is skipped):

- ``nvae-acdc-thesis``: the NVAE on the thesis' schedule (configs/nvae-acdc.yaml) in SDNet's
  frame (1.37 mm per pixel, centre crop): the prior of the shape losses below.
- ``unet-shape-split0-100pct``: the U-Net of the ACDC table (configs/unet-acdc-cpu.yaml, 2.0 mm
  per pixel, same seed and subjects) with the NVAE's shape loss: the thesis' ACU-Net.
- ``sdnet-shape-split0-1.5pct`` and ``sdnet-shape-split0-100pct``: SDNet at the CPU protocol
  (configs/sdnet-acdc-cpu.yaml) with the NVAE's shape loss on its segmentor.
- ``sdnet-shape-projection-split0-1.5pct``: the same at 1.5% with the NVAE's label-free shape
  term on the unlabelled images too (``loss.shape_projection`` 1.0): the shape loss above
  sees only the 20 labelled images.
- ``acnn-acdc-cpu``: the ACNN shape autoencoder (configs/acnn-acdc.yaml) at the CPU protocol's
  2.0 mm per pixel, 30 epochs, and ``tl-split0-100pct``: ACNN's T-L network on it
  (configs/tl-acdc.yaml at 2.0 mm), segmenting through the autoencoder's decoder.
- ``nvae-acdc-heart``: the NVAE again with the thesis' framing (``data.framing=heart``: each
  frame cropped about its heart and resized), whose figures compare with the thesis'.
- ``nvae-acdc-kl10``: the NVAE of ``nvae-acdc-thesis`` with the thesis README's KL weights
  10 / 10 / 10 and no spectral regularisation, the last of its differences from the thesis'
  code that no run had separated.

Priors are scored by ``sdnet-tf shape-eval`` (reconstruction Dice per slice and per 3-D frame,
valid samples at temperatures 1.0, 0.8, 0.7 and 0.5, Frechet shape distance, a sample grid),
networks by ``sdnet-tf evaluate --run`` on the 15 test patients (3-D Dice, HD95, valid slices,
as the ACDC table). The baselines without a prior are the ACDC table's runs
(results/acdc/runs/). ``table.md`` and ``learning_curves.png`` are rebuilt after every run.
The commands run are printed and recorded in each JSON, and each network's JSON records which
weights of its prior it used (the prior's ``best.json``). ``--retrain PRIOR`` trains a prior whose
run folder was lost again in the same folder, with the same command and seed, and scores it into
``retrained/PRIOR.json``, beside the first run's JSON; the table shows both. ``--replicate NETWORK``
trains a network again with the same command and seed (and its prior's weights as they are now)
in ``RUNS/replicates/NETWORK``, into ``replicates/NETWORK.json``, a row of the table beside the
first run's, so a difference between two settings can be set against the spread of one; with
``--seed N``, ``train.seed`` N on the same subjects (``data.seed``), into
``replicates/NETWORK-seedN.json``, whose row is set against the network without a prior trained
with that seed (``results/acdc/run.py DATA --replicate BASELINE --seed N``) once that has been
run. ``--smoke`` checks the pipeline: every
run for one epoch of two steps, results under ``RUNS/results`` instead of here.
"""

import argparse
import csv
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

from sdnet_tf.atomic import write_json, write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = HERE / "acdc"
BASELINES = ROOT / "results" / "acdc" / "runs"
BASELINE_REPLICATES = ROOT / "results" / "acdc" / "replicates"  # results/acdc/run.py --replicate

_spec = importlib.util.spec_from_file_location("acdc_run", ROOT / "results" / "acdc" / "run.py")
acdc_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(acdc_run)

NVAE = "nvae-acdc-thesis"
ACNN = "acnn-acdc-cpu"
# the priors: name -> training command after "sdnet-tf"
PRIORS = {
    NVAE: ["prior", "train", "nvae", "-c", "nvae-acdc"],
    ACNN: ["prior", "train", "acnn", "-c", "acnn-acdc", "--set", "data.spacing=2.0", "--epochs", "30"],
    "nvae-acdc-heart": ["prior", "train", "nvae", "-c", "nvae-acdc", "--set", "data.framing=heart"],
    # the thesis README's "good configuration": KL weights 10 / 10 / 10, no spectral regularisation
    "nvae-acdc-kl10": ["prior", "train", "nvae", "-c", "nvae-acdc", "--set", "train.kl_betas=[10.0,10.0,10.0]",
                       "--set", "train.spectral_weight=0"],
}
# the networks given a prior: name -> (kind, labelled fraction, the prior, the ACDC table's run
# without it, training command after "sdnet-tf")
NETWORKS = {
    "unet-shape-split0-100pct": ("unet", 1.0, NVAE, "unet-split0-100pct",
                                 ["baseline", "train", "unet", "-c", "unet-acdc-cpu", "--split", "0",
                                  "--set", "data.labelled_fraction=1.0"]),
    "sdnet-shape-split0-1.5pct": ("sdnet", 0.015, NVAE, "sdnet-split0-1.5pct",
                                  ["train", "acdc", "-c", "sdnet-acdc-cpu", "--split", "0",
                                   "--labelled-fraction", "0.015"]),
    # the label-free shape term on the unlabelled images too (loss.shape_projection, weight 1: a
    # tenth of the labelled Dice term's; a first setting, not tuned)
    "sdnet-shape-projection-split0-1.5pct": ("sdnet", 0.015, NVAE, "sdnet-split0-1.5pct",
                                             ["train", "acdc", "-c", "sdnet-acdc-cpu", "--split", "0",
                                              "--labelled-fraction", "0.015", "--set", "loss.shape_projection=1.0"]),
    "sdnet-shape-split0-100pct": ("sdnet", 1.0, NVAE, "sdnet-split0-100pct",
                                  ["train", "acdc", "-c", "sdnet-acdc-cpu", "--split", "0",
                                   "--labelled-fraction", "1.0"]),
    "tl-split0-100pct": ("tl", 1.0, ACNN, "unet-split0-100pct",
                         ["baseline", "train", "tl", "-c", "tl-acdc", "--split", "0", "--set", "data.spacing=2.0"]),
}
ORDER = [NVAE, "unet-shape-split0-100pct", "sdnet-shape-split0-1.5pct", "sdnet-shape-projection-split0-1.5pct",
         "sdnet-shape-split0-100pct", ACNN,
         "tl-split0-100pct", "nvae-acdc-heart", "nvae-acdc-kl10"]
# the thesis' Default-N (3-D Dice per frame on the 50 ACDC test patients; valid samples at T = 1)
THESIS = {"dice_frames": {"RV": 0.976, "MYO": 0.953, "LV": 0.978, "mean": 0.969}, "valid_samples_t1": 0.965}
TEMPERATURES = ("1", "0.8", "0.7", "0.5")
SMOKE = []  # extra options of every training command (--smoke)
BASELINE_ROWS = [True]  # the ACDC table's runs beside ours (not for --smoke on other data)
SAMPLES = []  # shape-eval's options (--smoke: fewer samples)


def _smoke(command):
    """One epoch of two steps: ``--smoke``'s overrides for ``command``'s kind of run."""
    steps = "train.iterations_per_epoch" if command[:2] == ["train", "acdc"] else "train.steps_per_epoch"
    return ["--epochs", "1", "--set", f"{steps}=2"] if SMOKE else []


def run(command, log):
    """``acdc_run.run``, and on a failure the last lines of the log, where the reason is."""
    try:
        acdc_run.run(command, log)
    except SystemExit:
        lines = Path(log).read_text(errors="replace").strip().splitlines()
        print("\n".join(lines[-5:]), file=sys.stderr, flush=True)
        raise


def results_dir(retrained=False, replicate=False):
    """Where a run's JSON goes: ``OUT``, ``OUT/retrained`` for a prior trained again, or
    ``OUT/replicates`` for a network trained again (``--replicate``)."""
    return OUT / "retrained" if retrained else OUT / "replicates" if replicate else OUT


def train_prior(name, data, runs, retrained=False):
    """Train (or resume) the prior ``runs/name``, score it with ``shape-eval`` and write its JSON,
    samples and history to ``results_dir(retrained)``."""
    out = results_dir(retrained)
    run_dir = runs / name
    train = ["sdnet-tf", *PRIORS[name], "--data", str(data), "-o", str(run_dir), "--quiet", *_smoke(PRIORS[name])]
    scored = runs / f"{name}-{'retrained-' if retrained else ''}shape-eval"
    # FRDS in SDNet's frame only: a heart-framed NVAE would need an embedder of its own (about
    # 35 minutes on the CPU), whose distances compare with no other run; the FSD, in mm at each
    # frame's pixel size, compares across framings (`shape-eval RUN --frds` adds it by hand)
    frds = ["--frds"] if PRIORS[name][2] == "nvae" and "data.framing=heart" not in PRIORS[name] else []
    evaluate = ["sdnet-tf", "shape-eval", str(run_dir), "-o", str(scored), "--quiet", *frds, *SAMPLES]
    start = time.perf_counter()
    run(train, runs / f"{name}.log")
    seconds = time.perf_counter() - start
    run(evaluate, runs / f"{name}.log")
    result = json.loads((scored / f"{name}.json").read_text())
    result.update(name=name, commands=[" ".join(train), " ".join(evaluate)],
                  train_seconds_this_invocation=round(seconds, 1))
    if retrained:
        result["retrained"] = True
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", result)
    for extra in (f"{name}-samples.png",):
        if (scored / extra).is_file():
            shutil.copyfile(scored / extra, out / extra)
    shutil.copyfile(run_dir / "history.csv", out / f"{name}-history.csv")
    print(f"{name}: reconstruction Dice {result['reconstruction_dice_frames']['mean']:.3f} per frame, "
          f"{result['reconstruction_dice_slices']['mean']:.3f} per slice", flush=True)


def replicate_tag(name, seed=None):
    """The file name of a network's replicate: ``name``, or ``name-seedN`` with another seed."""
    return name if seed is None else f"{name}-seed{seed}"


def train_network(name, data, runs, replicate=False, seed=None):
    """Train (or resume) the network ``runs/name`` with its prior, evaluate it on the test
    patients and write its JSON and history to ``results_dir(replicate=replicate)``; with
    ``replicate``, the same command again in ``runs/replicates/name`` (the prior's weights as they
    are now in ``runs/PRIOR``, which the JSON records), and with ``seed`` too, ``train.seed``
    ``seed`` on the same subjects (``runs/replicates/name-seedN``)."""
    kind, fraction, prior, _, command = NETWORKS[name]
    out = results_dir(replicate=replicate)
    tag = replicate_tag(name, seed)
    run_dir = runs / "replicates" / tag if replicate else runs / name
    log = run_dir.parent / f"{tag}.log"
    seeded = [] if seed is None else acdc_run.seed_options(command[command.index("-c") + 1], seed)
    train = ["sdnet-tf", *command, "--data", str(data), "--shape-prior", str(runs / prior), "-o", str(run_dir),
             "--quiet", *_smoke(command), *seeded]
    evaluate = ["sdnet-tf", "evaluate", "--run", str(run_dir), "-o", str(run_dir / "test"), "--quiet"]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run(train, log)
    seconds = time.perf_counter() - start
    run(evaluate, log)
    result = acdc_run.collect("sdnet" if kind == "sdnet" else "unet", 0, fraction, run_dir, seconds,
                              [train, evaluate])
    result.update(name=tag, model=kind, shape_prior=prior)
    if replicate:
        result["replicate_of"] = name
        acdc_run.check_subjects(result, OUT / f"{name}.json")
    if seed is not None:
        result["seed"] = seed
    # which weights of the prior: its folder may have been trained again (--retrain)
    result["shape_prior_best"] = json.loads((runs / prior / "best.json").read_text())
    omega = run_dir / "omega.json"
    if omega.is_file():
        result["omega"] = json.loads(omega.read_text())["omega"]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{tag}.json", result)
    shutil.copyfile(run_dir / "history.csv", out / f"{tag}-history.csv")
    print(f"{tag}{' (again)' if replicate else ''}: 3-D Dice {result['dice_3d']['mean']:.3f}, "
          f"valid slices {result['valid_slices_percent']:.1f}%", flush=True)


def _load(name, folder=None):
    path = (folder or OUT) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _f(value, digits=3, scale=1.0):
    return "—" if value is None else f"{value * scale:.{digits}f}"


def prior_rows():
    lines = ["| prior | framing | epochs | recon Dice per frame RV / MYO / LV | mean | per slice | valid recon | "
             "valid samples T=1 / 0.8 / 0.7 / 0.5 | FSD T=1 (real: train vs test) | FRDS T=1 (real) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for name in PRIORS:  # each prior, then its run trained again (--retrain) if there is one
        rows.append((name, _load(name)))
        if (again := _load(name, results_dir(retrained=True))) is not None:
            rows.append((f"{name}, retrained", again))
    for name, r in rows:
        if r is None:
            lines.append(f"| {name} | | not run yet | | | | | | | |")
            continue
        frames, slices = r["reconstruction_dice_frames"], r["reconstruction_dice_slices"]
        samples = r.get("samples") or {}
        valid = " / ".join(_f(samples[t]["valid"], 1, 100) + "%" if t in samples else "—" for t in TEMPERATURES)
        fsd = samples.get("1", {}).get("frechet_shape_distance")
        frds = samples.get("1", {}).get("frds")
        epochs = f"{r['best']['epoch']} (best) of {r['summary']['epochs']}"
        lines.append(f"| {name} | {r.get('framing', 'spacing')} | {epochs} | "
                     f"{_f(frames['RV'])} / {_f(frames['MYO'])} / {_f(frames['LV'])} | **{_f(frames['mean'])}** | "
                     f"{_f(slices['mean'])} | {_f(r['valid_reconstructions'], 1, 100)}% | {valid} | "
                     f"{_f(fsd, 1)} ({_f(r['frechet_shape_distance_training_vs_test'], 1)}) | "
                     f"{_f(frds, 1)} ({_f(r.get('frds_training_vs_test'), 1)}) |")
    t = THESIS["dice_frames"]
    lines.append(f"| thesis Default-N | heart | 100 | {t['RV']} / {t['MYO']} / {t['LV']} | {t['mean']} | — | — | "
                 f"{THESIS['valid_samples_t1'] * 100:.1f}% / — / — / — | — | 33.2 (another embedder) |")
    return lines


def _baseline_of(baseline, seed=None):
    """The run without a prior that a network's row is set against: with ``seed`` (a replicate
    trained with ``train.seed`` seed on the same subjects), the baseline's replicate with that
    seed on the TensorFlow engine and the CPU if it has been run (``results/acdc/run.py
    --replicate BASELINE --seed N``), else the ACDC table's run. Returns (label, result or None)."""
    if seed is not None:
        same_seed = _load(acdc_run.replicate_name(baseline, seed=seed), BASELINE_REPLICATES)
        if same_seed is not None:
            return f"{baseline}, seed {seed}", same_seed
    return baseline, _load(baseline, BASELINES)


def network_rows():
    lines = ["| network | labelled | prior | 3-D Dice (LV / RV / MYO) | per-slice Dice | HD95 mm LV / RV / MYO | "
             "valid slices | against the network without a prior (ACDC table; another seed: its run with that seed) |",
             "|---|---|---|---|---|---|---|---|"]
    rows = []
    for name, (kind, fraction, prior, baseline, _) in NETWORKS.items():  # each run, then its replicate
        rows.append((name, fraction, prior, baseline, _load(name)))
        folder = results_dir(replicate=True)
        for path in [folder / f"{name}.json", *sorted(folder.glob(f"{name}-seed*.json"))]:
            if path.is_file():
                again = json.loads(path.read_text())
                weights = again.get("shape_prior_best", {}).get("epoch")
                label = f"{name}, again" + (f", seed {again['seed']}" if "seed" in again else "")
                rows.append((label, fraction, f"{prior}{f' (epoch {weights})' if weights else ''}", baseline, again))
    for name, fraction, prior, baseline, r in rows:
        if BASELINE_ROWS[0] and r is not None:
            baseline, b = _baseline_of(baseline, r.get("seed"))
        else:
            b = None
        label = f"{fraction * 100:g}%"
        if r is None:
            lines.append(f"| {name} | {label} | {prior} | not run yet | | | | |")
            continue
        d, h = r["dice_3d"], r["hd95_mm"]
        versus = "—"
        if b is not None:
            versus = (f"{baseline}: 3-D Dice {d['mean'] - b['dice_3d']['mean']:+.3f}, valid slices "
                      f"{r['valid_slices_percent'] - b['valid_slices_percent']:+.1f} points")
        lines.append(f"| {name} | {label} | {prior} | **{_f(d['mean'])}** ({_f(d['LV'])} / {_f(d['RV'])} / "
                     f"{_f(d['MYO'])}) | {_f(r['slice_dice']['mean'], 1, 100)}% | "
                     f"{_f(h['LV'], 1)} / {_f(h['RV'], 1)} / {_f(h['MYO'], 1)} | {_f(r['valid_slices_percent'], 1)}% | "
                     f"{versus} |")
    for baseline in sorted({n[3] for n in NETWORKS.values()}) if BASELINE_ROWS[0] else ():
        runs = [(f"{baseline} (ACDC table)", _load(baseline, BASELINES)),
                (f"{baseline}, same-seed rerun", _load(acdc_run.replicate_name(baseline), BASELINE_REPLICATES))]
        for path in sorted(BASELINE_REPLICATES.glob(f"{acdc_run.replicate_name(baseline, seed='*')}.json")):
            seeded = json.loads(path.read_text())
            runs.append((f"{baseline}, seed {seeded['seed']}", seeded))
        for label, b in runs:
            if b is None:
                continue
            d = b["dice_3d"]
            lines.append(f"| {label} | {b['labelled_fraction'] * 100:g}% | none | {_f(d['mean'])} "
                         f"({_f(d['LV'])} / {_f(d['RV'])} / {_f(d['MYO'])}) | {_f(b['slice_dice']['mean'], 1, 100)}% | "
                         f"{_f(b['hd95_mm']['LV'], 1)} / {_f(b['hd95_mm']['RV'], 1)} / {_f(b['hd95_mm']['MYO'], 1)} | "
                         f"{_f(b['valid_slices_percent'], 1)}% | |")
    return lines


def write_table():
    lines = ["# Shape priors on ACDC split 0", "",
             "Made by `python results/shape-priors/acdc.py /path/to/ACDC/training`; every figure is on split 0's "
             "15 test patients (ED and ES).", "", "## Priors", "", *prior_rows(), "",
             "Reconstruction Dice per 3-D frame is the thesis' figure (its code scores whole volumes); per slice "
             "averages slices. FSD: Frechet shape distance of 20 shape descriptors; FRDS: the thesis' metric with "
             "this project's SimCLR embedder (README, Shape priors, Metrics).", "",
             "## Segmentation with a shape prior", "", *network_rows(), ""]
    write_text(OUT / "table.md", "\n".join(lines))


def plot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, name in enumerate(PRIORS):
        for label, path, style in ((name, OUT / f"{name}-history.csv", "-"),
                                   (f"{name}, retrained", results_dir(retrained=True) / f"{name}-history.csv", ":")):
            if path.is_file():
                rows = list(csv.DictReader(open(path)))
                left.plot([int(r["epoch"]) for r in rows], [float(r["val_dice_mean"]) for r in rows], label=label,
                          color=f"C{i}", linestyle=style)
    left.set(xlabel="epoch", ylabel="validation reconstruction Dice (per slice)", title="priors")
    drawn = set()
    for name, (_, _, _, baseline, _) in NETWORKS.items():
        result = _load(name)
        if result is None or not result.get("validation"):
            continue  # a baseline is drawn beside its network only
        colour = f"C{len(drawn) % 10}"
        for label, run in ((name, result), (baseline, _load(baseline, BASELINES))):
            if label in drawn or run is None or not run.get("validation"):
                continue
            drawn.add(label)
            curve = run["validation"]
            right.plot([r["epoch"] for r in curve], [r["val_dice"] for r in curve], label=label, color=colour,
                       linestyle="-" if label == name else ":")
    right.set(xlabel="epoch", ylabel="validation Dice", title="networks (dotted: without a prior)")
    for axis in (left, right):
        if axis.lines:
            axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "learning_curves.png", dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", type=Path, help="an ACDC training folder")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "shape-priors")
    parser.add_argument("--only", nargs="+", choices=ORDER, help="these runs only, in the planned order")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--retrain", metavar="PRIOR", choices=list(PRIORS),
                        help="train PRIOR again in RUNS/PRIOR (same command and seed; for a prior whose run folder "
                             "was lost, so that the networks after it have weights) and score it into "
                             "results/shape-priors/acdc/retrained/PRIOR.json, leaving the first run's JSON as it is")
    again.add_argument("--replicate", metavar="NETWORK", choices=list(NETWORKS),
                        help="train NETWORK again with the same command and seed in RUNS/replicates/NETWORK, with "
                             "its prior's weights as they are in RUNS/PRIOR, and score it into "
                             "results/shape-priors/acdc/replicates/NETWORK.json (a second run of the table's)")
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help="with --replicate: train.seed N on the same subjects (data.seed the config's seed), "
                             "into replicates/NETWORK-seedN.json: the spread from the seed")
    parser.add_argument("--table", action="store_true", help="rebuild table.md and the curves, train nothing")
    parser.add_argument("--smoke", action="store_true",
                        help="check the pipeline: one epoch of two steps per run, results in RUNS/results")
    args = parser.parse_args()
    if args.seed is not None and not args.replicate:
        parser.error("--seed goes with --replicate NETWORK")
    if (args.replicate or args.retrain) and (args.only or args.table):
        parser.error(f"{'--replicate' if args.replicate else '--retrain'} trains one run again: without --only or "
                     "--table")
    global OUT
    if not args.table:
        if args.data is None:
            parser.error("give an ACDC training folder, or 'phantom' (with --smoke), or --table")
        if not (args.data.is_dir() or str(args.data) == "phantom"):
            parser.error(f"data folder {args.data}: not a folder")
    # the commands run in the repository's root: every path absolute
    args.runs = args.runs.expanduser().resolve()
    if args.data is not None and str(args.data) != "phantom":
        args.data = args.data.expanduser().resolve()
    if args.smoke:
        SMOKE.append(True)
        SAMPLES.extend(["--samples", "100", "--temperature", "1.0", "--frds-epochs", "1"])
        OUT = args.runs / "results"
        BASELINE_ROWS[0] = False  # a smoke run's figures are not comparable with the ACDC table
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.table:
        args.runs.mkdir(parents=True, exist_ok=True)
        if args.retrain:
            jobs = [(args.retrain, "retrained")]
        elif args.replicate:
            jobs = [(args.replicate, "replicate")]
        else:
            jobs = [(name, "planned") for name in ORDER if not args.only or name in args.only]
        for name, mode in jobs:
            tag = replicate_tag(name, args.seed) if mode == "replicate" else name
            done = results_dir(mode == "retrained", mode == "replicate") / f"{tag}.json"
            if done.is_file():
                print(f"{name}: already in {done}; skipped", flush=True)
                continue
            if name in PRIORS:
                train_prior(name, args.data, args.runs, mode == "retrained")
            else:
                train_network(name, args.data, args.runs, mode == "replicate", args.seed)
            write_table()
            plot()
    write_table()
    plot()
    print(f"table: {OUT / 'table.md'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
