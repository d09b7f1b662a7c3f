"""What z says about the modality, for a run trained on MR and CT at once (``sdnet-tf train mmwhs``).

The 2019 paper (Section 5.4) shows that the modality factor z encodes the modality: a
logistic regression from z to MR / CT, trained on some slices, classifies held-out slices
almost perfectly. Here, with scikit-learn (standardisation and ``LogisticRegression``, through
``latent.style_classifier``):

- z is the modality encoder's posterior mean of every kept slice of the run's cohort (the
  preprocessing cache of ``sdnet_tf.data.mmwhs``), its anatomy from the anatomy encoder;
- the classifier is fitted on the slices of the split's training cases and scored on those
  of its validation and test cases (no case on both sides);
- the control fits the same classifier on the training slices with their modality labels
  shuffled (``permutations`` seeded permutations, 100 by default) and scores it on the
  held-out slices with their true labels: near 0.5 when z, not the classifier, carries the
  modality and the classes are balanced (``chance`` gives the majority-class rate).

Each held-out slice's segmentation is also scored per modality (the soft Dice pooled over
MYO, LV and RV, as validation scores), so the one anatomy factor's quality is seen for both.

``sdnet-tf figures`` draws one held-out MR and one held-out CT slice for a two-modality run
(``inference.held_out_pair``), so its swap figure puts the anatomy of the MR slice with the z
of the CT slice and the reverse (the paper's Section 5.3).
"""

import csv
import io
import logging
from pathlib import Path

import numpy as np

from sdnet_infer.io import write_json, write_text

log = logging.getLogger("sdnet_tf.modality")

PERMUTATIONS = 100


def modality_classifier(train_z, train_modality, test_z, test_modality, seed=0, permutations=PERMUTATIONS):
    """Logistic regression of the modality from z, and the shuffled-label control.

    Args:
        train_z, test_z: (N, nz), (M, nz) z posterior means.
        train_modality, test_modality: (N,), (M,) modality labels (any hashable values).
        seed: the classifier's and the permutations' seed.
        permutations: how many shuffles of the training labels the control averages.

    Returns:
        ``latent.style_classifier``'s dict (``accuracy`` on the held-out slices, ``chance``,
        ``train_accuracy``, ``classes``, ``confusion``, slice counts) with ``shuffled``:
        ``{"accuracy_mean", "accuracy_std", "accuracy_min", "accuracy_max", "permutations"}``,
        the held-out accuracies of classifiers fitted on shuffled training labels.

    Raises:
        DataError: the training slices hold one modality only.
    """
    from sdnet_tf.apps.latent import style_classifier

    result = style_classifier(train_z, train_modality, test_z, test_modality, seed)
    rng = np.random.default_rng(seed)
    train_modality = np.asarray(train_modality)
    shuffled = np.array([style_classifier(train_z, rng.permutation(train_modality), test_z, test_modality,
                                          seed)["accuracy"] for _ in range(permutations)])
    result["shuffled"] = {"accuracy_mean": float(shuffled.mean()), "accuracy_std": float(shuffled.std()),
                          "accuracy_min": float(shuffled.min()), "accuracy_max": float(shuffled.max()),
                          "permutations": int(permutations)}
    return result


def _held_out_dice(model, slices, where):
    """{modality: soft Dice pooled over MYO, LV, RV, mean over the held-out slices} (as validation scores)."""
    from sdnet_tf.data.preprocess import one_hot
    from sdnet_tf.inference import probabilities_fn
    from sdnet_tf.losses import dice_coefficient

    segment = probabilities_fn(model)
    out = {}
    for index, name in enumerate(slices["modalities"]):
        chosen = where & (slices["modality"] == index)
        if chosen.any():
            scores = dice_coefficient(segment(slices["images"][chosen]), one_hot(slices["labels"][chosen]))
            out[name] = {"dice": float(np.mean(np.asarray(scores))), "slices": int(chosen.sum())}
    return out


def classify_modality(run_dir, out_dir, data=None, seed=0, permutations=PERMUTATIONS):
    """Classify each slice's modality from z for a two-modality run; writes
    ``modality_classifier.json`` and ``modality_classifier.csv`` into ``out_dir``.

    Returns the results dict (``modality_classifier``'s, with ``held_out_dice`` per modality,
    ``nz`` and the run). Raises ``DataError`` as ``modality_slices``.
    """
    from sdnet_infer.io import check_output_location, prepare_output_dir
    from sdnet_tf.apps.latent import z_posteriors
    from sdnet_tf.inference import modality_slices, refuse_precursor

    refuse_precursor(run_dir, "modality-classifier")
    check_output_location(out_dir)  # an unwritable folder fails before any work
    model, _, slices = modality_slices(run_dir, data)
    prepare_output_dir(out_dir)  # made once the slices are read: a refused run leaves no folder
    names = np.asarray(slices["modalities"])[slices["modality"]]  # "mr" / "ct" per slice
    z, _ = z_posteriors(model, slices["images"])
    train, test = slices["side"] == "train", slices["side"] == "held_out"
    results = {"run_dir": str(run_dir), "nz": int(z.shape[1]), "z": "posterior mean of the modality encoder",
               **modality_classifier(z[train], names[train], z[test], names[test], seed, permutations),
               "held_out_dice": _held_out_dice(model, slices, test)}
    out_dir = Path(out_dir)
    write_json(out_dir / "modality_classifier.json", results)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["labels", "held_out_accuracy", "train_accuracy", "train_slices", "held_out_slices"])
    writer.writerow(["modality", f"{results['accuracy']:.4f}", f"{results['train_accuracy']:.4f}",
                     results["train_images"], results["test_images"]])
    shuffled = results["shuffled"]
    writer.writerow([f"shuffled (mean of {shuffled['permutations']})", f"{shuffled['accuracy_mean']:.4f}", "",
                     results["train_images"], results["test_images"]])
    write_text(out_dir / "modality_classifier.csv", table.getvalue())
    log.info("modality from z: %.3f held-out accuracy; shuffled labels %.3f", results["accuracy"],
             shuffled["accuracy_mean"])
    return results
