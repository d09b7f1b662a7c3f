"""Export a trained run to ONNX: four models and a sidecar with hashes and preprocessing.

Each network is traced as a ``tf.function`` with a dynamic batch dimension and converted by
tf2onnx. The export always goes through TensorFlow, whatever backend trained the weights.
"""

import platform
import shutil
import tempfile
import time
from pathlib import Path

from sdnet_infer.geometry import TRAINING_ORIENTATION
from sdnet_infer.labels import BACKGROUND, LABEL_CONVENTIONS, LABEL_NAMES, SDNET_CHANNEL_LABELS, SDNET_CHANNELS
from sdnet_infer.model import FORMAT, SIDECAR, sha256  # the runtime reads what this writes

DEFAULT_OPSET = 17
# The opsets --opset accepts: from 13 (below, tf2onnx cannot convert SDNet's ops and writes invalid
# models) to the newest tf2onnx 1.17 knows (tf2onnx.constants.OPSET_TO_IR_VERSION; onnxruntime runs more).
OPSETS = (13, 18)
# image inputs channels-first, as onnxruntime's CPU kernels lay them out; NHWC inputs measured the
# same within noise at 224 x 224 (benchmarks/RESULTS.md); anatomy maps stay NHWC
DEFAULT_LAYOUT = "NCHW"
CHANNELS = list(SDNET_CHANNELS)  # the foreground probability channels, ACDC labels 2, 3, 1


def _functions(model, layout):
    """The four tf.functions to convert, with their input signatures."""
    import tensorflow as tf

    size, ch, c, nz = model.input_size, model.input_channels, model.anatomy_channels, model.nz
    nchw = layout == "NCHW"
    image_shape = [None, ch, size, size] if nchw else [None, size, size, ch]
    image = tf.TensorSpec(image_shape, tf.float32, name="image")
    anatomy = tf.TensorSpec([None, size, size, c], tf.float32, name="anatomy")
    z = tf.TensorSpec([None, nz], tf.float32, name="z")

    def nhwc(x):
        return tf.transpose(x, [0, 2, 3, 1]) if nchw else x

    # the first num_classes of SDNet's channels (the MICCAI 2018 precursor: MYO alone), then background
    label_values = [*SDNET_CHANNEL_LABELS[:model.num_classes], BACKGROUND]

    def outputs(probs, anatomy):
        background = 1.0 - tf.reduce_sum(probs, axis=-1, keepdims=True)
        index = tf.argmax(tf.concat([probs, background], axis=-1), axis=-1)
        # ACDC labels of [channels..., background]; the constant is made inside the function,
        # a captured tensor would become a graph input
        values = tf.constant(label_values, tf.float32)
        labels = tf.reduce_sum(tf.one_hot(index, len(label_values)) * values, axis=-1)
        return {"probabilities": tf.identity(probs), "labels": tf.cast(labels, tf.uint8),
                "anatomy": tf.identity(anatomy)}

    if hasattr(model, "decomposer"):  # the MICCAI 2018 precursor: the mask is the segmentation
        @tf.function(input_signature=[image])
        def segment(x):
            mask, _ = model.decomposer(nhwc(x), training=False)
            return outputs(mask, model.reconstructor.binarise(mask))

        @tf.function(input_signature=[image])
        def anatomy_fn(x):
            return {"anatomy": tf.identity(model.reconstructor.binarise(model.decomposer(nhwc(x), training=False)[0]))}

        @tf.function(input_signature=[image])
        def modality(x):
            # z is deterministic: its value, and no log-variance
            return {"mean": tf.identity(model.decomposer(nhwc(x), training=False)[1])}

        @tf.function(input_signature=[anatomy, z])
        def decoder(a, zz):
            return {"image": tf.identity(model.reconstructor([a, zz], training=False))}

        return {"segment": segment, "anatomy": anatomy_fn, "modality": modality, "decoder": decoder}

    @tf.function(input_signature=[image])
    def segment(x):
        # model.segment, with its binary anatomy factor as an output too: the quality control
        # decodes it, so the runtime need not run the U-Net twice
        anatomy = model.anatomy_encoder(nhwc(x), training=False)
        return outputs(model.segmentor(anatomy, training=False), anatomy)

    @tf.function(input_signature=[image])
    def anatomy_fn(x):
        return {"anatomy": tf.identity(model.anatomy_encoder(nhwc(x), training=False))}

    @tf.function(input_signature=[anatomy, image])
    def modality(a, x):
        _, mean, logvar = model.modality_encoder([a, nhwc(x)], training=False, sample=False)
        return {"mean": tf.identity(mean), "logvar": tf.identity(logvar)}

    @tf.function(input_signature=[anatomy, z])
    def decoder(a, zz):
        return {"image": tf.identity(model.decoder([a, zz], training=False))}

    return {"segment": segment, "anatomy": anatomy_fn, "modality": modality, "decoder": decoder}


def _io(proto):
    """Names, shapes (None for dynamic) and dtypes of an ONNX graph's inputs and outputs."""
    import onnx

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            out.append({"name": v.name, "shape": shape,
                        "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out

    constants = {t.name for t in proto.graph.initializer}
    return describe([v for v in proto.graph.input if v.name not in constants]), describe(proto.graph.output)


def versions():
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for name in ("sdnet-tf", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return found


def written_opset(proto):
    """The default (ONNX) domain's opset a model was written with."""
    return max(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _save(proto, out_dir, name, external):
    """Write ``proto`` as ``out_dir/name.onnx``, its weights in ``name.onnx.data`` when ``external``
    (ONNX external data: the runtime then holds one copy of the weights instead of two, README
    "Deployment"); each file under a temporary name first, the weights before the graph. Returns
    the sidecar entry's file fields."""
    import os

    import onnx

    from sdnet_tf.atomic import atomic_path

    path = out_dir / f"{name}.onnx"
    data = out_dir / f"{name}.onnx.data"
    if not external:
        with atomic_path(path) as tmp:
            onnx.save_model(proto, str(tmp))
        data.unlink(missing_ok=True)  # a float32 export's weights left from an earlier export here
        return {"file": path.name, "sha256": sha256(path)}
    # a folder of its own per export, so two exports into one folder at once do not clash
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.staging.", dir=out_dir))
    try:
        onnx.save_model(proto, str(staging / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        os.replace(staging / data.name, data)
        os.replace(staging / path.name, path)
        os.chmod(data, path.stat().st_mode & 0o777)  # onnx writes the weights owner-only; match the graph
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"file": path.name, "sha256": sha256(path), "data": {"file": data.name, "sha256": sha256(data)}}


def sidecar_labels(num_classes, convention="acdc"):
    """The sidecar's label entries, for the model's ``num_classes`` foreground channels and background.

    ``labels`` ({value as a string: structure name}) describes the values of ``segment.onnx``'s
    ``labels`` output, ACDC's whatever the training data; ``label_convention``
    (``sdnet_infer.labels.LABEL_CONVENTIONS``: "acdc", or "mnms" for a model trained on M&Ms) is
    the values ``sdnet-infer`` writes to files, and ``written_labels`` the same table in those
    values (for "mnms": 1 LV, 2 MYO, 3 RV).

    Raises:
        DataError: an unknown convention.
    """
    from sdnet_infer.io import check_label_convention

    values = (BACKGROUND, *SDNET_CHANNEL_LABELS[:num_classes])
    written = {BACKGROUND: BACKGROUND, **LABEL_CONVENTIONS[check_label_convention(convention)]}
    return {"labels": {str(v): LABEL_NAMES[v] for v in sorted(values)}, "label_convention": convention,
            "written_labels": {str(written[v]): LABEL_NAMES[v] for v in sorted(values, key=written.get)}}


def export_model(model, config, out_dir, opset=DEFAULT_OPSET, layout=DEFAULT_LAYOUT, source=None, log=None,
                 orientation=TRAINING_ORIENTATION, precision="fp32", reduce=None, data=None, label_convention="acdc"):
    """Write ``segment/anatomy/modality/decoder.onnx`` and ``sdnet-export.json`` into ``out_dir``.

    ``orientation`` (an axis code, ACDC's "LPS" by default) is the orientation the model was
    trained in; the sidecar records it and the runtime brings every input into it.
    ``label_convention`` ("acdc", or "mnms" for a model trained on M&Ms) is the label values
    the runtime writes to files (``sidecar_labels``).

    Float32 models keep their weights in ONNX external data (``<name>.onnx.data``, hashed in
    the sidecar like the graph). With ``precision`` "int8" or "fp16", ``reduce(fp32_path,
    out_path, work_dir)`` turns the float32 segmentation model into the reduced one and returns
    the sidecar's record of how (``export.precision.reduce_precision`` through ``export_run``,
    which also gates it on the run's validation patients); the decomposition and decoder models
    stay float32. The sidecar's ``qc`` entry (``export.qc_calibration``) holds the quality-control
    thresholds measured with the written models on ``source``'s validation patients (``data``
    replaces its recorded cohort folder).

    Files are written under temporary names and renamed when complete; the sidecar comes
    last, so a folder with a sidecar is always a complete export.

    Raises:
        ValueError: an unknown layout, opset or precision, or a reduced precision without ``reduce``.
        export.precision.AccuracyGateError: from ``reduce``; nothing new is left in ``out_dir``.
    """
    import shutil
    import tempfile

    import onnx
    import tf2onnx

    from sdnet_infer.io import prepare_output_dir
    from sdnet_infer.model import PRECISIONS
    from sdnet_tf.atomic import write_json

    if layout not in ("NHWC", "NCHW"):
        raise ValueError(f"layout must be NHWC or NCHW, got {layout!r}")
    if not OPSETS[0] <= int(opset) <= OPSETS[1]:
        raise ValueError(f"opset must be {OPSETS[0]}..{OPSETS[1]} (what tf2onnx converts SDNet to), got {opset}")
    if precision not in PRECISIONS or (precision != "fp32" and reduce is None):
        raise ValueError(f"precision must be one of {PRECISIONS} (int8 and fp16 with a reduce function), "
                         f"got {precision!r}")
    out_dir = prepare_output_dir(out_dir)
    models, written, protos = {}, set(), {}
    for name, fn in _functions(model, layout).items():
        start = time.perf_counter()
        protos[name], _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=opset)
        written.add(written_opset(protos[name]))
        if log:
            log(f"{name}: converted ({time.perf_counter() - start:.1f} s)")
    reduced = None
    if precision != "fp32":
        work = Path(tempfile.mkdtemp(prefix=".precision-", dir=out_dir))
        try:
            fp32_path = work / "segment-fp32.onnx"
            onnx.save_model(protos["segment"], str(fp32_path))
            reduced_path = work / "segment-reduced.onnx"
            reduced = reduce(fp32_path, reduced_path, work)
            protos["segment"] = onnx.load(str(reduced_path))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    for name, proto in protos.items():
        inputs, outputs = _io(proto)
        external = not (name == "segment" and reduced is not None)
        models[name] = {**_save(proto, out_dir, name, external),
                        "precision": precision if name == "segment" else "fp32",
                        "inputs": inputs, "outputs": outputs}
        if log:
            size = sum((out_dir / f).stat().st_size for f in (models[name]["file"], models[name].get("data", {})
                                                                .get("file")) if f)
            log(f"{name}: {out_dir / models[name]['file']} ({size / 1e6:.1f} MB, {models[name]['precision']})")
    meta = {
        "format": FORMAT,
        "version": 1,
        "source": str(source) if source else None,
        "layout": layout,
        "precision": precision,  # of segment.onnx; the runtime refuses one it does not know
        "opset": max(written),  # as written (tf2onnx may raise it), not as asked
        "models": models,
        "preprocessing": {
            "spacing_mm": float(config.data.spacing),
            "size": int(model.input_size),
            "resample": "in-plane only, linear for images, nearest for labels (scipy.ndimage.zoom, grid mode)",
            "clip_percentiles": [5, 95],
            "intensity_range": [-1.0, 1.0],
            "crop": "centre crop or edge pad",
            "orientation": orientation,
            "geometry": "voxel size, slice axis and orientation by sdnet_infer.geometry; labels written back on "
                        "the input's grid with its affine and header",
        },
        **sidecar_labels(model.num_classes, label_convention),
        "probability_channels": CHANNELS[:model.num_classes],
        "model": {"input_size": model.input_size, "anatomy_channels": model.anatomy_channels, "nz": model.nz,
                  "num_classes": model.num_classes},
        "versions": versions(),
    }
    if reduced is not None:
        meta["reduced_precision"] = reduced
    from export.qc_calibration import calibrate_export  # quality-control thresholds, measured with these models

    meta["qc"] = calibrate_export(source, out_dir, meta, log=log, data=data)
    write_json(out_dir / SIDECAR, meta)
    return meta


def export_run(run_dir, out_dir, opset=DEFAULT_OPSET, layout=DEFAULT_LAYOUT, log=None, precision="fp32",
               max_dice_drop=None, calibration_slices=None, data=None):
    """Export the kept weights of a run directory.

    With ``precision`` "int8" or "fp16" the segmentation model is reduced and gated
    (``export.precision``): calibrated on ``calibration_slices`` of the run's labelled training
    slices (int8) and refused unless its mean 3-D Dice on the ED/ES frames of the run's
    validation patients stays within ``max_dice_drop`` of the float32 model's. ``data``
    replaces the cohort folder recorded in the run (a cohort moved since training).

    Raises:
        DataError: not an SDNet run, or (reduced precisions) a run without validation patients
            or whose data folder is gone.
        export.precision.AccuracyGateError: the reduced model failed the gate; the message has
            the figures.
    """
    from sdnet_infer.io import DataError
    from sdnet_tf.inference import load_run, run_kind, run_label_convention, run_orientation

    kind = run_kind(run_dir) if (Path(run_dir) / "config.yaml").is_file() else None
    if kind == "tl":
        raise DataError(f"{run_dir}: a T-L network run; export takes SDNet runs (the runtime serves SDNet's "
                        "segmentation, decomposition and decoder); evaluate and predict take this one")
    if kind in ("nvae", "acnn"):
        raise DataError(f"{run_dir}: a shape-prior run ({kind}); export takes SDNet runs (the runtime serves "
                        "SDNet's segmentation, decomposition and decoder); shape-eval takes this one")
    model, config = load_run(run_dir)
    if not (hasattr(model, "anatomy_encoder") or hasattr(model, "decomposer")):
        raise DataError(f"{run_dir}: a U-Net baseline run; export takes SDNet runs (the runtime serves SDNet's "
                        "segmentation, decomposition and decoder)")
    orientation = run_orientation(run_dir)
    reduce = None
    if precision != "fp32":
        reduce = _gated_reduction(run_dir, model, config, precision, layout, orientation, data, log,
                                  max_dice_drop, calibration_slices)
    return export_model(model, config, out_dir, opset=opset, layout=layout, source=run_dir, log=log,
                        orientation=orientation, precision=precision, reduce=reduce, data=data,
                        label_convention=run_label_convention(run_dir))


def _gated_reduction(run_dir, model, config, precision, layout, orientation, data, log, max_dice_drop,
                     calibration_slices):
    """The ``reduce`` function of ``export_model`` for a run: its validation frames and (int8) its
    calibration slices, read before any conversion so a missing cohort fails fast."""
    from export import precision as reduced
    from sdnet_tf.data.arrays import DataError
    from sdnet_tf.data.sources import load_arrays
    from sdnet_tf.inference import run_cohort

    try:
        folder, _, _ = run_cohort(run_dir, data)
    except DataError as error:
        raise DataError(f"{error}; an {precision} export is checked on the run's validation patients") from None
    if config.data.dataset == "acdc" and config.data.path != "phantom":
        config.data.path = str(folder)
    arrays = load_arrays(config)[0] if precision == "int8" else None
    max_drop = reduced.MAX_DICE_DROP if max_dice_drop is None else float(max_dice_drop)
    count = reduced.CALIBRATION_SLICES if calibration_slices is None else int(calibration_slices)

    def reduce(fp32_path, out_path, work_dir):
        frames = reduced.ValidationFrames(run_dir, fp32_path, layout, model.input_size, float(config.data.spacing),
                                          data=data, orientation=orientation, log=log,
                                          structures=SDNET_CHANNELS[:model.num_classes])
        return {"validation_patients": frames.patients,
                **reduced.reduce_precision(precision, fp32_path, out_path, frames, arrays, layout, work_dir,
                                           max_drop=max_drop, calibration=count, log=log)}

    return reduce
