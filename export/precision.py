"""Reduced-precision segmentation models: int8 by static quantisation, fp16 by conversion, and
the accuracy gate that decides whether an export may ship.

int8 follows onnxruntime's static quantisation recipe for CPUs with 8-bit dot-product
instructions (onnxruntime.quantization): ``quant_pre_process`` (shape inference and graph
clean-up), then ``quantize_static`` in QDQ format, weights QInt8 per output channel and
activations QUInt8 ("U8S8", the fastest combination on x86; S8S8 and U8U8 measured slower),
ranges from MinMax calibration on preprocessed training slices of the run. Which layers stay
in float is measured, not guessed: onnxruntime's QDQ debugger (``qdq_loss_debug``) ranks the
quantised tensors by their signal-to-quantisation-noise ratio on the calibration slices, and
the worst-ranked layers are left in float, 1, 2, 4, 8 ... at a time, until the accuracy gate
passes (often at none).

fp16 is onnxruntime's float16 converter (``onnxruntime.transformers.float16``) with float32
inputs and outputs kept, meant for the CUDA provider; the CPU provider runs it through casts,
which is how its correctness is checked on a machine without a GPU.

The gate segments the ED and ES frames of the run's validation patients with the float32 and
the reduced-precision model through the runtime's own preprocessing (``sdnet_infer.predict``)
and compares both with the reference labels by 3-D Dice (mean over LV, RV and MYO per frame,
then over frames).
"""

import time
from pathlib import Path

import numpy as np


CALIBRATION_SLICES = 32
CALIBRATION_SEED = 0
MAX_DICE_DROP = 0.01
EXCLUSION_STEPS = (0, 1, 2, 4, 8, 16)


class AccuracyGateError(RuntimeError):
    """A reduced-precision model lost more 3-D Dice than allowed; the message carries the figures."""


def session(path, threads=0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def probabilities_fn(path, layout):
    """Preprocessed slices (N, H, W[, 1]) -> foreground probabilities through ``segment.onnx`` at
    ``path``, one slice per call as the runtime runs on the CPU."""
    runner = session(path)

    def probabilities(images):
        images = np.asarray(images, np.float32)
        if images.ndim == 3:
            images = images[..., None]
        if layout == "NCHW":
            images = np.moveaxis(images, -1, 1)
        return np.concatenate([runner.run(["probabilities"], {"image": np.ascontiguousarray(images[i:i + 1])})[0]
                               for i in range(len(images))])

    return probabilities


def calibration_slices(arrays, count=CALIBRATION_SLICES, seed=CALIBRATION_SEED):
    """``count`` labelled training slices (N, H, W, 1) drawn without replacement with ``seed``,
    and a record of the selection for the sidecar."""
    pool = arrays.labelled_images
    count = min(int(count), len(pool))
    if count < 1:
        raise ValueError("calibration needs at least one slice")
    index = np.sort(np.random.default_rng(seed).choice(len(pool), count, replace=False))
    record = {"slices": count, "seed": seed, "pool": f"the run's {len(pool)} labelled training slices, preprocessed",
              "indices": [int(i) for i in index], "method": "MinMax"}
    return pool[index], record


def _reader(images, layout):
    """onnxruntime's calibration-data reader over preprocessed slices (N, H, W, 1), one per call."""
    from onnxruntime.quantization import CalibrationDataReader

    images = np.asarray(images, np.float32)
    images = np.ascontiguousarray(np.moveaxis(images, -1, 1) if layout == "NCHW" else images)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.position = 0

        def get_next(self):
            if self.position >= len(images):
                return None
            self.position += 1
            return {"image": images[self.position - 1:self.position]}

    return Reader()


def quantise_int8(fp32_path, out_path, images, layout, exclude=(), work_dir=None):
    """Write a QDQ int8 copy of ``fp32_path`` calibrated on ``images`` (N, H, W, 1), leaving the
    nodes named in ``exclude`` in float."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    work_dir = Path(work_dir or Path(out_path).parent)
    prepared = work_dir / "segment-prepared.onnx"
    if not prepared.is_file():
        quant_pre_process(str(fp32_path), str(prepared))
    quantize_static(str(prepared), str(out_path), _reader(images, layout), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude))
    return prepared


def layer_errors(prepared_path, qdq_path, images, layout, work_dir):
    """Quantised tensors ranked worst first: [(producing node, SQNR in dB)] of each tensor against
    its float value, measured on ``images`` by onnxruntime's QDQ debugger."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                         create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    work_dir = Path(work_dir)
    float_aug, qdq_aug = work_dir / "float-debug.onnx", work_dir / "qdq-debug.onnx"
    modify_model_output_intermediate_tensors(str(prepared_path), str(float_aug))
    modify_model_output_intermediate_tensors(str(qdq_path), str(qdq_aug))
    float_acts = collect_activations(str(float_aug), _reader(images, layout))
    qdq_acts = collect_activations(str(qdq_aug), _reader(images, layout))
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    producers = {out: node.name for node in onnx.load(str(prepared_path)).graph.node for out in node.output}
    ranked = sorted(((producers[name], float(err["qdq_err"])) for name, err in errors.items()
                     if name in producers and np.isfinite(err["qdq_err"])), key=lambda item: item[1])
    seen, unique = set(), []
    for node, sqnr in ranked:
        if node not in seen:
            seen.add(node)
            unique.append((node, sqnr))
    return unique


def convert_fp16(fp32_path, out_path):
    """Write an fp16 copy of ``fp32_path`` with float32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True), str(out_path))


def _mean_dice(a, b, structures=("LV", "RV", "MYO")):
    """Mean 3-D Dice of ``structures`` (LV, RV and MYO; a myocardium-only model's MYO) of two
    label volumes; a structure absent from both counts 1."""
    from sdnet_infer.labels import STRUCTURES
    from sdnet_tf.metrics.overlap import dice

    return float(np.mean([dice(a == STRUCTURES[name], b == STRUCTURES[name], empty=1.0) for name in structures]))


class ValidationFrames:
    """The ED and ES frames of a run's validation patients, read once, with their references and
    the float32 model's labels; ``score(probabilities)`` measures another model on them."""

    def __init__(self, run_dir, fp32_path, layout, size, spacing, data=None, orientation="LPS", log=None,
                 structures=("LV", "RV", "MYO")):
        from sdnet_infer.io import read_volume
        from sdnet_infer.predict import predict_volume
        from sdnet_tf.inference import run_patients

        _, _, _, patients = run_patients(run_dir, "validation", data)
        self.size, self.spacing, self.layout = size, spacing, layout
        self.frames, self.references = [], []
        for patient in patients:
            for index in (patient.ed, patient.es):
                self.frames.append(read_volume(patient.frame(index), orientation=orientation))
                self.references.append(np.rint(read_volume(patient.labels(index), kind="labels",
                                                           orientation=orientation).data).astype(np.uint8))
        self.patients = sorted(p.number for p in patients)
        self.structures = tuple(structures)  # the ones the model segments: the Dice is their mean
        self._predict = predict_volume
        start = time.perf_counter()
        self.fp32_labels = self.labels(probabilities_fn(fp32_path, layout))
        self.fp32_dice = [_mean_dice(a, r, self.structures) for a, r in zip(self.fp32_labels, self.references)]
        if log:
            log(f"accuracy gate: {len(self.frames)} validation frames of {len(patients)} patients, float32 3-D Dice "
                f"{np.mean(self.fp32_dice):.4f} ({time.perf_counter() - start:.1f} s)")

    def labels(self, probabilities):
        return [self._predict(v.data, v.zooms[:2], probabilities, self.size, self.spacing) for v in self.frames]

    def score(self, probabilities):
        """{dice_vs_reference, dice_vs_fp32, fp32_dice_vs_reference, dice_drop} means over frames."""
        labels = self.labels(probabilities)
        vs_ref = [_mean_dice(a, r, self.structures) for a, r in zip(labels, self.references)]
        vs_fp32 = [_mean_dice(a, b, self.structures) for a, b in zip(labels, self.fp32_labels)]
        fp32 = float(np.mean(self.fp32_dice))
        return {"frames": len(labels), "fp32_dice_vs_reference": round(fp32, 5),
                "dice_vs_reference": round(float(np.mean(vs_ref)), 5),
                "dice_vs_fp32": round(float(np.mean(vs_fp32)), 5),
                "dice_drop": round(fp32 - float(np.mean(vs_ref)), 5)}


def _gate_message(precision, scores, max_drop, extra=""):
    return (f"{precision} export refused: mean 3-D Dice on {scores['frames']} validation frames "
            f"{scores['dice_vs_reference']:.4f} against float32's {scores['fp32_dice_vs_reference']:.4f} "
            f"(drop {scores['dice_drop']:.4f}, allowed {max_drop}; agreement with float32's labels "
            f"{scores['dice_vs_fp32']:.4f}){extra}")


def reduce_precision(precision, fp32_path, out_path, frames, arrays, layout, work_dir, max_drop=MAX_DICE_DROP,
                     calibration=CALIBRATION_SLICES, log=None):
    """Write the ``precision`` ("int8" or "fp16") segmentation model to ``out_path`` if it passes
    the gate on ``frames`` (a ``ValidationFrames``); return the sidecar's record of how it was made.

    Raises:
        AccuracyGateError: the mean 3-D Dice against the references dropped by more than
            ``max_drop`` below float32's (for int8: with every exclusion step tried).
    """
    say = log or (lambda text: None)
    if precision == "fp16":
        convert_fp16(fp32_path, out_path)
        scores = frames.score(probabilities_fn(out_path, layout))
        say(f"fp16: 3-D Dice {scores['dice_vs_reference']:.4f} (drop {scores['dice_drop']:+.4f})")
        if scores["dice_drop"] > max_drop:
            raise AccuracyGateError(_gate_message("fp16", scores, max_drop))
        return {"method": "onnxruntime.transformers.float16, float32 inputs and outputs kept",
                "accuracy": scores, "max_dice_drop": max_drop}
    if precision != "int8":
        raise ValueError(f"precision must be one of int8, fp16 here, got {precision!r}")
    images, selection = calibration_slices(arrays, calibration)
    prepared = quantise_int8(fp32_path, out_path, images, layout, work_dir=work_dir)
    ranking, search, scores = None, [], None
    for count in EXCLUSION_STEPS:
        if count:
            if ranking is None:
                ranking = layer_errors(prepared, out_path, images, layout, work_dir)
            if count > len(ranking):
                break
            quantise_int8(fp32_path, out_path, images, layout, exclude=[n for n, _ in ranking[:count]],
                          work_dir=work_dir)
        scores = frames.score(probabilities_fn(out_path, layout))
        search.append({"float_layers": count, **scores})
        say(f"int8 with {count} layer(s) left in float: 3-D Dice {scores['dice_vs_reference']:.4f} "
            f"(drop {scores['dice_drop']:+.4f}, agreement with float32 {scores['dice_vs_fp32']:.4f})")
        if scores["dice_drop"] <= max_drop:
            excluded = [] if not count else [{"node": n, "sqnr_db": round(s, 2)} for n, s in ranking[:count]]
            return {"method": "onnxruntime.quantization.quantize_static, QDQ, per-channel, activations QUInt8, "
                              "weights QInt8, after quant_pre_process",
                    "calibration": selection, "float_layers": excluded, "search": search,
                    "accuracy": scores, "max_dice_drop": max_drop}
    raise AccuracyGateError(_gate_message("int8", scores, max_drop,
                                          f"; leaving up to {search[-1]['float_layers']} of the worst layers in "
                                          "float did not recover it"))
