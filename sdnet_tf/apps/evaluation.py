"""Scoring label volumes against references: per-case and per-slice tables, a summary, clinical indices.

``evaluate_folder`` scores a folder of predictions (``<case>_pred.nii.gz``, as ``predict``
writes them) against references (``<case>_gt.nii.gz``, e.g. an ACDC training folder).
``evaluate_run`` first predicts the ED/ES frames of one split of a trained run's cohort, then
scores them. Everything is computed on the original NIfTI grid (brought into the training
orientation, which only flips and transposes it) with the voxel size in mm that
``sdnet_infer.geometry`` reads from the header; a prediction and a reference on different
grids are refused, never compared voxel by voxel.

Outputs, next to the predictions:

- ``acdc_metrics.csv``: the ACDC challenge's per-volume table, in its column order.
- ``cases.csv``: one row per volume: the challenge columns, Hausdorff distance, HD95 and ASSD
  in mm per class, the SDNet paper's per-slice Dice (means over the volume's slices) and the
  fraction of anatomically valid slices of the prediction and of the reference.
- ``slices.csv``: one row per slice: per-slice Dice and the validity checks that failed.
- ``clinical.csv``: per patient with ED and ES, the clinical indices of prediction and reference.
- ``summary.json``: mean and standard deviation per class and phase, the paper's figure
  (per-slice Dice averaged per patient, ED and ES slices together, then over patients),
  validity percentages and clinical agreement (correlation, bias, limits of agreement).

Conventions: a structure absent from both volumes has Dice NaN and distances 0 and is left out
of the means (``nanmean``); absent from exactly one, Dice 0 and distances NaN. Validity is
counted over the slices where the prediction or the reference has any foreground, so empty
slices above and below the heart do not inflate it.
"""

import csv
import logging
import math
import re
import time
from pathlib import Path

import numpy as np

from sdnet_infer.io import DataError, atomic_path, prepare_output_dir, read_labels, read_volume, save_labels, write_json
from sdnet_infer.predict import SUFFIX as PRED_SUFFIX
from sdnet_infer.predict import nifti_files, output_name, predict_volume, stem
from sdnet_infer.labels import SDNET_CHANNELS
from sdnet_tf.metrics import clinical, overlap, surface, validity

log = logging.getLogger("sdnet_tf.evaluation")

CLASSES = overlap.CLASSES  # {"LV": 3, "RV": 1, "MYO": 2}, the challenge's order
REF_SUFFIX = "_gt"
CASE_PATTERN = re.compile(r"(?P<patient>patient\d+)_frame(?P<frame>\d+)")
DISTANCE_METRICS = ("HD", "HD95", "ASSD")
CASE_COLUMNS = (["Name", "Patient", "Phase"] + overlap.ACDC_COLUMNS[1:]
                + [f"{m} {c}" for m in DISTANCE_METRICS for c in CLASSES]
                + ["SliceDice"] + [f"SliceDice {c}" for c in CLASSES]
                + ["Valid7 pred", "ValidP pred", "Valid7 ref", "ValidP ref", "Slices scored"])
SUMMARY_COLUMNS = {"Dice": "Dice {}", "Volume": "Volume {}", "Err": "Err {}(ml)", "HD": "HD {}",
                   "HD95": "HD95 {}", "ASSD": "ASSD {}", "SliceDice": "SliceDice {}"}
SLICE_COLUMNS = (["Name", "Slice", "SliceDice"] + [f"SliceDice {c}" for c in CLASSES]
                 + ["Valid7 pred", "ValidP pred", "Failed checks pred", "Valid7 ref"])


def _files(folder, suffix):
    """{case name: path} of the NIfTI files under ``folder`` whose name ends in ``suffix``
    (symlinked folders followed, as ``sdnet_infer.predict.nifti_files`` walks)."""
    found = {}
    for path in nifti_files(folder):
        name = stem(path)
        if name.endswith(suffix):
            case = name[: -len(suffix)]
            if case in found:
                raise DataError(f"{path}: case {case!r} also at {found[case]}; names must be unique")
            found[case] = path
    return found


def _phase(case, ref_path):
    """(patient, 'ED' / 'ES' / '') from the case name and the patient's Info.cfg, if any."""
    match = CASE_PATTERN.fullmatch(case)
    if not match:
        return case, ""
    info = ref_path.parent / "Info.cfg"
    phase = ""
    if info.is_file():
        from sdnet_tf.data.acdc import read_info

        values = read_info(info)
        frame = int(match.group("frame"))
        phase = "ED" if frame == values["ED"] else "ES" if frame == values["ES"] else ""
    return match.group("patient"), phase


def score_case(name, pred, ref, zooms):
    """Every per-volume and per-slice figure of one (H, W, S) prediction against its reference.

    Returns ``(case row, slice rows)`` keyed by ``CASE_COLUMNS`` / ``SLICE_COLUMNS`` (the row's
    ``Patient`` and ``Phase`` are left for the caller).
    """
    if pred.shape != ref.shape:
        raise DataError(f"{name}: prediction shape {pred.shape} differs from the reference's {ref.shape}")
    zooms = tuple(float(z) for z in zooms[:3])
    row = overlap.acdc_row(name, pred, ref, zooms)
    for cls, value in CLASSES.items():
        p, r = pred == value, ref == value
        row[f"HD {cls}"] = surface.hausdorff(p, r, zooms)
        row[f"HD95 {cls}"] = surface.hd95(p, r, zooms)
        row[f"ASSD {cls}"] = surface.assd(p, r, zooms)
    per_slice = overlap.slice_dice(pred, ref)
    spacing = zooms[:2]
    slices = []
    for k in range(pred.shape[2]):
        p, r = pred[..., k], ref[..., k]
        failed = validity.check_slice(p, spacing, validity.PAINCHAUD_CHECKS)
        seven = not any(failed[c] for c in validity.SEVEN_CHECKS)
        ref_seven = validity.is_valid(r, spacing, validity.SEVEN_CHECKS)
        slices.append({
            "Name": name, "Slice": k, "SliceDice": float(per_slice["pooled"][k]),
            **{f"SliceDice {c}": float(per_slice[c][k]) for c in CLASSES},
            "Valid7 pred": seven, "ValidP pred": not any(failed.values()),
            "Failed checks pred": ";".join(c for c, bad in failed.items() if bad),
            "Valid7 ref": ref_seven,
            "_scored": bool(p.any() or r.any()), "_ref": r,
        })
    row["SliceDice"] = float(np.mean(per_slice["pooled"]))
    for cls in CLASSES:
        row[f"SliceDice {cls}"] = float(np.mean(per_slice[cls]))
    scored = [s for s in slices if s["_scored"]]
    row["Slices scored"] = len(scored)
    for key, column in (("Valid7 pred", "Valid7 pred"), ("ValidP pred", "ValidP pred"),
                        ("Valid7 ref", "Valid7 ref")):
        row[column] = float(np.mean([s[key] for s in scored])) if scored else float("nan")
    row["ValidP ref"] = (float(np.mean([validity.is_valid(s["_ref"], spacing, validity.PAINCHAUD_CHECKS)
                                        for s in scored])) if scored else float("nan"))
    for s in slices:
        s.pop("_ref")
    return row, slices


def _stats(values):
    values = np.asarray([v for v in values if v is not None], np.float64)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std(ddof=1)) if len(finite) > 1 else 0.0,
            "n": int(len(finite))}


def _json_number(value):
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def summarise(rows, slice_rows, clinical_rows):
    """The summary dict of ``summary.json`` (see the module docstring)."""
    phases = sorted({r["Phase"] for r in rows if r["Phase"]})
    groups = {"all": rows, **{p: [r for r in rows if r["Phase"] == p] for p in phases}}
    per_class = {}
    for cls in CLASSES:
        per_class[cls] = {
            group: {metric: _stats([r[column.format(cls)] for r in members])
                    for metric, column in SUMMARY_COLUMNS.items()}
            for group, members in groups.items()}
    # the SDNet paper: per-slice Dice averaged over each patient's slices (ED and ES together)
    by_patient = {}
    for r in rows:
        by_patient.setdefault(r["Patient"], []).append(r["Name"])
    slices_of = {}
    for s in slice_rows:
        slices_of.setdefault(s["Name"], []).append(s)
    paper = {}
    for column in ["SliceDice"] + [f"SliceDice {c}" for c in CLASSES]:
        per_patient = [np.mean([s[column] for name in names for s in slices_of[name]])
                       for names in by_patient.values()]
        paper[column] = _stats(per_patient)
    dice_mean = [np.nanmean([r[f"Dice {c}"] for c in CLASSES]) if any(np.isfinite(r[f"Dice {c}"]) for c in CLASSES)
                 else np.nan for r in rows]
    summary = {
        "cases": len(rows), "patients": len(by_patient),
        "dice_mean_3d": _stats(dice_mean),
        "per_class": per_class,
        "paper_slice_dice": paper,
        "validity_percent": {
            column: _json_number(100.0 * float(np.mean([s[column] for s in slice_rows if s["_scored"]])))
            if any(s["_scored"] for s in slice_rows) else None
            for column in ("Valid7 pred", "ValidP pred", "Valid7 ref")},
        "scored_slices": int(sum(s["_scored"] for s in slice_rows)),
    }
    if clinical_rows:
        summary["clinical"] = {
            index: {k: _json_number(v) for k, v in clinical.agreement(
                [r[f"{index} pred"] for r in clinical_rows], [r[f"{index} ref"] for r in clinical_rows]).items()}
            for index in clinical.CLINICAL_INDICES}
    return _clean(summary)


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return _json_number(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def _write_csv(path, rows, columns):
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _format(row.get(k)) for k in columns})


def _format(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return "nan" if not math.isfinite(value) else f"{float(value):.6g}"
    return value


def only_structures(rows, slice_rows, structures):
    """Rows of a model that segments only ``structures`` (the MICCAI 2018 precursor: MYO): the
    other structures' columns blanked (NaN, empty in the CSVs and left out of every mean), the
    pooled per-slice Dice made the mean of the segmented structures', and the validity columns
    (checks that need LV, MYO and RV) blanked. Changes the dicts in place."""
    others = [c for c in CLASSES if c not in structures]
    nan = float("nan")
    for row in rows:
        for key in list(row):
            if any(key.endswith(f" {c}") or key.startswith(f"Err {c}") for c in others) or key.startswith("Valid"):
                row[key] = nan
        row["SliceDice"] = float(np.mean([row[f"SliceDice {c}"] for c in structures]))
    for s in slice_rows:
        for c in others:
            s[f"SliceDice {c}"] = nan
        s["SliceDice"] = float(np.mean([s[f"SliceDice {c}"] for c in structures]))
        for key in ("Valid7 pred", "ValidP pred", "Valid7 ref"):
            s[key] = nan
        s["Failed checks pred"] = ""


def evaluate_folder(predictions, references, out_dir=None, report=None, label_map=None, structures=None):
    """Score every ``<case>_pred`` under ``predictions`` against ``<case>_gt`` under ``references``.

    Both files of a case are read by ``sdnet_infer.geometry`` and must lie on the same grid:
    a prediction whose shape, voxel size or affine differs from its reference's is refused
    (the message names both files), as is a case whose files cannot be read or whose
    reference is missing; refused cases are recorded in the summary's ``errors`` and the
    others are scored, in the training orientation with the voxel size in mm.
    ``label_map`` ({stored: ACDC label}, see ``sdnet_infer.io.parse_label_map``) converts
    references in another label convention (M&Ms: 1 LV, 2 MYO, 3 RV). ``report(index,
    total, name, error)`` is called after each case. ``structures`` (e.g. ["MYO"]) scores a
    model that segments only those (``only_structures``; no clinical indices, which need the
    LV). Writes the tables and ``summary.json``
    into ``out_dir`` (default: the predictions folder) and returns the summary.

    Raises:
        DataError: a missing folder, no predictions, or no case that could be scored.
        OSError: naming the path, when ``out_dir`` cannot be written.
    """
    predictions, references = Path(predictions), Path(references)
    for folder in (predictions, references):
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder")
    out_dir = prepare_output_dir(Path(out_dir) if out_dir else predictions)
    preds, refs = _files(predictions, PRED_SUFFIX), _files(references, REF_SUFFIX)
    if not preds:
        raise DataError(f"{predictions}: no *{PRED_SUFFIX}.nii.gz predictions found")
    rows, slice_rows, errors, volumes = [], [], [], {}
    for index, (case, pred_path) in enumerate(sorted(preds.items()), start=1):
        error = None
        try:
            if case not in refs:
                raise DataError(f"{pred_path}: no reference {case}{REF_SUFFIX}.nii.gz under {references}")
            reference = read_labels(refs[case], label_map=label_map)
            pred = read_labels(pred_path, like=reference.geometry).data  # the same grid, or refused
            ref, zooms = reference.data, reference.zooms
            patient, phase = _phase(case, refs[case])
            row, slices = score_case(case, pred, ref, zooms)
            row.update(Patient=patient, Phase=phase)
            rows.append(row)
            slice_rows.extend(slices)
            if phase:
                volumes.setdefault(patient, {})[phase] = (pred, ref, zooms)
        except DataError as exc:
            error = str(exc)
            errors.append(error)
        if report is not None:
            report(index, len(preds), case, error)
    if structures is not None:
        only_structures(rows, slice_rows, structures)
        volumes = {}  # the clinical indices are the LV's and RV's
    clinical_rows = []
    for patient, phases in sorted(volumes.items()):
        if {"ED", "ES"} <= set(phases):
            (ed_p, ed_r, zooms), (es_p, es_r, _) = phases["ED"], phases["ES"]
            pred_idx = clinical.clinical_indices(ed_p, es_p, zooms)
            ref_idx = clinical.clinical_indices(ed_r, es_r, zooms)
            clinical_rows.append({"Patient": patient, **{f"{k} pred": pred_idx[k] for k in clinical.CLINICAL_INDICES},
                                  **{f"{k} ref": ref_idx[k] for k in clinical.CLINICAL_INDICES}})
    if not rows:
        raise DataError(f"{predictions}: no case could be scored:\n  " + "\n  ".join(errors))
    summary = summarise(rows, slice_rows, clinical_rows)
    summary["errors"] = errors
    if structures is not None:
        summary["structures"] = list(structures)
    for s in slice_rows:
        s.pop("_scored")
    _write_csv(out_dir / "acdc_metrics.csv", rows, overlap.ACDC_COLUMNS)
    _write_csv(out_dir / "cases.csv", rows, CASE_COLUMNS)
    _write_csv(out_dir / "slices.csv", slice_rows, SLICE_COLUMNS)
    if clinical_rows:
        _write_csv(out_dir / "clinical.csv", clinical_rows, list(clinical_rows[0]))
    write_json(out_dir / "summary.json", summary)
    return summary


def _lv_volume_row(patient, index, counts, spacing, volume, orientation):
    """The LV-volume head's volume of one frame against its reference, in ml: the head's
    pixel counts of every slice at the model's ``spacing`` (mm), times the slice thickness."""
    from sdnet_infer.labels import LV

    reference = read_labels(patient.labels(index), volume.data.shape, like=volume.geometry, orientation=orientation)
    voxel_ml = float(np.prod(reference.zooms[:3])) / 1000.0
    reference_ml = float(np.sum(reference.data == LV)) * voxel_ml
    predicted_ml = float(np.sum(np.concatenate(counts))) * spacing * spacing * float(volume.zooms[2]) / 1000.0
    phase = "ED" if index == patient.ed else "ES"
    return {"case": f"{patient.name}_{phase}", "predicted_ml": round(predicted_ml, 3),
            "reference_ml": round(reference_ml, 3), "error_ml": round(predicted_ml - reference_ml, 3)}


def evaluate_run(run_dir, out_dir, data=None, split=None, subset="test", batch_size=16, report=None):
    """Predict the ED/ES frames of ``subset`` of a run's split, then ``evaluate_folder`` them.

    Predictions go to ``out_dir/predictions/patientNNN/`` and the tables into ``out_dir``.
    A run with the LV-volume head (``model.lv_volume_head``) also gets the head's LV volume of
    each frame against the reference's, in ml (``lv_volume_head.csv`` and
    ``summary["lv_volume_head"]``: per frame, and the mean and spread of the error and of its
    absolute value).
    ``split`` defaults to the run's own; ``subset`` is "test", "validation" or "training".
    """
    from sdnet_tf.inference import load_run, probabilities_fn, run_orientation, run_patients

    out_dir = prepare_output_dir(out_dir)
    model, config = load_run(run_dir)
    orientation = run_orientation(run_dir)
    folder, splits, split, patients = run_patients(run_dir, subset, data, split)
    wanted = set(splits[split][subset])
    out_dir = Path(out_dir)
    pred_root = out_dir / "predictions"
    head = getattr(model, "lv_regressor", None)
    counts = []  # the LV-volume head's pixel counts of the slices of the frame being predicted
    if head is None:
        probabilities = probabilities_fn(model, batch_size)
    else:
        def probabilities(slices):  # one anatomy pass gives both the masks and the head's counts
            slices, parts = np.asarray(slices, np.float32), []
            for i in range(0, len(slices), batch_size):
                anatomy = model.anatomy_encoder(slices[i:i + batch_size], training=False)
                parts.append(np.asarray(model.segmentor(anatomy, training=False)))
                counts.append(np.asarray(head(anatomy)).reshape(-1))
            return np.concatenate(parts) if parts else np.zeros(slices.shape[:3] + (model.num_classes,), np.float32)

    frames = [(p, index) for p in patients for index in (p.ed, p.es)]
    volumes = []
    start = time.perf_counter()
    for number, (patient, index) in enumerate(frames, start=1):
        image_path = patient.frame(index)
        volume = read_volume(image_path, orientation=orientation)
        counts.clear()
        labels = predict_volume(volume.data, volume.zooms[:2], probabilities, model.input_size, config.data.spacing,
                                source=str(image_path))
        save_labels(labels, volume.image, pred_root / patient.name / output_name(image_path), volume.geometry)
        if head is not None:
            volumes.append(_lv_volume_row(patient, index, counts, config.data.spacing, volume, orientation))
        if report is not None:
            report(number, len(frames), image_path.name, None)
    log.info("predicted %d frames in %.1f s", len(frames), time.perf_counter() - start)
    partial = model.num_classes < len(SDNET_CHANNELS)  # the precursor: the myocardium alone
    structures = list(SDNET_CHANNELS[:model.num_classes]) if partial else None
    summary = evaluate_folder(pred_root, folder, out_dir, structures=structures)
    summary["run"] = {"run_dir": str(run_dir), "data": str(folder), "split": split, "subset": subset,
                      "patients": sorted(wanted)}
    if partial:
        # the MICCAI 2018 precursor: its own figures, the per-slice Dice first as that paper
        # reports it (the other structures' columns are blank)
        summary["segmented"] = {c: {"slice_dice": summary["paper_slice_dice"][f"SliceDice {c}"],
                                    **{metric: summary["per_class"][c]["all"][metric] for metric in ("Dice", "HD95")}}
                                for c in structures}
    if head is not None:
        errors = [row["error_ml"] for row in volumes]
        summary["lv_volume_head"] = {"frames": volumes, "error_ml": _stats(errors),
                                     "absolute_error_ml": _stats([abs(e) for e in errors])}
        _write_csv(out_dir / "lv_volume_head.csv", volumes, list(volumes[0]) if volumes else [])
    write_json(out_dir / "summary.json", summary)
    return summary
