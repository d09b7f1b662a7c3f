"""Held-out evaluation of shape priors and of the U-Net baseline (``sdnet-tf shape-eval``).

For a prior (NVAE or shape autoencoder) run directory:

- reconstruction Dice per class on the split's test masks (deterministic codes, argmax), per
  slice and per 3-D frame (the thesis' figure: its code scores whole volumes);
- the share of anatomically valid reconstructions, and of the test references;
- NVAE only: ``samples`` masks drawn at each temperature (1.0, 0.8, 0.7 and 0.5, the thesis'),
  their share of anatomically valid slices (and which checks fail) and their Frechet shape
  distance to the test masks, beside the distance between the training and the test masks
  (what real masks score), and a grid of samples per temperature
  (``<output>/<run name>-samples.png``); with ``frds``, also each temperature's FRDS (the
  thesis' metric) by the split's SimCLR embedder (``training.embedder_trainer``);
- ACDC pathology group from the codes: every patient's ED and ES slices are encoded, each
  slice's codes pooled (``pool_codes``), averaged over the frame's slices, ED and ES
  concatenated; random forest, stratified 10-fold cross-validation over all patients.

For a U-Net or a T-L network run directory (the T-L network segments through the frozen ACNN
autoencoder's decoder): test Dice per class (per slice and per frame) and the share of
anatomically valid predicted slices.

Results go to ``<output>/<run name>.json``; ``table`` renders several of them as Markdown.
"""

import json
import logging
import time
from pathlib import Path

import numpy as np

from sdnet_tf.atomic import write_json
from sdnet_tf.data.masks import prior_one_hot, sample_pixel_mm
from sdnet_tf.metrics.overlap import CLASSES, dice
from sdnet_tf.metrics.shape import (frechet_distance, frechet_shape_distance, pathology_cv, pool_codes,
                                    reconstruction_dice, valid_fraction)
from sdnet_tf.metrics.validity import check_slice

log = logging.getLogger("sdnet_tf.shape_eval")


def frame_dice(pred, ref, patients, phases):
    """Dice of each class per 3-D frame (a patient's ED or ES slices stacked), averaged over
    frames (frames where both lack the class left out), and the mean over classes."""
    scores = {name: [] for name in CLASSES}
    for patient, phase in sorted(set(zip(patients.tolist(), phases.tolist()))):
        index = (patients == patient) & (phases == phase)
        for name, label in CLASSES.items():
            scores[name].append(dice(pred[index] == label, ref[index] == label))
    out = {name: float(np.nanmean(values)) for name, values in scores.items()}
    out["mean"] = float(np.mean([out[name] for name in CLASSES]))
    return out


def run_kind(run_dir):
    """"nvae", "acnn", "unet" or "tl", from a run directory's config (``inference.run_kind``).

    Raises:
        DataError: not a run directory, an SDNet run or a U-Net / GAN baseline of
            ``sdnet-tf train`` (``sdnet-tf evaluate --run`` scores those).
    """
    from sdnet_tf.data.arrays import DataError
    from sdnet_tf.inference import run_kind as kind_of

    kind = kind_of(run_dir)
    if kind in ("sdnet", "sdnet2018", "unet_gan"):
        what = ("a U-Net or GAN baseline run of sdnet-tf train (model.kind unet_gan)" if kind == "unet_gan"
                else "an SDNet run")
        raise DataError(f"{run_dir}: {what}; shape-eval takes shape-prior, U-Net (baseline train unet) and T-L runs "
                        "(sdnet-tf evaluate --run scores this one)")
    return kind


def pathology_features(code_fn, sets):
    """Patient features from codes: per slice ``pool_codes``, mean over a frame's slices, ED
    then ES concatenated. Returns ``(patients, features)``."""
    per_patient = {}
    for subset in sets.values():
        pooled = pool_codes(_codes_batched(code_fn, prior_one_hot(subset.labels)))
        for patient in np.unique(subset.patients):
            rows = []
            for phase in (0, 1):
                index = (subset.patients == patient) & (subset.phases == phase)
                rows.append(pooled[index].mean(axis=0))
            per_patient[int(patient)] = np.concatenate(rows)
    numbers = sorted(per_patient)
    return numbers, np.stack([per_patient[n] for n in numbers])


def _codes_batched(code_fn, masks, batch_size=32):
    parts = [[np.asarray(c) for c in code_fn(masks[i:i + batch_size])] for i in range(0, len(masks), batch_size)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


TEMPERATURES = (1.0, 0.8, 0.7, 0.5)  # the thesis' sampling temperatures
GRID_SAMPLES = 8  # samples per temperature in the figure


def draw_samples(model, count, temperature, seed=0):
    """(count, H, W) label maps drawn from an NVAE at ``temperature``, in batches of 100 with
    seeds ``seed``, ``seed + 100``, ... (the samples every shape-eval figure is computed on)."""
    from keras import ops

    return np.concatenate([np.asarray(ops.argmax(model.sample(min(100, count - i), temperature, seed=seed + i), -1))
                           for i in range(0, count, 100)])


def reconstruct_labels(model, labels):
    """(N, H, W) label maps of a prior's reconstructions of ``labels`` (N, H, W): posterior
    means (no sampling), BatchNorm in inference mode, the most likely label per pixel, in
    batches (the reconstructions every shape-eval figure is computed on)."""
    from keras import ops

    from sdnet_tf.inference import batched

    return np.asarray(batched(lambda masks: ops.argmax(model.reconstruct(masks, training=False), axis=-1),
                              prior_one_hot(labels)))


def evaluate_prior(run_dir, samples=1000, temperatures=TEMPERATURES, folds=10, seed=0, progress=True,
                   figure=None, frds=None):
    """The metrics of a prior run (see the module docstring) as a JSON-able dict; with
    ``figure`` (a PNG path) and an NVAE, also a grid of the first ``GRID_SAMPLES`` samples
    drawn at each temperature, one row per temperature. With ``frds`` and an NVAE, also the FRDS of
    each temperature's samples against the test masks: ``frds(training labels, validation
    labels, cache folder)`` returns ``(embed, info)``, ``embed`` mapping (N, H, W) label maps to
    (N, D) features (the split's SimCLR embedder, ``training.embedder_trainer.frds_function``;
    scoring trains nothing itself)."""
    from sdnet_tf.data.sources import mask_sets
    from sdnet_tf.inference import load_prior

    start = time.perf_counter()
    model, config = load_prior(run_dir)
    sets, groups, description = mask_sets(config, progress)
    test = sets["test"]
    # each test slice at its own pixel size (heart framing: its frame's); samples at the training masks' median
    test_spacing, sample_mm = test.pixel_spacing(), sample_pixel_mm(sets)
    sample_spacing = (sample_mm, sample_mm)
    predicted = reconstruct_labels(model, test.labels)
    result = {"run": str(run_dir), "kind": config.model.kind, "split": config.data.split,
              "framing": config.data.framing,
              "test_patients": description["test_patients"], "test_slices": len(test),
              "trainable_parameters": _parameter_count(model),
              "pixel_mm": {"test_median": round(float(np.median(test.pixel_mm)), 4),
                           "test_range": [round(float(test.pixel_mm.min()), 4), round(float(test.pixel_mm.max()), 4)],
                           "samples": round(sample_mm, 4)},
              "reconstruction_dice_slices": reconstruction_dice(predicted, test.labels),
              "reconstruction_dice_frames": frame_dice(predicted, test.labels, test.patients, test.phases),
              "valid_reconstructions": valid_fraction(predicted, test_spacing)["valid"],
              "valid_references": valid_fraction(test.labels, test_spacing)["valid"]}
    result["frechet_shape_distance_training_vs_test"] = frechet_shape_distance(
        test.labels, sets["training"].labels, test_spacing, sets["training"].pixel_spacing())
    embed = None
    if config.model.kind == "nvae" and frds is not None:
        from sdnet_tf.data.sources import cache_dir

        embed, result["frds_embedder"] = frds(sets["training"].labels, sets["validation"].labels,
                                              cache_dir(config).parent / "frds")
        real_features = embed(test.labels)
        result["frds_training_vs_test"] = frechet_distance(real_features, embed(sets["training"].labels))
    if config.model.kind == "nvae":
        result["samples"] = {}
        grid = {}
        for t in temperatures:
            drawn = draw_samples(model, samples, t, seed)
            grid[t] = drawn[:GRID_SAMPLES]
            validity = valid_fraction(drawn, sample_spacing)
            result["samples"][f"{t:g}"] = {"count": samples, "valid": validity["valid"],
                                           "failures": validity["failures"],
                                           "frechet_shape_distance": frechet_shape_distance(test.labels, drawn,
                                                                                            test_spacing,
                                                                                            sample_spacing)}
            if embed is not None:
                result["samples"][f"{t:g}"]["frds"] = frechet_distance(real_features, embed(drawn))
        if figure is not None:
            sample_grid(grid, lambda labels: not any(check_slice(labels, sample_spacing).values()), figure)
            result["sample_figure"] = str(figure)
    numbers, features = pathology_features(lambda m: model.codes(m, training=False), sets)
    labels = np.array([groups[n] for n in numbers])
    try:
        result["pathology"] = {"features": int(features.shape[1]), "patients": len(numbers),
                               **pathology_cv(features, labels, folds=folds, seed=seed)}
    except ValueError as error:  # a cohort without ten patients per group (the phantom)
        result["pathology"] = {"skipped": str(error)}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def sample_grid(samples, is_valid, path):
    """A PNG of NVAE samples: one row per temperature (``samples``: temperature -> (N, H, W)
    label maps), each sample titled valid or invalid by ``is_valid`` (the seven checks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdnet_tf.apps.figures import overlay, save_figure

    rows, columns = len(samples), max(len(s) for s in samples.values())
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.45 * rows), squeeze=False)
    for row, (temperature, drawn) in zip(axes, samples.items()):
        for column, ax in enumerate(row):
            ax.axis("off")
            if column < len(drawn):
                ax.imshow(overlay(np.full(drawn[column].shape, -1.0), drawn[column], alpha=1.0),
                          interpolation="nearest")
                ax.set_title("valid" if is_valid(drawn[column]) else "invalid", fontsize=6)
        row[0].text(-0.15, 0.5, f"T = {temperature:g}", transform=row[0].transAxes, ha="right", va="center",
                    fontsize=8)
    fig.suptitle("NVAE samples per temperature (RV red, MYO green, LV blue)", fontsize=8)
    return save_figure(fig, path)


def _parameter_count(model):
    return int(sum(int(np.prod(v.shape)) for v in model.variables if "moving" not in v.path
                   and "seed_generator" not in v.path))


SEGMENTATION_KINDS = ("unet", "tl")  # the runs of the segmentation table


def evaluate_unet(run_dir, progress=True):
    """Test Dice (per slice and per frame) and valid-slice share of a U-Net or a T-L network
    run (``kind`` "unet" or "tl" in the result); a T-L network's masks are its frozen
    autoencoder's decodings of the codes it predicts."""
    from keras import ops

    from sdnet_tf.data.sources import mask_sets
    from sdnet_tf.inference import batched, load_segmenter

    start = time.perf_counter()
    kind, segmenter, config = load_segmenter(run_dir)
    model = segmenter.unet  # the network whose call is the softmax over (background, RV, MYO, LV)
    sets, _, description = mask_sets(config, progress)
    test = sets["test"]
    predicted = batched(lambda x: ops.argmax(model(x, training=False), axis=-1), test.images)
    spacing = (config.data.spacing, config.data.spacing)
    validity = valid_fraction(predicted, spacing)
    return {"run": str(run_dir), "kind": kind, "shape_prior": config.loss.shape_prior,
            "split": config.data.split, "test_patients": description["test_patients"], "test_slices": len(test),
            "dice_slices": reconstruction_dice(predicted, test.labels),
            "dice_frames": frame_dice(predicted, test.labels, test.patients, test.phases),
            "valid_slices": validity["valid"], "failures": validity["failures"],
            "valid_references": valid_fraction(test.labels, spacing)["valid"],
            "seconds": round(time.perf_counter() - start, 1)}


def _best_fingerprint(run_dir):
    """What identifies the best weights: ``best.json``'s text and ``best.npz``'s file identity
    (both are replaced atomically, so a new best epoch changes the inode)."""
    path = run_dir / "best.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no best.npz (has the run finished an epoch?)")
    stat = path.stat()
    record = run_dir / "best.json"
    return record.read_text() if record.is_file() else "", stat.st_ino, stat.st_mtime_ns, stat.st_size


def evaluate_run(run_dir, output, samples=1000, progress=True, attempts=3, temperatures=TEMPERATURES, frds=None):
    """Evaluate one run directory (prior or U-Net) and write ``<output>/<name>.json``.

    A run may still be training: when it saves a new best epoch during the evaluation, the
    evaluation is repeated (up to ``attempts`` times), so the figures and the ``best``
    record written with them always belong to the same weights.
    """
    run_dir = Path(run_dir)
    kind = run_kind(run_dir)
    for _ in range(attempts):
        before = _best_fingerprint(run_dir)
        result = evaluate_unet(run_dir, progress) if kind in SEGMENTATION_KINDS else evaluate_prior(
            run_dir, samples, temperatures, progress=progress, figure=Path(output) / f"{run_dir.name}-samples.png",
            frds=frds)
        if _best_fingerprint(run_dir) == before:
            break
        log.warning("%s saved a new best epoch during its evaluation; evaluating it again", run_dir)
    else:
        raise RuntimeError(f"{run_dir}: its best weights changed during each of {attempts} evaluations; "
                           "evaluate it when the run has stopped")
    if before[0]:
        result["best"] = json.loads(before[0])
    summary = run_dir / "summary.json"
    if summary.is_file():
        result["summary"] = json.loads(summary.read_text())
    write_json(Path(output) / f"{run_dir.name}.json", result)
    return result


def evaluate_runs(runs, output, samples=1000, temperatures=None, progress=True, report=None, frds=None):
    """``evaluate_run`` for each of ``runs``, then ``<output>/table.md`` and
    ``<output>/learning_curves.png`` of those that could be read; a run that cannot be read
    is reported (``report(run, error)``; ``report(run, None)`` after each success) and the
    others are still evaluated. Returns ``(results, failed runs)``."""
    from sdnet_tf.atomic import write_text
    from sdnet_tf.data.arrays import DataError

    results, failed = [], []
    for run in runs:
        try:
            results.append(evaluate_run(run, output, samples=samples, progress=progress,
                                        temperatures=temperatures or TEMPERATURES, frds=frds))
            error = None
        except (FileNotFoundError, DataError, ValueError) as caught:
            failed.append(run)
            error = caught
        if report is not None:
            report(run, error)
    if results:
        write_text(Path(output) / "table.md", table(results))
        histories = {Path(r["run"]).name: Path(r["run"]) / "history.csv" for r in results
                     if (Path(r["run"]) / "history.csv").is_file()}
        if histories:
            plot_histories(histories, Path(output) / "learning_curves.png")
    return results, failed


def _f(value, digits=3):
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def table(results):
    """Markdown tables of prior results and of segmentation (U-Net, T-L network) results (dicts
    of ``evaluate_run``)."""
    lines = []
    priors = [r for r in results if r["kind"] not in SEGMENTATION_KINDS]
    if priors:
        shown = sorted({t for r in priors for t in r.get("samples", {})}, key=float, reverse=True)  # NVAE only
        with_frds = any("frds_training_vs_test" in r for r in priors)
        header = (["prior", "recon Dice per slice RV", "MYO", "LV", "mean", "mean per frame", "valid recon"]
                  + [f"valid samples T={t} (FSD{', FRDS' if with_frds else ''})" for t in shown]
                  + ["FSD real: train vs test"] + (["FRDS real: train vs test"] if with_frds else [])
                  + ["pathology CV (chance)"])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in priors:
            d = r["reconstruction_dice_slices"]
            p = r["pathology"]
            cells = []
            for t in shown:
                s = r.get("samples", {}).get(t)
                extra = f", {_f(s['frds'], 1)}" if s and "frds" in s else (", —" if with_frds else "")
                cells.append(f"{_f(100 * s['valid'], 1)}% ({_f(s['frechet_shape_distance'], 1)}{extra})" if s else "—")
            patho = f"{_f(p['mean'])} ± {_f(p['std'])} ({_f(p['chance'])})" if "mean" in p else "—"
            name = r["kind"] + (" (heart-framed)" if r.get("framing") == "heart" else "")
            row = ([name, _f(d["RV"]), _f(d["MYO"]), _f(d["LV"]), _f(d["mean"]),
                    _f(r["reconstruction_dice_frames"]["mean"]), f"{_f(100 * r['valid_reconstructions'], 1)}%"]
                   + cells + [_f(r["frechet_shape_distance_training_vs_test"], 1)]
                   + ([_f(r.get("frds_training_vs_test"), 1)] if with_frds else []) + [patho])
            lines.append("| " + " | ".join(row) + " |")
    segmenters = [r for r in results if r["kind"] in SEGMENTATION_KINDS]
    if segmenters:
        if lines:
            lines.append("")
        lines += ["| segmentation | Dice RV | MYO | LV | mean (per slice) | mean (per frame) | valid slices |",
                  "|---|---|---|---|---|---|---|"]
        for r in segmenters:
            d = r["dice_slices"]
            if r["kind"] == "tl":
                name = "T-L network (through the ACNN decoder)"
            else:
                name = "U-Net + shape loss" if r["shape_prior"] else "U-Net"
            lines.append(f"| {name} | {_f(d['RV'])} | {_f(d['MYO'])} | {_f(d['LV'])} | {_f(d['mean'])} | "
                         f"{_f(r['dice_frames']['mean'])} | {_f(100 * r['valid_slices'], 1)}% |")
    return "\n".join(lines) + "\n"


def plot_histories(histories, path):
    """Learning curves of prior, U-Net and T-L runs (their ``history.csv``) in one PNG: a
    training loss term (the priors' reconstruction, the U-Net's cross-entropy, the T-L
    network's code distance) and validation Dice per epoch."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdnet_tf.apps.figures import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, csv_path in histories.items():
        with open(csv_path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        epochs = [int(r["epoch"]) for r in rows]
        key = next(k for k in ("train_reconstruction", "train_code", "train_cross_entropy") if k in rows[0])
        axes[0].plot(epochs, [float(r[key]) for r in rows], marker="o", label=f"{name}: {key[6:]}")
        axes[1].plot(epochs, [float(r["val_dice_mean"]) for r in rows], marker="o", label=name)
    axes[0].set(xlabel="epoch", ylabel="training loss term (epoch mean)", yscale="log")
    axes[1].set(xlabel="epoch", ylabel="validation Dice (mean of RV, MYO, LV)", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
