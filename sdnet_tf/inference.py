"""Loading a trained run and running its networks for prediction (Keras only, any backend)."""

import json
from pathlib import Path

import numpy as np

from sdnet_infer.io import DataError


def load_run(run_dir):
    """``(model, config)`` of a run directory: the kept weights (``model.keras``) and ``config.yaml``.

    ``model.keras`` holds the best validation weights once training has finished; a run
    still training has only checkpoints and is refused with a message saying so.
    """
    import keras

    import sdnet_tf.models  # noqa: F401  registers the serialisable classes
    from sdnet_tf.config import load_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory")
    model_path, config_path = run_dir / "model.keras", run_dir / "config.yaml"
    if not config_path.is_file():
        raise DataError(f"{run_dir}: no config.yaml; not an sdnet-tf run directory")
    if not model_path.is_file():
        raise DataError(f"{run_dir}: no model.keras yet (it is written when training finishes; "
                        "resume the run with 'sdnet-tf train ... --run-dir' to finish it)")
    config = load_config(str(config_path))
    model = keras.saving.load_model(str(model_path), compile=False)
    return model, config


def probabilities_fn(model, batch_size=16):
    """A function from preprocessed slices (N, H, W, 1) to foreground probabilities (numpy)."""

    def run(slices):
        slices = np.asarray(slices, np.float32)
        parts = [np.asarray(model.segment(slices[i:i + batch_size], training=False))
                 for i in range(0, len(slices), batch_size)]
        return np.concatenate(parts) if parts else np.zeros(slices.shape[:3] + (model.num_classes,), np.float32)

    return run


def run_orientation(run_dir):
    """The orientation a run's volumes were brought into (its ``data.json``); ACDC's "LPS" for runs
    trained before it was recorded, or on synthetic arrays."""
    from sdnet_infer.geometry import TRAINING_ORIENTATION, check_orientation

    description = Path(run_dir) / "data.json"
    meta = json.loads(description.read_text()) if description.is_file() else {}
    return check_orientation(meta.get("orientation", TRAINING_ORIENTATION), str(description))


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
    if meta.get("dataset") != "acdc":
        raise DataError(f"{run_dir}: trained on {meta.get('dataset')!r} data; only ACDC-layout cohorts "
                        "(a folder or the phantom) can be evaluated by split")
    folder = Path(data).expanduser() if data else Path(meta["data"])
    if not folder.is_dir():
        raise DataError(f"{folder}: the run's data folder is not there; pass it with --data")
    return folder, meta["splits"], int(meta.get("split", 0))
