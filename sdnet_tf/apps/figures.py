"""The paper's qualitative figures for a trained run, as PNG files (matplotlib, Agg).

Each ``*_figure`` function takes the model and preprocessed slices and returns a matplotlib
figure; ``make_figures`` picks the slices, draws them all and saves them atomically.

- anatomy channels (the binary factor s, one panel per channel);
- reconstructions with the image's own z, a random z ~ N(0, I) and z = 0;
- the z traversal (Figure 8 of the paper): each dimension over 7 steps in [-3, 3], the others
  at the image's own posterior mean, with the per-pixel correlation between the dimension's value
  and the intensity, and the difference between the last and first step;
- anatomy / modality swaps between two images (Figure 6); for a run trained on MR and CT
  (``sdnet-tf train mmwhs``) the two default images are a held-out MR and a held-out CT
  slice, so the swap puts the anatomy of one modality with the z of the other (Section 5.3);
- anatomy arithmetic (Figure 7): a channel moved, two channels swapped, the channels shuffled;
- segmentation overlays of the prediction and, where known, the reference.
"""

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sdnet_infer.io import DataError, atomic_path  # noqa: E402
from sdnet_infer.labels import LV, MYO, RV  # noqa: E402
from sdnet_infer.preprocess import from_one_hot, preprocess_frame  # noqa: E402

log = logging.getLogger("sdnet_tf.figures")

STEPS = np.linspace(-3.0, 3.0, 7)
LABEL_COLOURS = {RV: (0.90, 0.25, 0.20), MYO: (0.25, 0.75, 0.30), LV: (0.20, 0.45, 0.95)}
FIGURES = ("anatomy_channels", "reconstructions", "z_traversal", "swaps", "anatomy_arithmetic", "segmentation")


# model calls (inference mode, z = posterior mean) ---------------------------------------
def decompose(model, images):
    """(anatomy (N, H, W, C), z mean (N, nz), log-variance (N, nz)) as numpy, inference mode."""
    anatomy, _, mean, logvar = model.decompose(np.asarray(images, np.float32), training=False, sample=False)
    return np.asarray(anatomy), np.asarray(mean), np.asarray(logvar)


def decode(model, anatomy, z):
    """(N, H, W, C) anatomy and (N, nz) z -> (N, H, W) images."""
    return np.asarray(model.reconstruct(np.asarray(anatomy, np.float32), np.asarray(z, np.float32)))[..., 0]


def segment(model, images):
    """(N, H, W, 1) images -> (N, H, W) ACDC labels."""
    return from_one_hot(np.asarray(model.segment(np.asarray(images, np.float32), training=False)))


# drawing helpers -------------------------------------------------------------------------
def _grid(rows, cols, size=1.6):
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _show(ax, image, title=None, **kwargs):
    kwargs.setdefault("cmap", "gray")
    if kwargs["cmap"] == "gray":
        kwargs.setdefault("vmin", -1.0)
        kwargs.setdefault("vmax", 1.0)
    ax.imshow(image, interpolation="nearest", **kwargs)
    if title:
        ax.set_title(title, fontsize=8)


def overlay(image, labels, alpha=0.45):
    """An RGB image in [0, 1]: the grey image with the labels' colours blended in."""
    grey = np.clip((np.asarray(image) + 1.0) / 2.0, 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for value, colour in LABEL_COLOURS.items():
        where = labels == value
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(colour)
    return rgb


def anatomy_rgb(anatomy):
    """(H, W, C) binary channels -> one RGB picture, a fixed colour per channel."""
    colours = plt.get_cmap("tab10")(np.arange(anatomy.shape[-1]) % 10)[:, :3]
    return np.clip(anatomy @ colours, 0.0, 1.0)


def save_figure(fig, path):
    """Write ``fig`` as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


# the figures -----------------------------------------------------------------------------
def anatomy_channels_figure(model, images, names):
    anatomy, _, _ = decompose(model, images)
    channels = anatomy.shape[-1]
    fig, axes = _grid(len(images), channels + 1)
    for row, name in enumerate(names):
        _show(axes[row, 0], images[row, ..., 0], name if row == 0 else None)
        axes[row, 0].set_ylabel(name, fontsize=7)
        for c in range(channels):
            _show(axes[row, c + 1], anatomy[row, ..., c], f"s{c}" if row == 0 else None, cmap="gray", vmin=0, vmax=1)
    fig.suptitle("anatomy channels (binary)", fontsize=9)
    return fig


def reconstructions_figure(model, images, names, seed=0):
    anatomy, mean, _ = decompose(model, images)
    rng = np.random.default_rng(seed)
    variants = [("input", None), ("own z", mean), ("random z", rng.standard_normal(mean.shape)),
                ("z = 0", np.zeros_like(mean))]
    fig, axes = _grid(len(images), len(variants))
    for col, (title, z) in enumerate(variants):
        pictures = images[..., 0] if z is None else decode(model, anatomy, z)
        for row in range(len(images)):
            _show(axes[row, col], pictures[row], title if row == 0 else None)
        if col == 0:
            for row, name in enumerate(names):
                axes[row, 0].set_ylabel(name, fontsize=7)
    return fig


def traversal(model, image):
    """(nz, 7, H, W) decoded images: dimension i over ``STEPS``, the others at the posterior mean."""
    anatomy, mean, _ = decompose(model, image[None])
    nz = mean.shape[-1]
    z = np.repeat(mean, nz * len(STEPS), axis=0).reshape(nz, len(STEPS), nz)
    for i in range(nz):
        z[i, :, i] = STEPS
    z = z.reshape(-1, nz)
    out = decode(model, np.repeat(anatomy, len(z), axis=0), z)
    return out.reshape(nz, len(STEPS), *out.shape[1:])


def step_correlation(pictures, values=STEPS):
    """Per-pixel Pearson correlation between ``values`` and the intensity over the steps.

    Args:
        pictures: (steps, H, W) images.
    Returns:
        (H, W) correlations; 0 where the intensity does not change.
    """
    v = (values - values.mean()) / np.sqrt(((values - values.mean()) ** 2).sum())
    centred = pictures - pictures.mean(axis=0)
    norm = np.sqrt((centred ** 2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.tensordot(v, centred, axes=1) / norm
    return np.where(norm > 1e-6, corr, 0.0)


def z_traversal_figure(model, image, name):
    grid = traversal(model, image)  # (nz, 7, H, W)
    nz = grid.shape[0]
    fig, axes = _grid(nz, len(STEPS) + 2, size=1.3)
    for i in range(nz):
        for k, value in enumerate(STEPS):
            _show(axes[i, k], grid[i, k], f"{value:+.0f}" if i == 0 else None)
        _show(axes[i, -2], step_correlation(grid[i]), "correlation" if i == 0 else None, cmap="RdBu_r",
              vmin=-1, vmax=1)
        diff = grid[i, -1] - grid[i, 0]
        bound = max(float(np.abs(diff).max()), 1e-6)
        _show(axes[i, -1], diff, "difference" if i == 0 else None, cmap="RdBu_r", vmin=-bound, vmax=bound)
        axes[i, 0].set_ylabel(f"z{i}", fontsize=8)
    fig.suptitle(f"z traversal of {name}: each row one dimension over [-3, 3]", fontsize=9)
    return fig


def swaps_figure(model, images, names, title=None):
    """Figure 6: every (anatomy of A or B) x (z of A or B), decoded with the z posterior means."""
    if len(images) < 2:
        raise DataError("the swap figure needs two images")
    anatomy, mean, _ = decompose(model, images[:2])
    fig, axes = _grid(3, 3)
    axes[0, 0].axis("off")
    for k in range(2):
        _show(axes[0, k + 1], images[k, ..., 0], f"z of {names[k]}")
        _show(axes[k + 1, 0], images[k, ..., 0])
        axes[k + 1, 0].set_ylabel(f"anatomy of {names[k]}", fontsize=7)
    for a in range(2):
        decoded = decode(model, np.repeat(anatomy[a:a + 1], 2, axis=0), mean[:2])
        for b in range(2):
            _show(axes[a + 1, b + 1], decoded[b])
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _heart_channels(anatomy, labels):
    """Channels ordered by how much of each lies on the predicted heart (most first)."""
    heart = (labels > 0).astype(np.float32)
    overlap = (anatomy * heart[..., None]).sum((0, 1)) / np.maximum(anatomy.sum((0, 1)), 1.0)
    return [int(c) for c in np.argsort(-overlap)]


def arithmetic_variants(anatomy, labels, shift=12, seed=0):
    """Figure 7's anatomy edits of one (H, W, C) anatomy: (title, edited anatomy) pairs."""
    order = _heart_channels(anatomy, labels)
    a, b = order[0], order[1]
    moved = anatomy.copy()
    moved[..., a] = np.roll(anatomy[..., a], shift=(shift, shift), axis=(0, 1))
    swapped = anatomy.copy()
    swapped[..., [a, b]] = anatomy[..., [b, a]]
    shuffled = anatomy[..., np.random.default_rng(seed).permutation(anatomy.shape[-1])]
    removed = anatomy.copy()
    removed[..., a] = 0.0
    return [("original", anatomy), (f"s{a} moved", moved), (f"s{a} <-> s{b}", swapped),
            ("shuffled", shuffled), (f"s{a} removed", removed)]


def anatomy_arithmetic_figure(model, image, name):
    anatomy, mean, _ = decompose(model, image[None])
    labels = segment(model, image[None])[0]
    variants = arithmetic_variants(anatomy[0], labels)
    edited = np.stack([v for _, v in variants])
    decoded = decode(model, edited, np.repeat(mean, len(variants), axis=0))
    fig, axes = _grid(2, len(variants))
    for k, (title, a) in enumerate(variants):
        _show(axes[0, k], anatomy_rgb(a), title, cmap=None)
        _show(axes[1, k], decoded[k])
    axes[0, 0].set_ylabel("anatomy", fontsize=7)
    axes[1, 0].set_ylabel("decoded (own z)", fontsize=7)
    fig.suptitle(f"anatomy arithmetic on {name}", fontsize=9)
    return fig


def segmentation_figure(model, images, names, references=None):
    predicted = segment(model, images)
    cols = 3 if references is not None else 2
    fig, axes = _grid(len(images), cols, size=2.0)
    for row, name in enumerate(names):
        _show(axes[row, 0], images[row, ..., 0], "image" if row == 0 else None)
        axes[row, 0].set_ylabel(name, fontsize=7)
        _show(axes[row, 1], overlay(images[row, ..., 0], predicted[row]), "prediction" if row == 0 else None,
              cmap=None)
        if references is not None:
            _show(axes[row, 2], overlay(images[row, ..., 0], references[row]), "reference" if row == 0 else None,
                  cmap=None)
    fig.suptitle("RV red, MYO green, LV blue", fontsize=8)
    return fig


# choosing slices -------------------------------------------------------------------------
def slices_from_files(specs, size, spacing):
    """``PATH`` or ``PATH:SLICE`` -> (images (N, size, size, 1), names, references or None).

    The middle slice is taken when none is named. A ``_gt`` file beside the image (ACDC
    naming) gives the reference for the overlay.
    """
    from sdnet_infer.io import load_labels, load_volume

    images, names, references = [], [], []
    for spec in specs:
        path, sep, index = str(spec).rpartition(":")
        if not (sep and index.isdigit()):
            path, index = str(spec), ""
        volume, zooms, _ = load_volume(path)
        k = int(index) if index else volume.shape[2] // 2
        if not 0 <= k < volume.shape[2]:
            raise DataError(f"{path}: slice {k} outside 0..{volume.shape[2] - 1}")
        gt = Path(path.replace(".nii", "_gt.nii", 1))
        labels = load_labels(gt, volume.shape)[0] if gt.is_file() else None
        slices, masks, _ = preprocess_frame(volume, zooms, labels, size=size, target=spacing, source=path)
        images.append(slices[k])
        references.append(masks[k] if masks is not None else None)
        names.append(f"{Path(path).name.split('.')[0]}:{k}")
    refs = np.stack(references) if all(r is not None for r in references) else None
    return np.stack(images)[..., None], names, refs


def slices_from_run(run_dir, size, spacing, count=2, subset="test"):
    """The middle ED slice of the first ``count`` patients of the run's held-out split."""
    from sdnet_tf.data.acdc import find_patients
    from sdnet_tf.inference import run_cohort

    folder, splits, split = run_cohort(run_dir)
    wanted = splits[split][subset][:count]
    patients = [p for p in find_patients(folder) if p.number in wanted]
    specs = [str(p.frame(p.ed)) for p in patients]
    return slices_from_files(specs, size, spacing)


def make_figures(run_dir, out_dir, images=None, which=FIGURES, seed=0):
    """Draw ``which`` figures of a trained run into ``out_dir``; returns {name: path}.

    ``images`` are ``PATH[:SLICE]`` specs; by default the middle ED slices of the first two
    held-out test patients of the run's cohort, or for a run trained on two modalities one
    held-out MR and one held-out CT slice (``inference.held_out_pair``), whose swap figure is
    then the modality swap.
    """
    from sdnet_infer.io import check_output_location, prepare_output_dir
    from sdnet_tf.inference import held_out_pair, is_multimodal_run, load_run, refuse_precursor

    unknown = set(which) - set(FIGURES)
    if unknown:
        raise DataError(f"unknown figures {sorted(unknown)}; available: {', '.join(FIGURES)}")
    refuse_precursor(run_dir, "figures")
    check_output_location(out_dir)  # an unwritable folder fails before any work
    model, config = load_run(run_dir)
    size, spacing = model.input_size, config.data.spacing
    swap_title = None
    if images:
        x, names, refs = slices_from_files(images, size, spacing)
    elif is_multimodal_run(run_dir):
        x, names, refs = held_out_pair(run_dir, model, config)
        swap_title = "modality swap: the anatomy of each row decoded with the z of each column"
    else:
        x, names, refs = slices_from_run(run_dir, size, spacing)
    out_dir = prepare_output_dir(out_dir)  # made once the images are read: a refused run leaves no folder
    drawers = {
        "anatomy_channels": lambda: anatomy_channels_figure(model, x, names),
        "reconstructions": lambda: reconstructions_figure(model, x, names, seed),
        "z_traversal": lambda: z_traversal_figure(model, x[0], names[0]),
        "swaps": lambda: swaps_figure(model, x, names, swap_title),
        "anatomy_arithmetic": lambda: anatomy_arithmetic_figure(model, x[0], names[0]),
        "segmentation": lambda: segmentation_figure(model, x, names, refs),
    }
    written = {}
    for name in which:
        if name == "swaps" and len(x) < 2:
            log.warning("swaps: needs two images, skipped")
            continue
        written[name] = save_figure(drawers[name](), out_dir / f"{name}.png")
    return written
