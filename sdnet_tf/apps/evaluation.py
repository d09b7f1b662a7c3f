"""Scoring label volumes against references: per-case and per-slice tables, a summary, clinical indices.

``evaluate_folder`` scores a folder of predictions (``<case>_pred.nii.gz``, as ``predict``
writes them) against references (``<case>_gt.nii.gz``, e.g. an ACDC training folder).
``evaluate_run`` first predicts the ED/ES frames of one split of a trained run's cohort, then
scores them; for a run trained on an M&Ms-layout cohort it calls ``evaluate_mnms_run``, which
predicts the ED/ES frames of the run's test patients of the vendors it saw and of every patient
of its held-out vendors from their 4-D files (``sdnet_tf.apps.mnms_cases``), scores them alike
and adds a summary per vendor (``per_vendor`` in ``summary.json``, ``vendors.csv``). Everything is computed on the original NIfTI grid (brought into the training
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
- ``vendors.csv`` (M&Ms runs): per vendor, its role, patients, mean Dice and HD95 per structure.
- ``summary.json``: mean and standard deviation per class and phase, the paper's figure
  (per-slice Dice averaged per patient, ED and ES slices together, then over patients),
  validity percentages and clinical agreement (correlation, bias, limits of agreement).

Conventions: a structure absent from both volumes has Dice NaN and distances 0 and is left out
of the means (``nanmean``); absent from exactly one, Dice 0 and distances NaN. Validity is
counted over the slices where the prediction or the reference has any foreground, so empty
slices above and below the heart do not inflate it.
"""

import csv
import json
import logging
import math
import os
import re
import time
from pathlib import Path

import numpy as np

from sdnet_infer.io import (DataError, atomic_path, axis_along, check_label_convention, check_output_location,
                           check_same_grid, folder_problem, parse_label_map, prepare_output_dir, read_labels,
                           read_volume, save_labels, write_json)
from sdnet_infer.predict import SUFFIX as PRED_SUFFIX
from sdnet_infer.predict import nifti_files, output_name, predict_volume, stem, walk_once
from sdnet_infer.labels import SDNET_CHANNELS
from sdnet_tf.apps.mnms_cases import (PHASES, STRUCTURES, VENDOR_COLUMNS, predict_patient, prediction_path,
                                      read_reference, vendor_rows)
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
    """``({case name: path}, {case name: [paths]})``: the NIfTI files under ``folder`` whose
    name ends in ``suffix``, and the case names two or more files share (``x_gt.nii`` and
    ``x_gt.nii.gz``), which are not scored: each such case is refused naming its files, and the
    others go on. The suffix and the extension are matched in any case (``CASE_GT.NII.GZ`` is
    case ``CASE``)."""
    found, shared = {}, {}
    for path in nifti_files(folder):
        name = stem(path)
        if name.lower().endswith(suffix.lower()):
            case = name[: -len(suffix)]
            if case in found:
                shared.setdefault(case, [found[case]]).append(path)
            found[case] = path
    return found, shared


def enclosed_by_myo(labels):
    """``{label: share}`` for labels 1 and 3 of an ACDC-valued volume (H, W, S): the share of the
    pixels bordering the label in-plane (4-neighbours, not of the label) that are MYO (2); None
    for a label that is absent. The LV lies inside the myocardial ring (share near 1), the RV
    beside it (well under one half)."""
    from scipy import ndimage

    shares = {}
    ring = np.zeros((3, 3, 1), bool)
    ring[1, :, 0] = ring[:, 1, 0] = True  # 4-neighbours, within each slice
    for label in (1, 3):
        inside = labels == label
        if not inside.any():
            shares[label] = None
            continue
        border = ndimage.binary_dilation(inside, ring) & ~inside
        shares[label] = float((labels[border] == 2).mean()) if border.any() else None
    return shares


def convention_warning(labels, path):
    """A warning naming ``path`` when its labels, read as ACDC's (1 RV, 2 MYO, 3 LV), have label
    1 inside the myocardium and label 3 outside: M&Ms' convention (1 LV, 2 MYO, 3 RV) given
    without ``--label-map mnms``, which scores LV and RV against each other. Else None."""
    shares = enclosed_by_myo(labels)
    one, three = shares[1], shares[3]
    if one is None or three is None or not (one > 0.5 and one > three + 0.25):
        return None
    return (f"{path}: label 1 borders MYO on {one:.0%} of its edge and label 3 on {three:.0%}: it looks like M&Ms' "
            "convention (1 LV, 2 MYO, 3 RV) read as ACDC's (1 RV, 3 LV); if so give --label-map mnms")


def _not_unique(case, paths):
    return DataError(f"{paths[0]}: case {case!r} also at {', '.join(str(p) for p in paths[1:])}; names must be "
                     "unique, so none of them is scored")


PREDICTIONS_LIST = "predictions.json"  # what predict / sdnet-infer write beside their outputs


def _predictions_lists(folder):
    """The ``predictions.json`` files under ``folder`` (walked as ``nifti_files`` walks), sorted."""
    return sorted(root / PREDICTIONS_LIST for root, files in walk_once(folder) if PREDICTIONS_LIST in files)


def prediction_convention(folder, given=None):
    """The label convention the predictions under ``folder`` are written in, and where it came from.

    ``predict`` and ``sdnet-infer`` record it in each record of their ``predictions.json``
    (``labels``: "acdc", 1 RV, 2 MYO, 3 LV; or "mnms", 1 LV, 2 MYO, 3 RV, for a model trained on
    M&Ms); a record without it predates M&Ms runs and is "acdc". The lists under ``folder`` are
    read; without any, the nearest ``predictions.json`` above it, for its records of files under
    ``folder`` (``folder`` is a sub-folder of predict's output). ``given`` ("acdc" or "mnms",
    ``--prediction-labels``) overrides the record, which must then agree with it; with neither,
    the predictions are taken to be in ACDC's values.

    Returns:
        ``(convention, source)``: source is "given", the ``predictions.json`` path that recorded
        it, or "default".

    Raises:
        DataError: one line naming the ``predictions.json``: it cannot be read (unless
            ``given``, which is then used with a warning), it names an unknown convention or
            two conventions, or it disagrees with ``given``; or ``given`` is no convention.
    """
    if given is not None:
        given = check_label_convention(str(given).lower(), "prediction labels")
    recorded = {}  # {convention: the first predictions.json that records it}
    lists = [(path, None) for path in _predictions_lists(folder)]
    if not lists:  # a sub-folder of predict's output: the list one or more levels up, for the files under folder
        above = next((d / PREDICTIONS_LIST for d in Path(folder).resolve().parents if (d / PREDICTIONS_LIST).is_file()),
                     None)
        lists = [(above, Path(folder).resolve())] if above is not None else []
    for path, under in lists:
        try:
            records = json.loads(path.read_text())
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise ValueError("not a list of records, as predict writes it")
        except (OSError, ValueError) as error:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            if given is None:
                raise DataError(f"{path}: cannot read the predictions' label convention from it ({reason}); "
                                "give it with --prediction-labels acdc|mnms") from error
            log.warning("%s: cannot be read (%s); taking the predictions' labels as %r, as given", path, reason,
                        given)
            continue
        for record in records:
            if under is not None and not _lies_under(record.get("output"), under):
                continue
            convention = check_label_convention(record.get("labels", "acdc"), f"{path}: labels")
            recorded.setdefault(convention, path)
    if len(recorded) > 1:
        (first, one), (second, other) = sorted(recorded.items())
        where = f"records predictions in both {first!r} and {second!r} labels" if one == other else \
            f"records predictions in {second!r} labels, but {one} records {first!r}"
        raise DataError(f"{other}: {where}; score each convention's predictions separately")
    if recorded:
        (convention, path), = recorded.items()
        if given is not None and given != convention:
            raise DataError(f"{path}: records the predictions in {convention!r} labels, but the prediction "
                            f"labels given are {given!r}; leave them out or give {convention!r}")
        return (given, "given") if given is not None else (convention, str(path))
    return (given, "given") if given is not None else ("acdc", "default")


def _lies_under(output, folder):
    """Whether a ``predictions.json`` record's ``output`` (None for a failed input) is a file under ``folder``."""
    if not output:
        return False
    try:
        return Path(output).resolve().is_relative_to(folder)
    except (OSError, RuntimeError):
        return False


def _label_map_name(label_map):
    """A references' ``label_map`` ({stored: ACDC}) as the summary records it: "acdc" (None or
    the identity), "mnms", or its STORED:ACDC pairs."""
    if label_map is None or label_map == parse_label_map("acdc"):
        return "acdc"
    if label_map == parse_label_map("mnms"):
        return "mnms"
    return ",".join(f"{stored}:{acdc}" for stored, acdc in sorted(label_map.items()))


def _check_folder(folder):
    """Raise ``DataError`` naming ``folder`` unless it is a folder (symbolic links followed): a
    file, a broken or looping symbolic link (``sdnet_infer.io.folder_problem``), or nothing there."""
    problem = folder_problem(folder)
    if problem or not os.path.isdir(folder):
        raise DataError(f"{folder}: {problem or 'no such folder'}")


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
        for measure, distance in surface.summaries(p, r, zooms).items():
            row[f"{measure} {cls}"] = distance
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


def score_cases(cases, out_dir, report=None, structures=None, columns=CASE_COLUMNS, errors=(), source="",
                extra_summary=None):
    """Score cases and write the tables and ``summary.json`` (the module docstring's files).

    Args:
        cases: ``[(case name, load)]``, in order; ``load()`` returns a dict with ``pred`` and
            ``ref`` (H, W, S) uint8 in ACDC's values on one grid in the training orientation,
            ``zooms`` (their voxel size in mm), ``patient`` and ``phase`` ("ED", "ES" or ""), and
            any other columns of the case's row (e.g. ``Vendor``); it raises ``DataError`` for
            a case that cannot be scored, which is recorded in ``summary["errors"]``.
        out_dir: the folder of the tables (made ready by the caller).
        report: ``report(index, total, name, error)`` after each case, or None.
        structures: e.g. ["MYO"], for a model that segments only those (``only_structures``).
        columns: the columns of ``cases.csv``.
        errors: lines of cases refused before scoring, kept first in ``summary["errors"]``.
        source: what the cases come from, for the message when none could be scored.
        extra_summary: ``extra_summary(rows, slice_rows)`` -> a dict merged into the summary
            (slice rows with ``_scored``: whether the slice counts for validity), or None.

    Returns:
        The summary (``summarise``, with ``errors`` and ``structures`` when given).

    Raises:
        DataError: no case could be scored (every error listed; those that ``report`` was
            given are counted instead of repeated).
        OSError: naming the path, when ``out_dir`` cannot be written.
    """
    out_dir = Path(out_dir)
    rows, slice_rows, errors, volumes = [], [], list(errors), {}
    for index, (case, load) in enumerate(cases, start=1):
        error = None
        try:
            loaded = dict(load())
            pred, ref, zooms = loaded.pop("pred"), loaded.pop("ref"), loaded.pop("zooms")
            patient, phase = loaded.pop("patient"), loaded.pop("phase")
            row, slices = score_case(case, pred, ref, zooms)
            row.update(Patient=patient, Phase=phase, **loaded)
            rows.append(row)
            slice_rows.extend(slices)
            if phase:
                volumes.setdefault(patient, {})[phase] = (pred, ref, zooms)
        except DataError as exc:
            error = str(exc)
            errors.append(error)
        if report is not None:
            report(index, len(cases), case, error)
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
        # every case failed; ``report`` showed those failures as they came, so only the files
        # refused before scoring (the first errors) are listed, not the cases' again
        unshown = errors if report is None else errors[:len(errors) - len(cases)]
        shown = "" if report is None else f" ({len(cases)} failed as shown above)"
        raise DataError(f"{source}: no case could be scored{shown}" + ":\n  " * bool(unshown) + "\n  ".join(unshown))
    summary = summarise(rows, slice_rows, clinical_rows)
    summary["errors"] = errors
    if structures is not None:
        summary["structures"] = list(structures)
    if extra_summary is not None:
        summary.update(_clean(extra_summary(rows, slice_rows)))
    for s in slice_rows:
        s.pop("_scored")
    _write_csv(out_dir / "acdc_metrics.csv", rows, overlap.ACDC_COLUMNS)
    _write_csv(out_dir / "cases.csv", rows, list(columns))
    _write_csv(out_dir / "slices.csv", slice_rows, SLICE_COLUMNS)
    if clinical_rows:
        _write_csv(out_dir / "clinical.csv", clinical_rows, list(clinical_rows[0]))
    write_json(out_dir / "summary.json", summary)
    return summary


def evaluate_folder(predictions, references, out_dir=None, report=None, label_map=None, structures=None,
                    prediction_labels=None, slicing="auto"):
    """Score every ``<case>_pred`` under ``predictions`` against ``<case>_gt`` under ``references``.

    Files are ``.nii`` or ``.nii.gz``, suffix and extension matched in any case. Both files of a
    case are read by ``sdnet_infer.geometry`` and must lie on the same grid: a prediction whose
    shape, voxel size or affine differs from its reference's, compared in mm in the training
    orientation (``sdnet_infer.io.check_same_grid``: the same voxels stored flipped or in another
    axis order are the same grid), is refused (the message names both files), as is a case whose files
    cannot be read or whose reference is missing; refused cases are recorded in the summary's
    ``errors`` and the others are scored, in the training orientation with the voxel size in mm.
    A reference without any label is scored with a warning naming it (logged, and kept in the
    summary's ``warnings``); so is one whose label 1 lies inside the myocardium and label 3
    outside (``convention_warning``: M&Ms' values given without ``label_map``).

    Labels are scored in ACDC's values (1 RV, 2 MYO, 3 LV). The predictions' convention is
    ``prediction_labels`` ("acdc" or "mnms") if given, else the one their ``predictions.json``
    records (``prediction_convention``), else ACDC's; M&Ms-valued predictions (1 LV, 2 MYO,
    3 RV, as ``predict`` writes for a run trained on M&Ms) are converted before scoring.
    ``label_map`` ({stored: ACDC label}, see ``sdnet_infer.io.parse_label_map``) converts
    references in another label convention (M&Ms: 1 LV, 2 MYO, 3 RV). The summary's ``labels``
    records both: ``{"predictions", "predictions_from", "references"}``.

    ``slicing`` is ``read_geometry``'s slice-axis rule of every case: "auto", or a stored axis 0,
    1 or 2 of the references (``--slice-axis``, for files whose slice axis the header cannot
    tell); a prediction's is then its axis along the same direction in space
    (``sdnet_infer.io.axis_along``: a prediction stored in another axis order is still scored).
    The summary records it as ``slicing``.

    ``report(index, total, name, error)`` is called after each case. ``structures`` (e.g.
    ["MYO"]) scores a model that segments only those (``only_structures``; no clinical indices,
    which need the LV). Writes the tables and ``summary.json`` into ``out_dir`` (default: the
    predictions folder) and returns the summary.

    Raises:
        DataError: a folder that is not there, is a file, or is a symbolic link loop; no
            predictions; a predictions' convention that cannot be told or disagrees with
            ``prediction_labels`` (``prediction_convention``); or no case that could be scored.
        OSError: naming the path, when ``out_dir`` cannot be written.
    """
    predictions, references = Path(predictions), Path(references)
    for folder in (predictions, references):
        _check_folder(folder)
    convention, convention_from = prediction_convention(predictions, prediction_labels)
    out_dir = Path(out_dir) if out_dir else predictions
    new_folders = [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # deepest first
    out_dir = prepare_output_dir(out_dir)
    try:
        return _evaluate_into(predictions, references, out_dir, convention, convention_from, report, label_map,
                              structures, slicing)
    except BaseException:  # an error or Ctrl-C
        for folder in new_folders:  # nothing was scored: leave no empty folder behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def _evaluate_into(predictions, references, out_dir, convention, convention_from, report, label_map, structures,
                   slicing):
    (preds, shared_preds), (refs, shared_refs) = _files(predictions, PRED_SUFFIX), _files(references, REF_SUFFIX)
    if not preds:
        raise DataError(f"{predictions}: no predictions (*{PRED_SUFFIX}.nii.gz or *{PRED_SUFFIX}.nii, "
                        "in any case) found")
    pred_map = None if convention == "acdc" else parse_label_map(convention)
    labels = {"predictions": convention, "predictions_from": convention_from, "references": _label_map_name(label_map)}
    warnings = []

    def load(case, pred_path):
        if case in shared_preds:
            raise _not_unique(case, shared_preds[case])
        if case in shared_refs:
            raise _not_unique(case, shared_refs[case])
        if case not in refs:
            raise DataError(f"{pred_path}: no reference {case}{REF_SUFFIX}.nii.gz under {references}")
        reference = read_labels(refs[case], label_map=label_map, slicing=slicing)
        swapped = convention_warning(reference.data, refs[case])
        if swapped:  # scored as read, but the LV and RV are probably swapped
            warnings.append(swapped)
            log.warning(swapped)
        if not reference.data.any():  # scored (Dice 0 or undefined), but most likely the wrong file
            warnings.append(f"{refs[case]}: the reference has no labels (every voxel is background); "
                            f"{pred_path.name} is scored against it (Dice 0 for any structure it predicts, "
                            "undefined for the others)")
            log.warning(warnings[-1])
        # a given slice axis is the reference's; the prediction's is its axis along the same direction
        pred_slicing = slicing if slicing == "auto" else axis_along(pred_path, reference.geometry)
        pred = read_labels(pred_path, label_map=pred_map, slicing=pred_slicing)  # in ACDC's values
        check_same_grid(pred, reference.geometry, pred_path, refs[case])  # the same grid in mm, or refused
        patient, phase = _phase(case, refs[case])
        return {"pred": pred.data, "ref": reference.data, "zooms": reference.zooms, "patient": patient,
                "phase": phase}

    cases = [(case, lambda case=case, path=path: load(case, path)) for case, path in sorted(preds.items())]
    return score_cases(cases, out_dir, report=report, structures=structures, source=str(predictions),
                       extra_summary=lambda rows, slice_rows: {"labels": labels, "warnings": warnings,
                                                               "slicing": slicing})


def lv_volume_record(case, counts, spacing, zooms, reference):
    """The LV-volume head's volume of one frame against its reference, in ml.

    Args:
        case: the row's name.
        counts: the head's LV pixel counts of the frame's slices (arrays, concatenated).
        spacing: the model's in-plane mm per pixel (``config.data.spacing``).
        zooms: the frame's voxel size in mm (the slice thickness is ``zooms[2]``).
        reference: (H, W, S) ACDC labels of the frame, on the grid of ``zooms``.

    Returns:
        ``{"case", "predicted_ml", "reference_ml", "error_ml"}`` (predicted minus reference).
    """
    from sdnet_infer.labels import LV

    voxel_ml = float(np.prod(zooms[:3])) / 1000.0
    reference_ml = float(np.sum(reference == LV)) * voxel_ml
    predicted_ml = float(np.sum(np.concatenate(counts))) * spacing * spacing * float(zooms[2]) / 1000.0
    return {"case": case, "predicted_ml": round(predicted_ml, 3),
            "reference_ml": round(reference_ml, 3), "error_ml": round(predicted_ml - reference_ml, 3)}


def lv_volume_summary(records, out_dir):
    """``summary["lv_volume_head"]`` of ``lv_volume_record``s (per frame, and the mean and spread
    of the error and of its absolute value), also written to ``out_dir/lv_volume_head.csv``."""
    errors = [row["error_ml"] for row in records]
    _write_csv(Path(out_dir) / "lv_volume_head.csv", records, list(records[0]) if records else [])
    return {"frames": records, "error_ml": _stats(errors), "absolute_error_ml": _stats([abs(e) for e in errors])}


def run_probabilities(model, batch_size=16):
    """``(probabilities, counts)``: a function from preprocessed slices (N, H, W, 1) to foreground
    probabilities (N, H, W, C) for a loaded run's model, and, for a model with the LV-volume head,
    a list the head's LV pixel counts of each call are appended to (one anatomy pass gives both;
    clear it before each frame), else None."""
    from sdnet_tf.inference import probabilities_fn

    head = getattr(model, "lv_regressor", None)
    if head is None:
        return probabilities_fn(model, batch_size), None
    counts = []

    def probabilities(slices):
        slices, parts = np.asarray(slices, np.float32), []
        for i in range(0, len(slices), batch_size):
            anatomy = model.anatomy_encoder(slices[i:i + batch_size], training=False)
            parts.append(np.asarray(model.segmentor(anatomy, training=False)))
            counts.append(np.asarray(head(anatomy)).reshape(-1))
        return np.concatenate(parts) if parts else np.zeros(slices.shape[:3] + (model.num_classes,), np.float32)

    return probabilities, counts


def segmented_structures(model):
    """The structures a model segments when fewer than SDNet's three (the MICCAI 2018 precursor:
    ["MYO"]), else None."""
    partial = model.num_classes < len(SDNET_CHANNELS)
    return list(SDNET_CHANNELS[:model.num_classes]) if partial else None


def add_segmented(summary, structures):
    """The MICCAI 2018 precursor's own figures, ``summary["segmented"]``: the per-slice Dice first,
    as that paper reports it (the other structures' columns are blank)."""
    summary["segmented"] = {c: {"slice_dice": summary["paper_slice_dice"][f"SliceDice {c}"],
                                **{metric: summary["per_class"][c]["all"][metric] for metric in ("Dice", "HD95")}}
                            for c in structures}


def evaluate_run(run_dir, out_dir, data=None, split=None, subset="test", batch_size=16, report=None):
    """Predict the ED/ES frames of ``subset`` of a run's split, then ``evaluate_folder`` them.

    Predictions go to ``out_dir/predictions/patientNNN/`` and the tables into ``out_dir``.
    A run with the LV-volume head (``model.lv_volume_head``) also gets the head's LV volume of
    each frame against the reference's, in ml (``lv_volume_head.csv`` and
    ``summary["lv_volume_head"]``: per frame, and the mean and spread of the error and of its
    absolute value).
    ``split`` defaults to the run's own; ``subset`` is "test", "validation" or "training".

    A run trained on an M&Ms-layout cohort (``sdnet-tf train mnms``) is scored by
    ``evaluate_mnms_run`` instead (the same arguments; its test
    and held-out vendors' patients, and a per-vendor summary).
    """
    from sdnet_tf.inference import load_run, run_description, run_orientation, run_patients

    if Path(run_dir).is_dir() and run_description(run_dir).get("dataset") == "mnms":
        return evaluate_mnms_run(run_dir, out_dir, data=data, split=split, subset=subset, batch_size=batch_size,
                                 report=report)
    check_output_location(out_dir)  # an unwritable output fails before any work, a bad run before it is made
    model, config = load_run(run_dir)
    orientation = run_orientation(run_dir)
    folder, splits, split, patients = run_patients(run_dir, subset, data, split)
    out_dir = prepare_output_dir(out_dir)
    wanted = set(splits[split][subset])
    out_dir = Path(out_dir)
    pred_root = out_dir / "predictions"
    probabilities, counts = run_probabilities(model, batch_size)
    frames = [(p, index) for p in patients for index in (p.ed, p.es)]
    volumes = []
    start = time.perf_counter()
    for number, (patient, index) in enumerate(frames, start=1):
        image_path = patient.frame(index)
        volume = read_volume(image_path, orientation=orientation)
        if counts is not None:
            counts.clear()
        labels = predict_volume(volume.data, volume.zooms[:2], probabilities, model.input_size, config.data.spacing,
                                source=str(image_path))
        save_labels(labels, volume.image, pred_root / patient.name / output_name(image_path), volume.geometry)
        if counts is not None:
            reference = read_labels(patient.labels(index), volume.data.shape, like=volume.geometry,
                                    orientation=orientation)
            phase = "ED" if index == patient.ed else "ES"
            volumes.append(lv_volume_record(f"{patient.name}_{phase}", counts, config.data.spacing, reference.zooms,
                                            reference.data))
        if report is not None:
            report(number, len(frames), image_path.name, None)
    log.info("predicted %d frames in %.1f s", len(frames), time.perf_counter() - start)
    structures = segmented_structures(model)  # the precursor: the myocardium alone
    summary = evaluate_folder(pred_root, folder, out_dir, structures=structures,
                              prediction_labels="acdc")  # as written above
    summary["run"] = {"run_dir": str(run_dir), "data": str(folder), "split": split, "subset": subset,
                      "patients": sorted(wanted)}
    if structures is not None:
        add_segmented(summary, structures)
    if counts is not None:
        summary["lv_volume_head"] = lv_volume_summary(volumes, out_dir)
    write_json(out_dir / "summary.json", summary)
    return summary


# ------------------------------------------------------------------------------ M&Ms runs, per vendor
MNMS_CASE_COLUMNS = CASE_COLUMNS[:2] + ["Vendor"] + CASE_COLUMNS[2:]


def vendor_summary(rows, slice_rows, roles, vendors=None):
    """The per-vendor figures of scored M&Ms cases.

    Args:
        rows: ``score_case`` rows with ``Patient`` and ``Vendor``.
        slice_rows: their slice rows (``_scored`` kept).
        roles: ``{vendor: "labelled" | "unlabelled" | "test" | "unused"}`` (the run's ``data.json``).
        vendors: the vendors listed, in order (default: those of ``roles`` and of the rows).

    Returns:
        ``{vendor: {"role", "patients", "cases", "Dice": {LV, MYO, RV, mean}, "HD95": {LV, MYO,
        RV, mean}, "SliceDice", "validity_percent"}}``: the ``Dice`` (3-D) and ``HD95`` (mm)
        entries are ``{"mean", "std", "n"}`` over the vendor's cases ("mean": of each case's mean
        over the structures it has), ``SliceDice`` the paper's per-slice Dice (per patient,
        then over patients), ``validity_percent`` as the summary's; a vendor without a
        scored case has ``patients`` 0 and no figures.
    """
    vendors = list(vendors) if vendors is not None else sorted(set(roles) | {r["Vendor"] for r in rows})
    out = {}
    for vendor in vendors:
        mine = [r for r in rows if r["Vendor"] == vendor]
        entry = {"role": roles.get(vendor, "unknown"), "patients": len({r["Patient"] for r in mine}),
                 "cases": len(mine)}
        if mine:
            names = {r["Name"] for r in mine}
            summary = summarise(mine, [s for s in slice_rows if s["Name"] in names], [])
            per_class = summary["per_class"]
            hd95 = [np.nanmean(values) if np.isfinite(values).any() else np.nan
                    for values in (np.asarray([r[f"HD95 {c}"] for c in CLASSES], np.float64) for r in mine)]
            entry.update(
                Dice={**{c: per_class[c]["all"]["Dice"] for c in STRUCTURES}, "mean": summary["dice_mean_3d"]},
                HD95={**{c: per_class[c]["all"]["HD95"] for c in STRUCTURES}, "mean": _stats(hd95)},
                SliceDice=summary["paper_slice_dice"]["SliceDice"], validity_percent=summary["validity_percent"])
        out[vendor] = entry
    return out


def score_mnms_predictions(pred_root, patients, out_dir, roles, vendors=None, orientation="LPS", errors=(),
                           structures=None, report=None):
    """Score the written predictions of M&Ms patients against their references, per vendor.

    Args:
        pred_root: the folder of ``prediction_path(pred_root, code)`` files (4-D, in M&Ms'
            label values, on the image's grid; ED and ES are scored).
        patients: ``sdnet_tf.data.mnms.Patient``s with labels.
        out_dir: where the tables go (``score_cases``; ``cases.csv`` with a ``Vendor`` column, and
            ``vendors.csv``).
        roles: ``{vendor: role}`` (the run's ``data.json``'s ``vendor_roles``).
        vendors: the vendors of ``summary["per_vendor"]``, in order (default: ``roles``' and the
            patients').
        orientation: the training orientation both files are read into.
        errors: lines of patients refused before scoring.
        structures: the structures of a model that segments fewer than three, or None.
        report: ``report(index, total, name, error)`` after each case (two per patient), or None.

    Returns:
        The summary, with ``per_vendor`` (``vendor_summary``) and ``labels`` (both files in
        M&Ms' values); written to ``out_dir/summary.json``.

    Raises:
        DataError: no case could be scored (a prediction missing, or off its reference's grid,
            is that case's error).
    """
    from sdnet_tf.data.mnms import LABEL_MAP

    loaded = {}

    def load(patient, phase):
        if patient.code not in loaded:  # both phases of a patient from one reading of its two files
            loaded.clear()
            reference, times = read_reference(patient, orientation)
            path = prediction_path(pred_root, patient.code)
            pred = read_labels(path, label_map=LABEL_MAP, orientation=orientation, ndim=(4,))
            check_same_grid(pred, reference.geometry, path, patient.gt)  # the written file, on the reference's grid in mm
            loaded[patient.code] = (reference, pred, times)
        reference, pred, times = loaded[patient.code]
        index = times[phase]
        return {"pred": pred.data[..., index], "ref": reference.data[..., index], "zooms": reference.zooms[:3],
                "patient": patient.code, "phase": phase, "Vendor": patient.vendor}

    cases = [(f"{p.code}_{phase}", lambda p=p, phase=phase: load(p, phase))
             for p in sorted(patients, key=lambda p: p.code) for phase in PHASES]
    if vendors is None:
        vendors = sorted(set(roles) | {p.vendor for p in patients})

    def by_vendor(rows, slice_rows):
        return {"per_vendor": vendor_summary(rows, slice_rows, roles, vendors),
                "labels": {"predictions": "mnms", "predictions_from": "M&Ms run", "references": "mnms"}}

    summary = score_cases(cases, out_dir, report=report, structures=structures, columns=MNMS_CASE_COLUMNS,
                          errors=errors, source=str(pred_root), extra_summary=by_vendor)
    _write_csv(Path(out_dir) / "vendors.csv", vendor_rows(summary["per_vendor"]), VENDOR_COLUMNS)
    return summary


def evaluate_mnms_run(run_dir, out_dir, data=None, split=None, subset="test", batch_size=16, report=None):
    """Segment and score the test and held-out patients of an M&Ms run, per vendor.

    Each patient's ED and ES frames are segmented from its 4-D image and written in M&Ms' label
    values (``mnms_cases.predict_patient``, to ``out_dir/predictions/<code>/<code>_sa_pred.nii.gz``),
    then scored from the written files (``score_mnms_predictions``). A patient that cannot be
    read (not in the folder, no CSV row, labels off the image's grid, an ED or ES outside the
    file's time points, no labels at ED or ES) is recorded in ``summary["errors"]`` and the
    others are scored. The run's validation patients are not test cases.

    Args:
        run_dir: a run of ``sdnet-tf train mnms`` (any model ``inference.load_run`` takes).
        out_dir: where ``predictions/`` and the tables go.
        data: the cohort folder, when it moved since training (the run's ``data.json`` names it).
        split: the run's own split or None (``inference.run_mnms_patients``).
        subset: "test" (the run's test and held-out patients), "validation" or "training".
        batch_size: slices per network call.
        report: ``report(index, total, name, error)`` after each patient's prediction, or None.

    Returns:
        The summary (``score_cases``'s, plus ``per_vendor`` (``vendor_summary``), and
        ``run``: the run, cohort folder, CSV, split, subset, patients and label convention of
        the written predictions), also in ``out_dir/summary.json``.

    Raises:
        DataError: as ``inference.run_mnms_patients`` (no ``data.json``, the data folder gone,
            no CSV, ...), as ``inference.load_run``, or no patient could be scored (every
            error listed).
        OSError: naming the path, when ``out_dir`` cannot be written.
    """
    from sdnet_tf.inference import load_run, run_mnms_patients, run_orientation

    check_output_location(out_dir)  # an unwritable output fails before any work, a bad run before it is made
    model, config = load_run(run_dir)
    orientation = run_orientation(run_dir)
    folder, meta, codes, patients, located = run_mnms_patients(run_dir, subset, data, split,
                                                               getattr(config.data, "mnms_csv", ""))
    out_dir = prepare_output_dir(out_dir)
    roles = dict(meta.get("vendor_roles", {}))
    pred_root = out_dir / "predictions"
    probabilities, counts = run_probabilities(model, batch_size)
    errors, predicted, volumes = [], [], []
    start = time.perf_counter()
    for number, code in enumerate(codes, start=1):
        patient, error = patients.get(code), located.get(code)
        try:
            if error is not None:  # not found, no CSV row, ...
                raise DataError(error)
            frames, reference, times = predict_patient(patient, probabilities, model.input_size, config.data.spacing,
                                                       orientation, prediction_path(pred_root, code), counts)
            predicted.append(patient)
            if counts is not None:
                for phase, (_, frame_counts) in frames.items():
                    volumes.append(lv_volume_record(f"{code}_{phase}", frame_counts, config.data.spacing,
                                                    reference.zooms, reference.data[..., times[phase]]))
        except DataError as exc:
            error = str(exc)
            errors.append(error)
        if report is not None:
            report(number, len(codes), code, error)
    log.info("predicted the ED and ES frames of %d patients in %.1f s", len(predicted), time.perf_counter() - start)

    if not predicted:
        raise DataError(f"{run_dir}: no {subset} patient could be predicted:\n  " + "\n  ".join(errors))
    summary = score_mnms_predictions(pred_root, predicted, out_dir, roles, meta.get("vendors"), orientation,
                                     errors=errors, structures=segmented_structures(model))
    summary["run"] = {"run_dir": str(run_dir), "data": str(folder), "dataset": "mnms",
                      "csv": str(next(iter(patients.values())).csv) if patients else None,
                      "split": int(meta.get("split", 0)), "subset": subset, "patients": codes,
                      "labels": "mnms", "predictions": "predictions/<code>/<code>_sa_pred.nii.gz: 4-D, ED and ES "
                                                       "labelled (1 LV, 2 MYO, 3 RV), other time points 0"}
    if "structures" in summary:
        add_segmented(summary, summary["structures"])
    if counts is not None:
        summary["lv_volume_head"] = lv_volume_summary(volumes, out_dir)
    write_json(out_dir / "summary.json", summary)
    return summary
