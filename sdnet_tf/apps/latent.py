"""What the modality vector z holds: per-dimension capacity and a scanner-style classifier.

- Capacity (paper, Section 5.6): the mean posterior variance of each z dimension over a
  cohort's images. A dimension whose posterior variance stays near 1 (the prior's) carries no
  information about the image; one with a small variance is used by the decoder.
- Modality classification (paper, Section 5.4): a multinomial logistic regression from z (the
  posterior mean) to the acquisition style, trained on the run's training patients and scored
  on its held-out (validation and test) patients, so no patient is on both sides. On the phantom
  cohort the label is the scanner style; on ACDC, which has one modality, it is the pathology
  group (a control: z should say little about it).

scikit-learn provides the classifier and the standardisation: a well-tested implementation beats
a hand-written optimiser for something this standard.
"""

import logging
from pathlib import Path

import numpy as np

from sdnet_infer.io import DataError, write_json

log = logging.getLogger("sdnet_tf.latent")


def z_posteriors(model, images, batch_size=32):
    """(means (N, nz), log-variances (N, nz)) of the modality encoder in inference mode."""
    means, logvars = [], []
    for i in range(0, len(images), batch_size):
        _, _, mean, logvar = model.decompose(np.asarray(images[i:i + batch_size], np.float32), training=False,
                                             sample=False)
        means.append(np.asarray(mean))
        logvars.append(np.asarray(logvar))
    return np.concatenate(means), np.concatenate(logvars)


def capacity(logvars):
    """Per-dimension mean posterior variance, mean of exp(log-variance) over images, shape (nz,)."""
    return np.exp(np.asarray(logvars, np.float64)).mean(axis=0)


def style_classifier(train_z, train_labels, test_z, test_labels, seed=0):
    """Fit a logistic regression on ``train_z`` and score it on ``test_z``.

    Returns a dict: ``accuracy`` on the test set, ``chance`` (the test frequency of the most
    common training label, what always guessing it scores), ``classes``, the test
    ``confusion`` matrix (rows true, columns predicted) and ``train_accuracy``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    classes = sorted(set(train_labels.tolist()))
    if len(classes) < 2:
        raise DataError(f"the training patients have one label only ({classes}); nothing to classify")
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    classifier.fit(train_z, train_labels)
    predicted = classifier.predict(test_z)
    values, counts = np.unique(train_labels, return_counts=True)
    majority = values[np.argmax(counts)]
    return {
        "accuracy": float(np.mean(predicted == test_labels)),
        "chance": float(np.mean(test_labels == majority)),
        "train_accuracy": float(classifier.score(train_z, train_labels)),
        "classes": classes,
        "confusion": confusion_matrix(test_labels, predicted, labels=classes).tolist(),
        "train_images": int(len(train_z)), "test_images": int(len(test_z)),
    }


def capacity_figure(variances):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(3.0, 0.45 * len(variances) + 1.5), 2.6))
    ax.bar(np.arange(len(variances)), variances, color="tab:blue")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="prior variance")
    ax.set_xticks(np.arange(len(variances)), [f"z{i}" for i in range(len(variances))], fontsize=8)
    ax.set_ylabel("mean posterior variance", fontsize=8)
    ax.set_ylim(0, max(1.1, float(np.max(variances)) * 1.1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def embedding_figure(z, labels, variances):
    """The two z dimensions of smallest posterior variance, coloured by label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = [int(i) for i in np.argsort(variances)[:2]]
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    for label in sorted(set(labels)):
        where = np.asarray(labels) == label
        ax.scatter(z[where, a], z[where, b], s=6, alpha=0.7, label=str(label))
    ax.set_xlabel(f"z{a}", fontsize=8)
    ax.set_ylabel(f"z{b}", fontsize=8)
    ax.legend(fontsize=6, markerscale=2)
    fig.tight_layout()
    return fig


def analyse_run(run_dir, out_dir, data=None, seed=0):
    """Capacity and style classification of a run's z on its cohort; writes ``latent.json`` and figures.

    Images are every preprocessed ED/ES slice of the cohort's patients (from the preprocessing
    cache when it is there). Returns the results dict.
    """
    from sdnet_infer.io import check_output_location, prepare_output_dir
    from sdnet_tf.data.acdc import patient_strata, preprocess_cohort
    from sdnet_tf.inference import run_cohort
    from sdnet_tf.apps.figures import save_figure
    from sdnet_tf.inference import load_run, refuse_precursor
    from sdnet_tf.data.sources import cache_dir

    refuse_precursor(run_dir, "latent")
    check_output_location(out_dir)  # an unwritable folder fails before any work
    model, config = load_run(run_dir)
    folder, splits, split = run_cohort(run_dir, data)
    prepare_output_dir(out_dir)  # made once the cohort is found: a refused run leaves no folder
    cohort, patients = preprocess_cohort(folder, cache_dir(config), model.input_size, progress=False,
                                         spacing=config.data.spacing)
    strata = patient_strata(patients)
    label_kind = "scanner style" if any("Style" in p.info for p in patients) else "pathology group"
    training = set(splits[split]["training"])
    held_out = set(splits[split]["validation"]) | set(splits[split]["test"])
    z, labels, sides = [], [], []
    for p in patients:
        images = cohort[p.number]["images"]
        mean, logvar = z_posteriors(model, images)
        z.append(np.concatenate([mean, logvar], axis=1))
        labels += [strata[p.number]] * len(images)
        sides += ["train" if p.number in training else "test" if p.number in held_out else "none"] * len(images)
    z = np.concatenate(z)
    nz = z.shape[1] // 2
    means, logvars = z[:, :nz], z[:, nz:]
    labels, sides = np.asarray(labels), np.asarray(sides)
    variances = capacity(logvars)
    results = {
        "run_dir": str(run_dir), "images": int(len(means)), "nz": nz, "label": label_kind,
        "capacity": {"mean_posterior_variance": variances.round(6).tolist(),
                     "dimensions_used": int(np.sum(variances < 0.5)),
                     "note": "a dimension is counted as used when its mean posterior variance is below 0.5"},
        "classifier": style_classifier(means[sides == "train"], labels[sides == "train"],
                                       means[sides == "test"], labels[sides == "test"], seed),
    }
    results["classifier"]["label"] = label_kind
    out_dir = Path(out_dir)
    save_figure(capacity_figure(variances), out_dir / "z_capacity.png")
    save_figure(embedding_figure(means, labels, variances), out_dir / "z_embedding.png")
    write_json(out_dir / "latent.json", results)
    log.info("z: %d of %d dimensions used; %s from z: %.3f held-out accuracy (chance %.3f)",
             results["capacity"]["dimensions_used"], nz, label_kind, results["classifier"]["accuracy"],
             results["classifier"]["chance"])
    return results
