"""Calibration of the quality control (``sdnet_infer.qc``) on a trained run's own data.

The thresholds come from the ED and ES frames of the run's validation patients, predicted and
assessed exactly as ``sdnet-tf predict`` and ``sdnet-infer`` assess any input; the distribution
of the modality factor z from the slices of the ED and ES frames of its training patients. Both
go through the model that will be scored with: the Keras model for ``sdnet-tf predict`` (the
result is cached in the run directory as ``qc-calibration.json``, keyed by the weights' SHA-256),
the exported ONNX models for an export's sidecar (``export/qc_calibration.py``).
"""

import json
import time
from pathlib import Path

import numpy as np

from sdnet_infer.io import DataError, describe_os_error, read_volume, write_json
from sdnet_infer.model import sha256
from sdnet_infer.predict import predict_volume
from sdnet_infer.preprocess import preprocess_frame
from sdnet_infer.qc import VERSION, QualityControl, calibrate, latent_statistics

CALIBRATION_FILE = "qc-calibration.json"
WEIGHT_FILES = ("model.keras", "best.npz")  # SDNet's kept weights, the U-Net baseline's


def _decomposes(model):
    return getattr(model, "decompose", None) is not None


def _training_z(patients, model):
    """z means (N, nz) of the slices holding an image of the patients' ED and ES frames."""
    means = []
    for patient in patients:
        for index in (patient.ed, patient.es):
            path = patient.frame(index)
            volume = read_volume(path, orientation=model.orientation)
            slices, _, _ = preprocess_frame(volume.data, volume.zooms[:2], size=model.size, target=model.spacing,
                                            source=str(path))  # (S, size, size)
            slices = slices[np.ptp(slices.reshape(len(slices), -1), axis=1) > 0]
            if len(slices):
                means.append(np.asarray(model.decompose(slices[..., None])[1]))
    return np.concatenate(means)


def calibrate_run(run_dir, model, data=None, log=None):
    """Calibrate the quality control of ``model`` on the cohort ``run_dir`` was trained on.

    Args:
        run_dir: a run trained on an ACDC-layout cohort (its ``data.json`` names the cohort
            and the split).
        model: ``segment(images)`` -> foreground probabilities, with ``size``, ``spacing``
            (mm per pixel) and ``orientation``, and for the out-of-distribution scores
            ``decompose`` and ``decode`` (``SDNetRuntime``, ``sdnet_tf.inference.KerasRuntime``).
        data: the cohort folder, when it moved since training.
        log: a function taking one line of progress, or None.

    Returns:
        The calibration (``sdnet_infer.qc.calibrate``): thresholds from the validation
        patients' ED and ES frames, z statistics from the training patients' slices.

    Raises:
        DataError: no ``data.json``, a run not trained on an ACDC-layout cohort, the cohort
            gone, or none of the split's validation (or, for z, training) patients there.
    """
    from sdnet_tf.data.acdc import find_patients

    start = time.perf_counter()
    folder, splits, split = _cohort(run_dir, data)
    found = {p.number: p for p in find_patients(folder)}
    training = [found[n] for n in splits[split]["training"] if n in found]
    validation = [found[n] for n in splits[split]["validation"] if n in found]
    if not validation:
        raise DataError(f"{folder}: none of the validation patients of split {split} is there")
    latent = None
    if _decomposes(model):
        if not training:
            raise DataError(f"{folder}: none of the training patients of split {split} is there")
        latent = latent_statistics(_training_z(training, model))
    quality = QualityControl(model, {"calibrated": True, "thresholds": {}, "latent": latent})
    volumes = []
    for patient in validation:
        for index in (patient.ed, patient.es):
            path = patient.frame(index)
            volume = read_volume(path, orientation=model.orientation)
            labels, slices = predict_volume(volume.data, volume.zooms[:2], model.segment, model.size, model.spacing,
                                            source=str(path), keep_slices=True)
            volumes.append(quality.assess(slices, labels, volume.zooms[:2], image=volume.data)["statistics"])
    calibration = calibrate(volumes, latent, patients=[p.number for p in validation])
    if log:
        z = f"z of {latent['slices']} slices of {len(training)} training patients, " if latent else ""
        log(f"quality control calibrated on {folder}: {z}thresholds from {len(volumes)} ED/ES frames of "
            f"{len(validation)} validation patients ({time.perf_counter() - start:.1f} s)")
    return calibration


def _cohort(run_dir, data=None):
    """(cohort folder, splits, split) of a run trained on an ACDC-layout cohort (``run_cohort``).

    Raises:
        DataError: no ``data.json``, a run trained on other data (M&Ms, MM-WHS), the cohort gone.
    """
    from sdnet_tf.inference import run_cohort

    if not (Path(run_dir) / "data.json").is_file():
        raise DataError(f"{run_dir}: no data.json, so no record of the cohort and split it was trained on")
    return run_cohort(run_dir, data)


def _weights(run_dir):
    return next((run_dir / name for name in WEIGHT_FILES if (run_dir / name).is_file()), None)


def run_calibration(run_dir, model, data=None, log=None):
    """The quality-control calibration of a run, computed on its data once and then read from
    ``run_dir/qc-calibration.json`` while the run's weights are unchanged.

    Args: as ``calibrate_run``; ``log`` also gets the line of a cache that cannot be written.

    Returns:
        ``(calibration, note)``: the calibration and None, or None and one line saying why
        there is none (the run's data are not available), for a validity-only quality control.
    """
    run_dir = Path(run_dir)
    weights = _weights(run_dir)
    key = {"version": VERSION, "weights_sha256": sha256(weights) if weights else None, "size": int(model.size),
           "spacing_mm": float(model.spacing), "orientation": model.orientation, "decomposes": _decomposes(model)}
    path = run_dir / CALIBRATION_FILE
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = None
    if isinstance(cached, dict) and cached.get("key") == key:
        return cached["qc"], None
    try:
        _cohort(run_dir, data)  # a run whose data cannot be read says why before announcing a calibration
        if log:
            log(f"calibrating the quality control on the data of {run_dir} (once; kept in {path})")
        calibration = calibrate_run(run_dir, model, data, log)
    except DataError as error:
        return None, f"no out-of-distribution scores: the quality control cannot be calibrated ({error})"
    try:
        write_json(path, {"key": key, "qc": calibration})
    except OSError as error:
        if log:
            log(f"{describe_os_error(error)}: the calibration is not kept and will be computed again next time")
    return calibration, None
