"""Where training data comes from: the cohort folder a config names (an ACDC training folder
or the built-in phantom cohort, generated into the cache on first use; for ``mmwhs``, an
MM-WHS-layout MR and CT folder or the two-modality phantom; for ``mnms``, an M&Ms-layout
folder or the four-vendor phantom), the preprocessed-array cache,
SDNet's training arrays and the masks of the shape priors and the U-Net.

Data code: numpy, nibabel and scipy only; configs are read, never written.
"""

import logging
from pathlib import Path
from types import SimpleNamespace

from sdnet_infer.geometry import TRAINING_ORIENTATION
from sdnet_tf.data.arrays import DataError
from sdnet_tf.data.masks import load_mask_sets

log = logging.getLogger("sdnet_tf.train")

PHANTOM_PATIENTS = 20
PHANTOM_VERSION = 2  # bumped when the phantom's generator changes, so a cached cohort is not reused
# the two-modality phantom (MM-WHS layout), versioned on its own: its folder name never matches
# the single-modality cohort's, and a change to either generator bumps only its own version
MULTIMODAL_PHANTOM_VERSION = 1
MNMS_PHANTOM_VERSION = 1  # the four-vendor phantom (M&Ms layout), versioned on its own as well


def cache_dir(config):
    """Where preprocessed arrays are cached."""
    return Path(config.data.cache_dir).expanduser() / "preprocessed"


def _cached_cohort(config, name, writer, what, progress=True):
    """``cache_dir/name``, written by ``writer(folder, patients, seed, progress=True)`` on first
    use: into a temporary folder renamed into place when complete, so a process that stops
    half-way leaves nothing that looks finished, and two processes writing at once (test
    workers) both end with the one complete cohort."""
    import os
    import shutil

    folder = Path(config.data.cache_dir).expanduser() / name
    if (folder / "complete").is_file():
        return folder
    log.info("writing the %s to %s", what, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    writer(staging, PHANTOM_PATIENTS, config.data.phantom_seed, progress=progress)
    (staging / "complete").write_text("ok\n")
    if folder.is_dir() and not (folder / "complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)  # a cohort an earlier version left unfinished
    try:
        os.rename(staging, folder)
    except OSError:  # another process finished first: its cohort is the same
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def phantom_folder(config, progress=True):
    """The built-in phantom cohort (ACDC layout), generated into the cache on first use."""
    from sdnet_tf.data.phantom import write_cohort

    return _cached_cohort(config, f"phantom-v{PHANTOM_VERSION}-{PHANTOM_PATIENTS}-seed{config.data.phantom_seed}",
                          write_cohort, "phantom cohort", progress)


def multimodal_phantom_folder(config, progress=True):
    """The built-in two-modality phantom (MR-like and CT-like renderings of the same patients,
    MM-WHS layout), generated into the cache on first use."""
    from sdnet_tf.data.phantom import write_multimodal_cohort

    return _cached_cohort(config, f"phantom-mmwhs-v{MULTIMODAL_PHANTOM_VERSION}-{PHANTOM_PATIENTS}"
                          f"-seed{config.data.phantom_seed}", write_multimodal_cohort, "two-modality phantom cohort",
                          progress)


def mnms_phantom_folder(config, progress=True):
    """The built-in four-vendor phantom (vendors A-D in four scanner styles, M&Ms layout with
    its CSV), generated into the cache on first use."""
    from sdnet_tf.data.phantom import write_mnms_cohort

    return _cached_cohort(config, f"phantom-mnms-v{MNMS_PHANTOM_VERSION}-{PHANTOM_PATIENTS}"
                          f"-seed{config.data.phantom_seed}", write_mnms_cohort, "four-vendor phantom cohort",
                          progress)


def load_arrays(config, progress=True):
    """The training arrays for ``config.data``, and a description of them (a dict); cohort
    folders are recorded as absolute paths (a run read from another directory finds them), and
    ``progress`` shows the bars of the phantom's writing and the preprocessing."""
    d, m = config.data, config.model
    if d.dataset != "mnms":
        set_here = [f"data.{k}" for k in ("train_vendors", "unlabelled_vendors", "test_vendors", "mnms_csv")
                    if getattr(d, k)]
        if set_here:
            raise DataError(f"{', '.join(set_here)} set, but data.dataset is {d.dataset!r}: the vendors' roles and "
                            "the CSV are read for M&Ms only (sdnet-tf train mnms)")
    if d.dataset == "synthetic":
        from sdnet_tf.data.synthetic import synthetic_arrays

        arrays = synthetic_arrays(d.synthetic_images, d.synthetic_validation, m.input_size, d.labelled_fraction,
                                  seed=data_seed(config))
        return arrays, {"dataset": "synthetic", **arrays.counts()}
    if d.dataset == "acdc":
        from sdnet_tf.data.acdc import load_acdc, training_folder

        if not d.path:
            raise DataError("acdc needs a data folder: --data DIR (an ACDC training folder) or --data phantom")
        folder = (phantom_folder(config, progress) if d.path == "phantom"
                  else training_folder(Path(d.path).expanduser().resolve()))
        arrays, description = load_acdc(folder, d.split, d.labelled_fraction, seed=data_seed(config),
                                        cache_dir=cache_dir(config), progress=progress,
                                        size=m.input_size, spacing=d.spacing)
        # the orientation every volume was brought into (sdnet_infer.geometry); predict and export read it
        return arrays, {"dataset": "acdc", "data": str(folder), "orientation": TRAINING_ORIENTATION, **description}
    if d.dataset == "mmwhs":
        from sdnet_tf.data.mmwhs import SLICING, load_mmwhs

        if not d.path:
            raise DataError("mmwhs needs a data folder: --data DIR (mr_train/ and ct_train/ folders in the MM-WHS "
                            "layout) or --data phantom")
        folder = (multimodal_phantom_folder(config, progress) if d.path == "phantom"
                  else Path(d.path).expanduser().resolve())
        arrays, description = load_mmwhs(folder, d.split, d.labelled_fraction, seed=data_seed(config),
                                         cache_dir=cache_dir(config), progress=progress, size=m.input_size, spacing=d.spacing)
        return arrays, {"dataset": "mmwhs", "data": str(folder), "orientation": TRAINING_ORIENTATION,
                        "slicing": SLICING, **description}
    if d.dataset == "mnms":
        from sdnet_tf.data.mnms import load_mnms

        if not d.path:
            raise DataError("mnms needs a data folder: --data DIR (the M&Ms layout: Training/, Validation/, Testing/ "
                            "and the challenge's CSV) or --data phantom")
        folder = (mnms_phantom_folder(config, progress) if d.path == "phantom"
                  else Path(d.path).expanduser().resolve())
        arrays, description = load_mnms(folder, d.split, d.labelled_fraction, seed=data_seed(config),
                                        cache_dir=cache_dir(config), progress=progress, size=m.input_size, spacing=d.spacing,
                                        csv_path=d.mnms_csv, train_vendors=d.train_vendors,
                                        unlabelled_vendors=d.unlabelled_vendors, test_vendors=d.test_vendors)
        return arrays, {"dataset": "mnms", "data": str(folder), "orientation": TRAINING_ORIENTATION, **description}
    raise DataError(f"unknown dataset {d.dataset!r}; available: synthetic, acdc, mmwhs, mnms")


def cohort_folder(data_config):
    """The folder ``data_config.path`` names: the built-in phantom cohort for "phantom"
    (generated on first use), else the path itself, which must not be a file.

    Raises:
        DataError: the path is a file.
    """
    if data_config.path == "phantom":
        return phantom_folder(SimpleNamespace(data=data_config))
    folder = Path(data_config.path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise DataError(f"data folder {folder} is a file, not a folder")
    return folder


def data_folder(data_config):
    """The cohort folder of a prior or U-Net config (``phantom``: the built-in cohort)."""
    if not data_config.path:
        raise DataError("a shape prior or U-Net needs masks: --data DIR (an ACDC training folder) or --data phantom")
    folder = cohort_folder(data_config)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    return folder


def data_seed(config):
    """The seed of a config's data draws (labelled subjects, kept unlabelled slices, synthetic
    images): ``data.seed``, or ``train.seed`` when it is -1 (the default)."""
    return config.data.seed if config.data.seed >= 0 else config.train.seed


def mask_sets(config, progress=True):
    """The training and validation mask sets of a prior or U-Net config (``load_mask_sets``)."""
    d = config.data
    folder = data_folder(d)
    return load_mask_sets(folder, config.model.input_size, d.spacing, d.split, cache_dir(config), progress,
                          labelled_fraction=d.labelled_fraction, seed=data_seed(config),
                          framing=d.framing)


def default_run_dir(kind, config, config_name=None, data=None):
    """Where a training run goes when no ``-o`` is given, one rule for every command.

    SDNet (``kind`` "acdc", "mmwhs", "mnms" or "synthetic"): ``runs/<data folder or kind>-<config
    name or default>``, with ``-split<N>`` for ACDC, MM-WHS and M&Ms; a shape prior, the U-Net or
    the T-L network (``kind`` "nvae", "acnn", "unet", "tl"): ``runs/<kind>[-shape]-<data
    folder>-split<N>`` ("-shape" for a U-Net with a shape loss).
    """
    if kind in ("acdc", "mmwhs", "mnms", "synthetic"):
        source = Path(data).name if data else kind
        name = f"{source}-{Path(config_name).stem if config_name else 'default'}"
        return Path("runs") / (f"{name}-split{config.data.split}" if kind != "synthetic" else name)
    source = Path(config.data.path).name or "data"
    suffix = "-shape" if kind == "unet" and config.loss.shape_prior else ""
    return Path("runs") / f"{kind}{suffix}-{source}-split{config.data.split}"


def preprocess_summary(config, progress=True):
    """Preprocess the cohort ``config.data.path`` names into the cache (``sdnet-tf
    preprocess``) and describe it: ``{"folder", "cache", "patients", "seconds", "splits":
    [{"split", "training", "labelled", "unlabelled", "validation", "test"}], "unlabelled_source"}``
    for ``config.data.labelled_fraction`` and ``data_seed(config)``.

    Raises:
        DataError: the folder cannot be read as an ACDC-layout cohort.
    """
    import time

    from sdnet_tf.data.acdc import patient_splits, preprocess_cohort, split_plan

    d = config.data
    folder = cohort_folder(d)
    cache = cache_dir(config)
    start = time.perf_counter()
    cohort, patients = preprocess_cohort(folder, cache, config.model.input_size, progress=progress, spacing=d.spacing)
    seconds = time.perf_counter() - start
    splits = patient_splits(patients)
    rows, source = [], None
    for k in range(len(splits)):
        plan = split_plan(cohort, splits, k, d.labelled_fraction, data_seed(config))
        rows.append({"split": k, "training": len(plan["training"]), **plan["counts"]})
        source = plan["unlabelled_source"]
    return {"folder": str(folder), "cache": str(cache), "patients": len(patients), "seconds": seconds,
            "splits": rows, "unlabelled_source": source}
