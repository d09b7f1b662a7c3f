"""NIfTI in, labels out on the original grid: one volume, or a batch of files.

Shared by ``sdnet-tf predict`` (a Keras model) and ``sdnet-infer`` (ONNX models): each passes
a function from preprocessed slices to foreground probabilities, so both write identical
label volumes for identical probabilities.
"""

import os
import time
from pathlib import Path

import numpy as np

from sdnet_infer.geometry import TRAINING_ORIENTATION
from sdnet_infer.io import (DataError, check_label_convention, labels_in_convention, missing_reason, prepare_output_dir,
                            read_volume, save_labels, write_json)
from sdnet_infer.preprocess import SIZE, TARGET_SPACING, from_one_hot, preprocess_frame, restore_labels
from sdnet_infer.qc import QC_FILE, header_review

SUFFIX = "_pred"
SKIPPED_IN_FOLDERS = ("_gt", "_4d")  # label files and cines are not predicted when a folder is given


def _segment_frame(frame, spacing, probabilities, size, target, source):
    """(labels (H, W, S) uint8, the preprocessed slices (S, size, size) the model saw)."""
    slices, _, geometry = preprocess_frame(frame, spacing, size=size, target=target, source=source)
    probs = np.asarray(probabilities(slices[..., None]))
    if probs.shape[:3] != slices.shape:
        raise DataError(f"{source}: the model returned shape {probs.shape} for {slices.shape[0]} slices")
    return restore_labels(from_one_hot(probs), geometry), slices


def predict_frame(frame, spacing, probabilities, size=SIZE, target=TARGET_SPACING, source="frame"):
    """One (H, W, S) frame in the training orientation, in-plane ``spacing`` (dy, dx) in mm ->
    (H, W, S) uint8 ACDC labels. Raises ``DataError`` naming ``source``."""
    return _segment_frame(frame, spacing, probabilities, size, target, source)[0]


def predict_volume(volume, spacing, probabilities, size=SIZE, target=TARGET_SPACING, source="volume",
                   keep_slices=False):
    """A (H, W, S) frame or a (H, W, S, T) cine (frame by frame) in the training orientation, as
    ``sdnet_infer.io.read_volume`` gives it, in-plane ``spacing`` (dy, dx) in mm -> uint8 labels of
    its shape. ``save_labels(labels, volume.image, path, volume.geometry)`` puts them back on the
    file's grid. With ``keep_slices``, ``(labels, slices)``: also the preprocessed slices the
    model saw, (S, size, size) for a frame and (T, S, size, size) for a cine (what
    ``sdnet_infer.qc.QualityControl.assess`` takes). Raises ``DataError`` naming ``source``."""
    if volume.ndim == 3:
        labels, slices = _segment_frame(volume, spacing, probabilities, size, target, source)
    elif volume.ndim == 4:
        frames = [_segment_frame(volume[..., t], spacing, probabilities, size, target, f"{source} frame {t}")
                  for t in range(volume.shape[-1])]
        labels, slices = np.stack([f[0] for f in frames], axis=-1), np.stack([f[1] for f in frames])
    else:
        raise DataError(f"{source}: expected a 3-D frame or a 4-D cine, got shape {volume.shape}")
    return (labels, slices) if keep_slices else labels


def stem(path):
    """A NIfTI file's name without ``.nii.gz`` or ``.nii`` (in any case: ``.NII.GZ`` too)."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def output_name(path):
    return stem(path) + SUFFIX + ".nii.gz"


def walk_once(folder):
    """``(root, sorted file names)`` of every folder under ``folder``, following symlinked folders
    (a cohort made of links to patient folders is read as ``train`` reads it); a folder reached
    twice (a link loop, or two links to one folder) is walked once."""
    seen = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        yield Path(root), sorted(files)


def nifti_files(folder):
    """The ``.nii`` and ``.nii.gz`` files (in any case) under ``folder``, sorted, walked by ``walk_once``."""
    return sorted(root / f for root, files in walk_once(folder) for f in files
                  if f.lower().endswith((".nii.gz", ".nii")))


def find_inputs(source):
    """(input path, output path relative to the output folder) for a file or a folder of NIfTI files.

    In a folder (walked by ``nifti_files``, symlinked folders followed), ``*_gt`` label files
    and ``*_4d`` cines are skipped (name a cine to predict it) and the sub-folder structure is
    kept. Two inputs may map to one output (``x.nii`` and
    ``x.nii.gz`` both to ``x_pred.nii.gz``); ``output_collisions`` finds them.
    """
    source = Path(source)
    if source.is_file():
        return [(source, Path(output_name(source)))]
    if not source.is_dir():
        reason = missing_reason(source)
        raise DataError(f"{source}: {'no such file or folder' if reason == 'no such file' else reason}")
    found = []
    for path in nifti_files(source):
        name = stem(path)
        if name.lower().endswith(tuple(x.lower() for x in (*SKIPPED_IN_FOLDERS, SUFFIX))):  # _GT, _4D too
            continue
        found.append((path, path.parent.relative_to(source) / output_name(path)))
    if not found:
        raise DataError(f"{source}: no NIfTI images (*.nii, *.nii.gz, other than *_gt and *_4d) found")
    return found


def output_collisions(pairs):
    """{input path: one line naming it and the other inputs with the same output} for the
    inputs of ``find_inputs`` whose outputs would overwrite each other."""
    by_output = {}
    for path, relative in pairs:
        by_output.setdefault(relative, []).append(path)
    refused = {}
    for relative, paths in by_output.items():
        if len(paths) > 1:
            for path in paths:
                others = " and ".join(str(p) for p in paths if p != path)
                refused[path] = (f"{path}: its output {relative} would also be written for {others}; "
                                 "none of them is predicted (rename one)")
    return refused


def _resolved(path):
    """``path`` with links resolved; itself when it cannot be (a symbolic-link loop): reading it
    then fails for that file alone."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path


def predict_files(source, out_dir, probabilities, size=SIZE, target=TARGET_SPACING, report=None,
                  orientation=TRAINING_ORIENTATION, quality=None, model=None, labels="acdc", started=None,
                  slicing="auto"):
    """Predict every image under ``source`` into ``out_dir``; a failing input is recorded and skipped.

    Each image is read by ``sdnet_infer.geometry`` (voxel size in mm, slice axis, brought
    into the model's training ``orientation``), segmented, and its labels are put back on the
    input's own grid and written with its affine and header. ``started(total)`` is called once
    the inputs are found, before the first is read (a progress bar can show from the start), and
    ``report(index, total, record)`` after each file. Inputs whose outputs would have one name (``x.nii`` and
    ``x.nii.gz``) are all refused, each with an error naming the others. Returns the records
    (one dict per input, with ``error`` set for the inputs that failed; ``shape``, ``spacing``
    (mm), ``orientation`` and ``slice_axis`` of the stored axes, in the file's own order) and
    writes them to ``out_dir/predictions.json``. ``slicing`` is ``read_geometry``'s slice-axis
    rule for every input: "auto", or a stored axis 0, 1 or 2 (``--slice-axis``), recorded in
    each record (``slicing``).

    With ``quality`` (a ``sdnet_infer.qc.QualityControl``) every predicted volume is assessed:
    its record gets ``qc`` ("ok" or "review") and ``qc_reasons`` (the checks that failed), and
    ``out_dir/qc.json`` holds the per-volume report with a row per slice (``QualityControl.report``).
    ``model`` (a dict, e.g. the export folder and its precision) is recorded in each record and
    in ``qc.json``, so every output can be traced to the model that made it.

    ``labels`` is the label convention of the written files (``sdnet_infer.labels.LABEL_CONVENTIONS``):
    "acdc" (1 RV, 2 MYO, 3 LV) or "mnms" (1 LV, 2 MYO, 3 RV, for a model trained on M&Ms); each
    record's ``labels`` names it and its ``voxels`` counts are by written value. The quality
    control sees ACDC values either way.

    Raises:
        DataError: ``source`` holds no image, or ``labels`` is no known convention.
        OSError: naming the path, when ``out_dir`` or a file in it cannot be written (a full
            disk included); the batch stops, as every later write would fail too.
    """
    out_dir = Path(out_dir)
    check_label_convention(labels)
    pairs = find_inputs(source)
    prepare_output_dir(out_dir)
    inputs = {_resolved(p) for p, _ in pairs}
    if quality is None:
        (out_dir / QC_FILE).unlink(missing_ok=True)  # an earlier run's report would not describe these outputs
    collisions = output_collisions(pairs)
    if started is not None:
        started(len(pairs))
    records = []
    for index, (path, relative) in enumerate(pairs, start=1):
        target_path = out_dir / relative
        record = {"input": str(path), "output": str(target_path), "error": None, "labels": labels,
                  "slicing": slicing}
        if model is not None:
            record["model"] = model
        start = time.perf_counter()
        try:
            if path in collisions:
                raise DataError(collisions[path])
            if _resolved(target_path) in inputs:
                raise DataError(f"{path}: the output {target_path} would overwrite an input; choose another folder")
            volume = read_volume(path, ndim=(3, 4), orientation=orientation, slicing=slicing)
            acdc, slices = predict_volume(volume.data, volume.zooms[:2], probabilities, size, target,
                                          source=str(path), keep_slices=True)
            written = labels_in_convention(acdc, labels)
            # shape, voxel size, orientation and slice axis all of the stored axes, as the header has them
            record.update(shape=list(volume.image.shape), spacing=[round(z, 6) for z in volume.geometry.spacing],
                          orientation="".join(volume.geometry.axcodes or ()) or None,
                          slice_axis=volume.geometry.slice_axis,
                          voxels={str(v): int((written == v).sum()) for v in (1, 2, 3)},
                          warnings=list(volume.geometry.warnings))
        except DataError as error:
            record["error"] = str(error)
        except Exception as error:  # a model or library failure on one file must not stop the batch
            record["error"] = f"{path}: {type(error).__name__}: {error}"
        if record["error"] is not None:
            record["output"] = None  # nothing was written
        if record["error"] is None:
            save_labels(written, volume.image, target_path, volume.geometry)  # OSError: stop, see above
            if quality is not None:
                quality.add(record, header_review(quality.assess_or_flag(slices, acdc, volume.zooms[:2],
                                                                         source=str(path), image=volume.data),
                                                  volume.geometry))
        record["seconds"] = round(time.perf_counter() - start, 3)
        records.append(record)
        if report is not None:
            report(index, len(pairs), record)
    write_json(out_dir / "predictions.json", records)
    report_path = qc_report(out_dir, quality)
    if report_path is not None:
        write_json(report_path, {**quality.report(), **({"model": model} if model is not None else {})})
    elif quality is not None:
        (out_dir / QC_FILE).unlink(missing_ok=True)  # nothing assessed: an earlier run's report would mislead
    return records


def qc_report(out_dir, quality):
    """``out_dir/qc.json`` when ``predict_files`` writes one (``quality`` given and it assessed
    a volume), else None: what the commands name in their summaries."""
    return Path(out_dir) / QC_FILE if quality is not None and quality.volumes else None


def summarise(records):
    """One line: how many written, how many failed, how many the quality control puts up for review."""
    failed = [r for r in records if r["error"]]
    review = sum(r.get("qc") == "review" for r in records)
    return (f"{len(records) - len(failed)} of {len(records)} volumes written"
            + (f", {len(failed)} failed" if failed else "") + (f", {review} for review" if review else ""))
