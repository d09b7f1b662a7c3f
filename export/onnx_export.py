"""Export a trained run to ONNX: four models and a sidecar with hashes and preprocessing.

Each network is traced as a ``tf.function`` with a dynamic batch dimension and converted by
tf2onnx. The export always goes through TensorFlow, whatever backend trained the weights.
"""

import platform
import time

from sdnet_infer.geometry import TRAINING_ORIENTATION
from sdnet_infer.labels import BACKGROUND, LABEL_NAMES, SDNET_CHANNEL_LABELS, SDNET_CHANNELS
from sdnet_infer.model import FORMAT, SIDECAR, sha256  # the runtime reads what this writes

DEFAULT_OPSET = 17
# The opsets --opset accepts: from 13 (below, tf2onnx cannot convert SDNet's ops and writes invalid
# models) to the newest tf2onnx 1.17 knows (tf2onnx.constants.OPSET_TO_IR_VERSION; onnxruntime runs more).
OPSETS = (13, 18)
# image inputs channels-first, as onnxruntime's CPU kernels lay them out; NHWC inputs measured the
# same within noise at 224 x 224 (benchmarks/RESULTS.md); anatomy maps stay NHWC
DEFAULT_LAYOUT = "NCHW"
LABEL_MAP = {str(value): name for value, name in LABEL_NAMES.items()}
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

    @tf.function(input_signature=[image])
    def segment(x):
        probs = model.segment(nhwc(x), training=False)
        background = 1.0 - tf.reduce_sum(probs, axis=-1, keepdims=True)
        index = tf.argmax(tf.concat([probs, background], axis=-1), axis=-1)
        # ACDC labels of [MYO, LV, RV, background]; the constant is made inside the function,
        # a captured tensor would become a graph input
        label_values = tf.constant([*SDNET_CHANNEL_LABELS, BACKGROUND], tf.float32)
        labels = tf.reduce_sum(tf.one_hot(index, 4) * label_values, axis=-1)
        return {"probabilities": tf.identity(probs), "labels": tf.cast(labels, tf.uint8)}

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


def export_model(model, config, out_dir, opset=DEFAULT_OPSET, layout=DEFAULT_LAYOUT, source=None, log=None,
                 orientation=TRAINING_ORIENTATION):
    """Write ``segment/anatomy/modality/decoder.onnx`` and ``sdnet-export.json`` into ``out_dir``.

    ``orientation`` (an axis code, ACDC's "LPS" by default) is the orientation the model was
    trained in; the sidecar records it and the runtime brings every input into it.

    Files are written under temporary names and renamed when complete; the sidecar comes
    last, so a folder with a sidecar is always a complete export.
    """
    import tf2onnx

    from sdnet_infer.io import prepare_output_dir
    from sdnet_tf.atomic import atomic_path, write_json

    if layout not in ("NHWC", "NCHW"):
        raise ValueError(f"layout must be NHWC or NCHW, got {layout!r}")
    if not OPSETS[0] <= int(opset) <= OPSETS[1]:
        raise ValueError(f"opset must be {OPSETS[0]}..{OPSETS[1]} (what tf2onnx converts SDNet to), got {opset}")
    out_dir = prepare_output_dir(out_dir)
    models, written = {}, set()
    for name, fn in _functions(model, layout).items():
        start = time.perf_counter()
        path = out_dir / f"{name}.onnx"
        with atomic_path(path) as tmp:
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=opset,
                                                     output_path=str(tmp))
        inputs, outputs = _io(proto)
        written.add(written_opset(proto))
        models[name] = {"file": path.name, "sha256": sha256(path), "inputs": inputs, "outputs": outputs}
        if log:
            log(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s)")
    meta = {
        "format": FORMAT,
        "version": 1,
        "source": str(source) if source else None,
        "layout": layout,
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
        "labels": LABEL_MAP,
        "probability_channels": CHANNELS,
        "model": {"input_size": model.input_size, "anatomy_channels": model.anatomy_channels, "nz": model.nz,
                  "num_classes": model.num_classes},
        "versions": versions(),
    }
    write_json(out_dir / SIDECAR, meta)
    return meta


def export_run(run_dir, out_dir, opset=DEFAULT_OPSET, layout=DEFAULT_LAYOUT, log=None):
    """Export the kept weights of a run directory."""
    from sdnet_tf.inference import load_run, run_orientation

    model, config = load_run(run_dir)
    if not hasattr(model, "anatomy_encoder"):
        from sdnet_infer.io import DataError

        raise DataError(f"{run_dir}: a U-Net baseline run; export takes SDNet runs (the runtime serves SDNet's "
                        "segmentation, decomposition and decoder)")
    return export_model(model, config, out_dir, opset=opset, layout=layout, source=run_dir, log=log,
                        orientation=run_orientation(run_dir))
