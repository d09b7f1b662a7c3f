"""The self-training baseline: a U-Net retrained on its own segmentations of the unlabelled images.

The semi-supervised baseline of the SDNet papers (Chartsias et al., MedIA 2019, after Bai et
al., "Semi-supervised learning for network-based cardiac MR image segmentation", MICCAI 2017):
train on the labelled images, segment the unlabelled ones, and train again on both, for a
configured number of rounds. Here:

- round 0 is the ordinary training of ``model.kind unet_gan`` (``train_run``);
- round r > 0 starts from round r - 1's kept (best validation) weights and trains the same
  schedule on the labelled images plus every unlabelled image labelled by round r - 1's model:
  a pixel takes the foreground class of largest probability when that probability exceeds
  ``train.self_training_threshold``, else background (Bai et al. refine with a CRF instead;
  none is used here);
- the unlabelled images stay unlabelled too, for the adversarial step when
  ``loss.adversarial`` > 0 (self-training on the GAN baseline);
- validation is the run's validation patients, never pseudo-labelled.

Each round is a complete run directory ``round-<r>/`` inside the run directory, so a killed
run (or one stopped by ``max_iterations``, which counts the iterations of all rounds) resumes
inside the round it was in, and finished rounds are never trained again. The run directory's
``train.log`` holds every round's lines and the pseudo-labelling between them. After
each round the run directory's ``model.keras``, ``best.json`` and ``self_training.json`` are
those of the round with the best validation Dice so far, so ``evaluate`` and ``predict`` take
the run while it trains, as any other (``export`` serves SDNet runs only).
"""

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from sdnet_tf.atomic import atomic_path, write_json
from sdnet_tf.config import save_config
from sdnet_tf.training.logs import log_to_file, stop_logging

log = logging.getLogger("sdnet_tf.train")


def pseudo_masks(probabilities, threshold=0.5):
    """One-hot foreground masks from probabilities.

    Args:
        probabilities: (N, H, W, L) foreground probabilities (background is 1 minus their sum).
        threshold: a pixel takes the class of its largest foreground probability when that
            probability exceeds ``threshold``, else background.

    Returns:
        (N, H, W, L) float32 masks with at most one channel set per pixel.
    """
    probabilities = np.asarray(probabilities, np.float32)
    best = np.argmax(probabilities, axis=-1)
    keep = np.take_along_axis(probabilities, best[..., None], axis=-1)[..., 0] > threshold
    masks = np.zeros_like(probabilities)
    np.put_along_axis(masks, best[..., None], keep[..., None].astype(np.float32), axis=-1)
    return masks


def with_pseudo_labels(arrays, masks):
    """``arrays`` with every unlabelled image added to the labelled ones with ``masks`` (M, H, W, L),
    each keeping its modality and vendor index."""

    def joined(name):
        labelled, unlabelled = getattr(arrays, f"labelled_{name}"), getattr(arrays, f"unlabelled_{name}")
        return None if labelled is None else np.concatenate([labelled, unlabelled])

    return dataclasses.replace(arrays, labelled_images=np.concatenate([arrays.labelled_images,
                                                                       arrays.unlabelled_images]),
                               labelled_masks=np.concatenate([arrays.labelled_masks, masks]),
                               labelled_modalities=joined("modalities"), labelled_vendors=joined("vendors"),
                               source=f"{arrays.source} + {len(masks)} self-labelled")


def _round_score(round_dir):
    best = json.loads((round_dir / "best.json").read_text()) if (round_dir / "best.json").is_file() else {}
    return best.get("val_dice")


def _round_summary(round_dir):
    """A round's ``summary.json`` as a dict, or None while the round has none (not begun, or killed)."""
    try:
        return json.loads((round_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _finished(summary):
    """Whether a round's summary says it ran its schedule to the end or stopped early; a round
    stopped by ``max_iterations`` writes a summary too (``complete`` false) and is resumed.
    Summaries written before ``complete`` was recorded count as finished."""
    return summary is not None and summary.get("complete", True)


def _publish(run_dir, rounds):
    """Copy the best round so far (by validation Dice) to the run directory, atomically."""
    scored = [(score, r) for r, score in enumerate(rounds) if score is not None]
    if not scored:
        return None
    score, best = max(scored)
    source = run_dir / f"round-{best}"
    for name in ("model.keras", "best.json"):
        with atomic_path(run_dir / name) as tmp:
            shutil.copyfile(source / name, tmp)
    return best


def train_self_training(train_run, config, run_dir, resume=True, max_iterations=None, progress=True, arrays=None,
                        description=None):
    """Train the self-training baseline as ``config`` says; returns the run summary.

    Args:
        train_run: the function that trains one round (``apps.train.train_run``, handed in so
            this module does not import it: ``train_run`` calls this function).
        config: a resolved ``Config`` with ``model.kind`` unet_gan and
            ``train.self_training_rounds`` >= 1.
        run_dir: the run directory; each round trains in ``run_dir/round-<r>``.
        resume: continue a round from its last checkpoint (finished rounds are always kept);
            without it a run directory holding rounds is refused.
        max_iterations: stop after this many iterations in all, counting every round's (a
            round stopped there resumes on the next call), None for the schedule's.
        progress: show progress bars.
        arrays, description: the training arrays and their description (``load_arrays``).

    Raises:
        FileExistsError: ``resume`` is False and the run directory holds rounds already.
    """
    from sdnet_tf.inference import load_run, probabilities_fn

    run_dir = Path(run_dir)
    if not resume and any(run_dir.glob("round-*")):
        raise FileExistsError(f"{run_dir} already holds self-training rounds; use --resume or another --run-dir")
    rounds = config.train.self_training_rounds
    threshold = config.train.self_training_threshold
    round_config = dataclasses.replace(config, train=dataclasses.replace(config.train, self_training_rounds=0))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    if description is not None:
        write_json(run_dir / "data.json", description)
    handler = log_to_file(run_dir)  # every round's lines, and the pseudo-labelling between rounds
    try:
        scores, record, best, done, complete = [], [], None, 0, True
        for r in range(rounds + 1):
            round_dir = run_dir / f"round-{r}"
            pseudo = len(arrays.unlabelled_images) if r else 0
            summary = _round_summary(round_dir)
            if _finished(summary):
                log.info("self-training round %d: finished earlier, kept", r)
            else:
                cap = None if max_iterations is None else max_iterations - done
                if cap is not None and cap <= 0:
                    complete = False
                    break
                round_arrays, initial = arrays, None
                if r:
                    initial = run_dir / f"round-{r - 1}"
                    model, _ = load_run(initial)
                    masks = pseudo_masks(probabilities_fn(model)(arrays.unlabelled_images), threshold)
                    round_arrays = with_pseudo_labels(arrays, masks)
                    log.info("self-training round %d of %d: %d unlabelled images labelled by round %d (%.1f%% "
                             "foreground pixels)", r, rounds, pseudo, r - 1, 100 * float(np.mean(masks.sum(axis=-1))))
                summary = train_run(round_config, round_dir, resume=True, max_iterations=cap, progress=progress,
                                    arrays=round_arrays, initial_weights=initial)
            done += summary["iteration"]
            scores.append(_round_score(round_dir))
            record.append({"round": r, "pseudo_labelled": pseudo, "val_dice": scores[-1]})
            best = _publish(run_dir, scores)
            write_json(run_dir / "self_training.json", {"threshold": threshold, "rounds": record, "kept_round": best})
            if not _finished(summary):
                complete = False
                break
        if not complete:
            log.info("self-training stopped after %d iterations in all (max_iterations), round %d of %d not "
                     "finished; running the command again resumes it", done, r, rounds)
        summary = {"rounds": record, "kept_round": best,
                   "best_val_dice": scores[best] if best is not None else float("-inf"),
                   "weights": f"round-{best}" if best is not None else None,
                   "iteration": done, "stopped_early": False, "complete": complete}
        write_json(run_dir / "summary.json", summary)
    finally:
        stop_logging(handler)
    return summary
