"""Loading a trained run and running its networks for prediction (Keras only, any backend), and the
slices of a run trained on two modalities with their modality (``modality_slices``)."""

import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from sdnet_infer.io import DataError
from sdnet_infer.labels import SDNET_CHANNEL_LABELS
from sdnet_tf.data.arrays import read_npz

log = logging.getLogger("sdnet_tf.inference")


class UNetSegmenter:
    """The U-Net baseline behind SDNet's inference interface, so the same prediction and
    evaluation code scores both: ``segment(images)`` (N, H, W, 1) -> foreground probabilities
    (N, H, W, 3) in SDNet's channel order [MYO, LV, RV] (the U-Net's softmax is over
    background, RV, MYO, LV). Any network whose call is such a softmax fits (``TLSegmenter``)."""

    num_classes = 3
    _FOREGROUND = list(SDNET_CHANNEL_LABELS)  # MYO, LV, RV of (background, RV, MYO, LV): channel k is label k

    def __init__(self, unet):
        self.unet = unet
        self.input_size = int(unet.input_size)

    def segment(self, images, training=False):
        from keras import ops

        return ops.take(self.unet(images, training=training), self._FOREGROUND, axis=-1)


class TLSegmenter(UNetSegmenter):
    """ACNN's T-L network (``models.tl.TLNetwork``) behind SDNet's inference interface:
    ``segment(images)`` (N, H, W, 1) -> the foreground probabilities (N, H, W, 3), in SDNet's
    channel order [MYO, LV, RV], of the frozen autoencoder's decoding of the predicted codes;
    ``network`` is the ``TLNetwork``."""

    def __init__(self, network):
        super().__init__(network)
        self.network = network


def run_kind(run_dir):
    """What a run directory holds, from its ``config.yaml``: "sdnet", "sdnet2018" (the MICCAI
    2018 precursor), "unet" (the baseline of ``baseline train unet``), "unet_gan" (the U-Net
    and GAN baselines in SDNet's pipeline), "tl" (ACNN's T-L network, ``baseline train tl``),
    "nvae" or "acnn" (a shape prior).

    Raises:
        DataError: no such directory (or a file), or no ``config.yaml`` in it.
    """
    import yaml

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise DataError(f"{run_dir}: a file, not a run directory")
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise DataError(f"{run_dir}: no config.yaml; not an sdnet-tf run directory")
    model = (yaml.safe_load(path.read_text()) or {}).get("model", {}) or {}
    if "kind" in model:
        return str(model["kind"])
    return "unet" if "filters" in model and "unet_filters" not in model else "sdnet"


def _load_unet_run(run_dir, config_path):
    """``(UNetSegmenter, SegmentationConfig)`` of a U-Net baseline run (its ``best.npz``)."""
    from sdnet_tf.config import SegmentationConfig, load_config
    from sdnet_tf.models.priors import assign_values
    from sdnet_tf.models.unet import build_unet

    weights = run_dir / "best.npz"
    if not weights.is_file():
        raise DataError(f"{run_dir}: no best.npz yet (it is written at the first validation epoch)")
    config = load_config(str(config_path), kind=SegmentationConfig)
    unet = build_unet(config.model.input_size, config.model.filters, config.model.depth)
    assign_values(unet, read_npz(weights), source=str(weights))
    return UNetSegmenter(unet), config


def _load_tl_run(run_dir, config_path):
    """``(TLSegmenter, TLConfig)`` of a T-L network run: the predictor and the autoencoder from
    its ``best.npz``, the autoencoder's architecture from its ``prior.yaml`` (the run does not
    need the prior's run directory)."""
    from sdnet_tf.config import PriorConfig, TLConfig, load_config
    from sdnet_tf.models.priors import assign_values, build_tl

    weights, prior_path = run_dir / "best.npz", run_dir / "prior.yaml"
    for needed, why in ((weights, "it is written at the first validation epoch"),
                        (prior_path, "it is written when the run starts")):
        if not needed.is_file():
            raise DataError(f"{run_dir}: no {needed.name} yet ({why})")
    config = load_config(str(config_path), kind=TLConfig)
    network = build_tl(config.model, load_config(str(prior_path), kind=PriorConfig).model)
    assign_values(network, read_npz(weights), source=str(weights))
    return TLSegmenter(network), config


def load_segmenter(run_dir):
    """``(kind, segmenter, config)`` of a U-Net baseline run ("unet": ``UNetSegmenter``,
    ``SegmentationConfig``) or a T-L network run ("tl": ``TLSegmenter``, ``TLConfig``); the
    segmenter's ``unet`` is the network whose call is the softmax over (background, RV, MYO,
    LV).

    Raises:
        DataError: not a run directory, a run of another kind, or no kept weights yet.
    """
    run_dir = Path(run_dir)
    kind = run_kind(run_dir)
    if kind not in ("unet", "tl"):
        raise DataError(f"{run_dir}: a {kind} run, not a U-Net or T-L network run")
    load = _load_tl_run if kind == "tl" else _load_unet_run
    return (kind, *load(run_dir, run_dir / "config.yaml"))


def batched(fn, array, batch_size=32):
    """``fn`` applied to ``array`` in slices of ``batch_size`` along the first axis, the
    results concatenated as numpy (so a large set never goes through a network at once)."""
    return np.concatenate([np.asarray(fn(array[i:i + batch_size])) for i in range(0, len(array), batch_size)])


def read_prior_config(path):
    """The ``PriorConfig`` of a shape prior's run directory, reading no weights (the checks
    ``load_prior`` makes before it builds the model).

    Raises:
        FileNotFoundError: no ``config.yaml`` or ``best.npz`` in ``path``.
        DataError: a run of another kind (not ``nvae`` or ``acnn``).
    """
    from sdnet_tf.config import PriorConfig, load_config

    path = Path(path).expanduser()
    config_path, weights = path / "config.yaml", path / "best.npz"
    for needed in (config_path, weights):
        if not needed.is_file():
            raise FileNotFoundError(f"shape prior {path}: no {needed.name} (train one with sdnet-tf prior train nvae "
                                    "or sdnet-tf prior train acnn, and give its run directory)")
    kind = run_kind(path)
    if kind not in ("nvae", "acnn"):
        raise DataError(f"{path}: a {kind} run, not a shape prior (sdnet-tf prior train nvae|acnn)")
    return load_config(config_path, kind=PriorConfig)


def load_prior(path, freeze=True):
    """The frozen best prior of a run directory (``sdnet-tf prior train nvae|acnn``).

    Args:
        path: the run directory (``config.yaml`` and ``best.npz``).
        freeze: mark every layer not trainable (the shape loss never updates it).

    Raises:
        FileNotFoundError: no ``config.yaml`` or ``best.npz`` in ``path``.

    Returns:
        ``(model, config)``: the built model, in inference use, and its ``PriorConfig``.
    """
    from sdnet_tf.models.priors import assign_values, build_prior

    path = Path(path).expanduser()
    config = read_prior_config(path)
    weights = path / "best.npz"
    model = build_prior(config.model)
    try:
        with np.load(weights) as data:
            values = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{weights}: not a readable weights file ({type(error).__name__}); the file is damaged "
                        "or was not written by sdnet-tf") from error
    assign_values(model, values, source=str(weights))
    if freeze:
        model.trainable = False
    return model, config


def load_run(run_dir):
    """``(model, config)`` of a run directory: the kept weights and ``config.yaml``.

    For SDNet, ``model.keras`` holds the best validation weights so far: training rewrites it
    at every validation epoch that improves on the best, so a run still training (no
    ``summary.json``) or stopped before its end (by ``--max-iterations``: its summary says
    ``complete`` false) can be used too; a warning then names the epoch the weights come from
    (``best.json``). A U-Net baseline run (``sdnet-tf train
    unet``) is loaded from its ``best.npz`` as a ``UNetSegmenter``, and a T-L network run
    (``sdnet-tf baseline train tl``) from its ``best.npz`` and ``prior.yaml`` as a
    ``TLSegmenter``, so they are predicted and scored exactly as SDNet is.

    Raises:
        DataError: no run directory, no ``config.yaml``, or no kept weights yet.
    """
    import keras

    import sdnet_tf.models  # noqa: F401  registers the serialisable classes
    from sdnet_tf.config import load_config

    run_dir = Path(run_dir)
    kind = run_kind(run_dir)
    model_path, config_path = run_dir / "model.keras", run_dir / "config.yaml"
    if kind not in ("sdnet", "sdnet2018", "unet", "unet_gan", "tl"):
        raise DataError(f"{run_dir}: a shape-prior run ({kind}); this command takes an SDNet run (sdnet-tf train "
                        "acdc), a U-Net run (sdnet-tf baseline train unet) or a T-L run (sdnet-tf baseline train tl)")
    if kind == "unet":
        model, config = _load_unet_run(run_dir, config_path)
    elif kind == "tl":
        model, config = _load_tl_run(run_dir, config_path)
    else:
        if not model_path.is_file():
            raise DataError(f"{run_dir}: no model.keras yet (it is written at the first validation epoch "
                            "and at each improvement; resume the run with 'sdnet-tf train ... --run-dir' "
                            "to get one)")
        config = load_config(str(config_path))
        try:
            model = keras.saving.load_model(str(model_path), compile=False)
        except (ValueError, OSError, zipfile.BadZipFile) as error:
            raise DataError(f"{model_path}: not a readable Keras model ({error}); resume the run to write it "
                            "again") from error
    why = _unfinished(run_dir)
    if why:
        best = run_dir / "best.json"
        what = "its best validation epoch so far"
        if best.is_file():
            record = json.loads(best.read_text())
            score = record.get("val_dice", record.get("dice_mean"))
            what += f", epoch {record['epoch']}" + (f" (validation Dice {score:.4f})" if score is not None else "")
        log.warning("%s has not finished training (%s): using %s", run_dir, why, what)
    return model, config


def _unfinished(run_dir):
    """Why a run has not finished training ("no summary.json", or its summary says it was stopped
    before its schedule's end by max_iterations), or None when it has (or cannot say)."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return "no summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(summary, dict) and summary.get("complete") is False:
        return f"stopped after {summary.get('iteration')} iterations by --max-iterations, before its schedule's end"
    return None


def probabilities_fn(model, batch_size=16):
    """A function from preprocessed slices (N, H, W, 1) to foreground probabilities (numpy)."""

    def run(slices):
        slices = np.asarray(slices, np.float32)
        parts = [np.asarray(model.segment(slices[i:i + batch_size], training=False))
                 for i in range(0, len(slices), batch_size)]
        return np.concatenate(parts) if parts else np.zeros(slices.shape[:3] + (model.num_classes,), np.float32)

    return run


class KerasRuntime:
    """A loaded run behind ``sdnet_infer.SDNetRuntime``'s interface, so prediction and quality
    control (``sdnet_infer.qc``) run the Keras model as they run the exported one.

    Args:
        model: an ``SDNet``, a ``UNetSegmenter`` or a ``TLSegmenter`` (``load_run``).
        spacing: the in-plane mm per pixel of the model's input (``config.data.spacing``).
        orientation: the training orientation (``run_orientation``).
        batch_size: slices per network call.

    Attributes:
        segment: preprocessed slices (N, size, size, 1) -> foreground probabilities (N, size, size, 3).
        decompose: slices -> (binary anatomy (N, size, size, C), z mean (N, nz), z log-variance
            (N, nz)); None for a U-Net.
        decode: (anatomy, z) -> images (N, size, size, 1); None for a U-Net.
    """

    def __init__(self, model, spacing, orientation, batch_size=16):
        self.model = model
        self.size = int(model.input_size)
        self.spacing = float(spacing)
        self.orientation = orientation
        self.batch_size = int(batch_size)
        if not hasattr(model, "decompose"):
            self.segment = probabilities_fn(model, batch_size)
            self.decompose = self.decode = None
        else:
            from sdnet_infer.model import AnatomyCache

            self._anatomy = AnatomyCache()

    def _batches(self, fn, *arrays):
        b = self.batch_size
        return [fn(*(a[i:i + b] for a in arrays)) for i in range(0, len(arrays[0]), b)]

    def segment(self, images):
        """SDNet's Segmentor(Binarise(U-Net(x))), keeping the binary anatomy factor for ``decompose``
        of the same slices (the quality control), as ``sdnet_infer.SDNetRuntime`` does; the
        MICCAI 2018 precursor's soft myocardium mask (N, size, size, 1)."""
        images = np.asarray(images, np.float32)
        if not len(images):
            return np.zeros(images.shape[:3] + (self.model.num_classes,), np.float32)
        if is_precursor(self.model):
            return np.concatenate(self._batches(lambda x: np.asarray(self.model.segment(x, training=False)), images))
        anatomy = np.concatenate(self._batches(
            lambda x: np.asarray(self.model.anatomy_encoder(x, training=False)), images))
        self._anatomy.keep(images, anatomy)
        return np.concatenate(self._batches(lambda a: np.asarray(self.model.segmentor(a, training=False)), anatomy))

    def decompose(self, images):
        images = np.asarray(images, np.float32)
        if is_precursor(self.model):  # the binarised mask and the deterministic z (no log-variance)
            parts = self._batches(lambda x: self.model.decompose(x, training=False), images)
            mask, z = (np.concatenate([np.asarray(p[k]) for p in parts]) for k in (0, 1))
            return np.round(mask), z, None
        anatomy = self._anatomy.take(images, lambda x: np.concatenate(self._batches(
            lambda y: np.asarray(self.model.anatomy_encoder(y, training=False)), x)))
        parts = self._batches(lambda a, x: self.model.modality_encoder([a, x], training=False, sample=False),
                              anatomy, images)
        mean, logvar = (np.concatenate([np.asarray(p[k]) for p in parts]) for k in (1, 2))
        return anatomy, mean, logvar

    def decode(self, anatomy, z):
        anatomy, z, b = np.asarray(anatomy, np.float32), np.asarray(z, np.float32), self.batch_size
        return np.concatenate([np.asarray(self.model.reconstruct(anatomy[i:i + b], z[i:i + b]))
                               for i in range(0, len(z), b)])


def is_precursor(model):
    """Whether ``model`` is the MICCAI 2018 precursor (``SDNet2018``: one myocardium channel,
    z from the image alone)."""
    return hasattr(model, "decomposer")


def refuse_precursor(run_dir, what):
    """Refuse, in one line and before any work, a MICCAI 2018 precursor run, a U-Net baseline
    run or a T-L network run for a command that reads SDNet's anatomy channels and modality
    encoder (figures, latent analysis, report, modality classifier).

    Raises:
        DataError: naming the run, when it is a precursor run (``run_kind`` "sdnet2018"), a
            U-Net baseline's ("unet", "unet_gan"), a T-L network's ("tl") or a shape prior's
            ("nvae", "acnn").
    """
    if not (Path(run_dir) / "config.yaml").is_file():
        return  # the command's own checks
    kind = run_kind(run_dir)
    if kind == "sdnet2018":
        raise DataError(f"{run_dir}: a MICCAI 2018 precursor run (model.kind sdnet2018); {what} takes SDNet runs "
                        "(it reads their anatomy channels and modality encoder); evaluate, predict and export "
                        "take this one")
    if kind in ("unet", "unet_gan"):
        raise DataError(f"{run_dir}: a U-Net baseline run (no anatomy factor, no modality encoder); {what} takes "
                        "SDNet runs; evaluate and predict take this one")
    if kind == "tl":
        raise DataError(f"{run_dir}: a T-L network run (an image encoder and a shape autoencoder's decoder; no "
                        f"anatomy factor, no modality encoder); {what} takes SDNet runs; evaluate, predict and "
                        "shape-eval take this one")
    if kind in ("nvae", "acnn"):
        raise DataError(f"{run_dir}: a shape-prior run ({kind}); {what} takes SDNet runs; shape-eval takes this one")


def _run_data_folder(meta, data=None):
    """The cohort folder of a run's ``data.json`` record, or ``data`` when it moved.

    Raises:
        DataError: the folder is not there.
    """
    if data:
        folder = Path(data).expanduser()
        if not folder.is_dir():
            what = "a file, not a folder" if folder.exists() else "no such folder"
            raise DataError(f"{folder} (--data): {what}; give the folder of the run's cohort")
        return folder
    folder = Path(meta["data"])
    if not folder.is_dir():
        raise DataError(f"{folder}: the run's data folder is not there; pass it with --data")
    return folder


def run_orientation(run_dir):
    """The orientation a run's volumes were brought into (its ``data.json``); ACDC's "LPS" for runs
    trained before it was recorded, or on synthetic arrays."""
    from sdnet_infer.geometry import TRAINING_ORIENTATION, check_orientation

    description = Path(run_dir) / "data.json"
    meta = json.loads(description.read_text()) if description.is_file() else {}
    return check_orientation(meta.get("orientation", TRAINING_ORIENTATION), str(description))


def run_description(run_dir):
    """A run's ``data.json`` as a dict ({} when it has none: a run on synthetic arrays, or older)."""
    description = Path(run_dir) / "data.json"
    try:
        return json.loads(description.read_text()) if description.is_file() else {}
    except ValueError as error:
        raise DataError(f"{description}: not readable JSON ({error})") from error


def run_label_convention(run_dir):
    """The label values a run's predictions are written in (``sdnet_infer.labels.LABEL_CONVENTIONS``):
    "mnms" (1 LV, 2 MYO, 3 RV) for a run trained on M&Ms data (its ``data.json``'s dataset), else
    "acdc" (1 RV, 2 MYO, 3 LV)."""
    return "mnms" if run_description(run_dir).get("dataset") == "mnms" else "acdc"


MNMS_SUBSETS = {"test": ("test_patients", "held_out_patients"), "validation": ("validation_patients",),
                "training": ("labelled_patients",)}


def run_mnms_patients(run_dir, subset="test", data=None, split=None, csv_path=""):
    """The patients of a run trained on an M&Ms-layout cohort (``sdnet-tf train mnms``), for scoring.

    ``subset`` "test" is the run's test patients of the vendors it saw (labelled and
    unlabelled) and every labelled patient of its held-out vendors (``data.json``'s
    ``test_patients`` and ``held_out_patients``); "validation" its validation patients;
    "training" the patients whose labels it trained on. ``data`` replaces the recorded cohort
    folder (and then the CSV is looked for in it: ``csv_path``, the run's ``data.mnms_csv``, or
    the one M&Ms CSV there). Each patient is found and checked on its own
    (``mnms.locate_patients``).

    Returns:
        ``(folder, description, codes, patients, errors)``: the cohort folder, the run's
        ``data.json``, the subset's External codes (sorted), ``{code: mnms.Patient}`` of those
        found, and ``{code: one line}`` of those that are not usable.

    Raises:
        DataError: no ``data.json`` or not an M&Ms run; an unknown subset; a ``split`` other
            than the run's own (an M&Ms run is scored on the split its vendors' roles were
            drawn for); the data folder gone (naming it, pointing to ``--data``); no CSV.
    """
    from sdnet_tf.data.mnms import locate_patients

    meta = run_description(run_dir)
    if meta.get("dataset") != "mnms":
        raise DataError(f"{run_dir}: not a run trained on an M&Ms-layout cohort (data.json's dataset is "
                        f"{meta.get('dataset')!r})")
    if subset not in MNMS_SUBSETS:
        raise DataError(f"unknown subset {subset!r}; expected one of {sorted(MNMS_SUBSETS)}")
    run_split = int(meta.get("split", 0))
    if split is not None and int(split) != run_split:
        raise DataError(f"{run_dir}: an M&Ms run is scored on its own split ({run_split}), where its test and "
                        f"held-out patients were drawn; --split {split} is for ACDC runs")
    folder = _run_data_folder(meta, data)
    recorded = meta.get("csv")
    if not data and recorded and Path(recorded).is_file():
        csv_path = recorded
    codes = sorted({code for key in MNMS_SUBSETS[subset] for code in meta.get(key, [])})
    if not codes:
        raise DataError(f"{Path(run_dir) / 'data.json'}: no {subset} patients recorded")
    patients, errors = locate_patients(folder, codes, csv_path)
    return folder, meta, codes, patients, errors


def run_cohort(run_dir, data=None):
    """(cohort folder, splits, the run's split) of a trained run, from its ``data.json``.

    ``data`` replaces the recorded folder (a cohort moved since training).
    """
    run_dir = Path(run_dir)
    description = run_dir / "data.json"
    if not description.is_file():
        raise DataError(f"{run_dir}: no data.json; evaluate a run trained on an ACDC-layout folder, "
                        "or score predictions with 'sdnet-tf evaluate -p PREDICTIONS -r REFERENCES'")
    meta = json.loads(description.read_text())
    if "splits" not in meta and "test_patients" in meta:  # a U-Net baseline run: its own split only
        split = int(meta.get("split", 0))
        splits = [None] * 3
        splits[split] = {name: meta[f"{name}_patients"] for name in ("training", "validation", "test")}
        meta = {**meta, "dataset": "acdc", "splits": splits}
    if meta.get("dataset") != "acdc":
        also = "; evaluate --run scores M&Ms runs, per vendor" if meta.get("dataset") == "mnms" else ""
        raise DataError(f"{run_dir}: trained on {meta.get('dataset')!r} data; only ACDC-layout cohorts "
                        f"(a folder or the phantom) can be read by split here{also}")
    folder = _run_data_folder(meta, data)
    return folder, meta["splits"], int(meta.get("split", 0))


def run_patients(run_dir, subset, data=None, split=None):
    """(cohort folder, all splits, split, the ``subset`` patients of that split found in the folder).

    ``subset`` is "training", "validation" or "test"; ``split`` defaults to the run's own;
    ``data`` replaces the recorded folder.

    Raises:
        DataError: as ``run_cohort``; an unknown subset; none of its patients in the folder.
    """
    from sdnet_tf.data.acdc import find_patients

    folder, splits, run_split = run_cohort(run_dir, data)
    split = run_split if split is None else split
    if subset not in splits[split]:
        raise DataError(f"unknown subset {subset!r}; expected one of {sorted(splits[split])}")
    wanted = set(splits[split][subset])
    patients = [p for p in find_patients(folder) if p.number in wanted]
    if not patients:
        raise DataError(f"{folder}: none of the {subset} patients of split {split} is there")
    return folder, splits, split, patients


def _multimodal_meta(run_dir):
    description = Path(run_dir) / "data.json"
    if not description.is_file():
        raise DataError(f"{run_dir}: no data.json; not a run trained with sdnet-tf train mmwhs")
    return json.loads(description.read_text())


def is_multimodal_run(run_dir):
    """Whether ``run_dir`` was trained on two modalities (``data.dataset`` mmwhs)."""
    description = Path(run_dir) / "data.json"
    return description.is_file() and json.loads(description.read_text()).get("dataset") == "mmwhs"


def modality_slices(run_dir, data=None, model=None, config=None):
    """The preprocessed slices of a two-modality run's cohort, by side of its split.

    Args:
        run_dir: a run of ``sdnet-tf train mmwhs``.
        data: the cohort folder, if it moved since training.
        model, config: the loaded run (``inference.load_run``), when already at hand.

    Returns:
        ``(model, config, slices)``, ``slices`` a dict of arrays over every kept slice:
        ``images`` (N, size, size, 1), ``labels`` (N, size, size) uint8 (ACDC values),
        ``modality`` (N,) int (index into ``modalities``), ``side`` (N,) "train", "held_out"
        or "none", ``case`` (N,) "mr_train_1001:k"; and ``modalities``.

    Raises:
        DataError: not a two-modality run, or its data folder is not there.
    """
    from sdnet_tf.data.mmwhs import MODALITIES, preprocess_mmwhs
    from sdnet_tf.data.sources import cache_dir

    meta = _multimodal_meta(run_dir)
    if meta.get("dataset") != "mmwhs":
        raise DataError(f"{run_dir}: trained on {meta.get('dataset')!r} data, not on two modalities; the modality "
                        "classifier takes a run of sdnet-tf train mmwhs")
    folder = _run_data_folder(meta, data)
    if model is None:
        model, config = load_run(run_dir)
    cohort, _ = preprocess_mmwhs(folder, cache_dir(config), model.input_size, progress=False,
                                 spacing=config.data.spacing)
    split = meta["splits"][int(meta.get("split", 0))]
    training, held_out = set(split["training"]), set(split["validation"]) | set(split["test"])
    parts = {"images": [], "labels": [], "modality": [], "side": [], "case": []}
    for index, modality in enumerate(MODALITIES):
        for number, arrays in sorted(cohort.get(modality, {}).items()):
            count = len(arrays["images"])
            side = "train" if number in training else "held_out" if number in held_out else "none"
            parts["images"].append(arrays["images"])
            parts["labels"].append(arrays["labels"])
            parts["modality"].append(np.full(count, index, np.int64))
            parts["side"] += [side] * count
            parts["case"] += [f"{modality}_train_{number}:{k}" for k in range(count)]
    slices = {key: np.concatenate(value) if key in ("images", "labels", "modality") else np.asarray(value)
              for key, value in parts.items()}
    slices["modalities"] = MODALITIES
    return model, config, slices


def held_out_pair(run_dir, model, config, data=None):
    """One held-out slice of each modality of a two-modality run, for the figures: the middle
    kept slice of the first held-out case of MR and of CT.

    Returns ``(images (2, size, size, 1), names, labels (2, size, size))``.
    """
    _, _, slices = modality_slices(run_dir, data, model, config)
    chosen, names = [], []
    for index, name in enumerate(slices["modalities"]):
        where = np.nonzero((slices["side"] == "held_out") & (slices["modality"] == index))[0]
        if not len(where):
            raise DataError(f"{run_dir}: no held-out {name.upper()} slice in its split")
        first = slices["case"][where[0]].split(":")[0]
        case = where[np.char.startswith(slices["case"][where].astype(str), first + ":")]
        k = case[len(case) // 2]
        chosen.append(k)
        names.append(f"{name.upper()} {slices['case'][k].split('_train_')[1]}")
    return slices["images"][chosen], names, slices["labels"][chosen]
