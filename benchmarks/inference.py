"""Inference speed and footprint: float32 and int8 onnxruntime against TensorFlow, one run.

    python benchmarks/inference.py [--config sdnet-acdc] [--repeats 10] [--run RUN_DIR]
                                   [--out benchmarks/results/inference.json]

One invocation builds the model at the config's size (random weights, seed 1; speed does not
depend on the values), exports it to ONNX (NCHW) at float32 (weights as ONNX external data) and
at int8 (``export.precision.quantise_int8``, calibrated on 32 preprocessed slices of the
built-in phantom cohort at the config's size), and then, each in a fresh process, one after
the other:

* per-slice latency at batch 1 (median of ``--repeats`` calls after warm-up) and throughput at
  batch 16 of segmentation (U-Net + binarisation + segmentor) for onnxruntime float32,
  onnxruntime int8 and TensorFlow (a ``tf.function`` of the same Keras model, with and
  without XLA);
* the peak resident memory (VmHWM) and import time of a process (medians of
  ``--footprint-repeats`` processes) that segments one 224 x 224 x 10 volume with the runtime
  (``sdnet_infer``, its defaults: batch 1 on the CPU) at each precision, then runs the networks the quality control adds (modality encoder and decoder;
  the anatomy comes from the segmentation pass), and with TensorFlow (``sdnet-tf predict``'s
  code, batch 16);
* the machine's float32 matrix-multiply rate and int8 dot-product rate, both measured with
  onnxruntime (``MatMul`` and ``MatMulInteger``, 2048 x 2048, the intra-op threads the
  variants use), and each variant's share of its rate: FLOP per slice (TensorFlow's profiler)
  / (time per slice x rate).

With ``--run``, a trained SDNet run is also exported at float32 and int8 through ``sdnet-tf
export``'s gate, and its Dice change on the run's validation patients (the sidecar's figures)
and its own speed at batch 1 are reported. Prints one JSON document with every figure and
the ratios to float32 onnxruntime and to TensorFlow.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report  # benchmarks/common.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
ORT_VARIANTS = [("onnxruntime fp32", "fp32"), ("onnxruntime int8", "int8")]  # name, export precision
LAYOUT = "NCHW"  # the export default; NHWC measured the same (RESULTS.md)
TF_VARIANTS = [("TensorFlow tf.function", False), ("TensorFlow tf.function + XLA", True)]


def _child(code, env=None):
    """Run ``code`` in a fresh interpreter; it prints one JSON line last."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _timing_code(setup, repeats):
    return f"""
import json, statistics, time, numpy as np
{setup}
rng = np.random.default_rng(0)
out = {{}}
for batch, reps in ((1, {repeats}), (16, max(3, {repeats} // 3))):
    x = rng.uniform(-1, 1, (batch, SIZE, SIZE, 1)).astype(np.float32)
    run(x); run(x)  # warm-up (graph tracing, XLA compilation, onnxruntime arena)
    times = []
    for _ in range(reps):
        t = time.perf_counter(); run(x); times.append(time.perf_counter() - t)
    out[str(batch)] = {{"median_s": statistics.median(times), "min_s": min(times), "runs": reps}}
print(json.dumps(out))
"""


def ort_setup(folder):
    return f"""
import onnxruntime as ort
SIZE = json.load(open({str(folder / 'sdnet-export.json')!r}))["preprocessing"]["size"]
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession({str(folder / 'segment.onnx')!r}, options, providers=["CPUExecutionProvider"])
def run(x):
    return session.run(["probabilities"], {{"image": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}})[0]
"""


def tf_setup(run_dir, xla):
    return f"""
import tensorflow as tf
from sdnet_tf.inference import load_run
model, config = load_run({str(run_dir)!r})
SIZE = model.input_size
fn = tf.function(lambda x: model.segment(x, training=False), jit_compile={xla}, reduce_retracing=True)
def run(x):
    return fn(tf.constant(x)).numpy()
"""


# VmHWM of this process image: getrusage's ru_maxrss survives exec and would report the parent's peak
PEAK = """
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

FOOTPRINT_RUNTIME = """
import json, sys, time
{PEAK}
t = time.perf_counter()
import numpy as np
from sdnet_infer import SDNetRuntime
imported = time.perf_counter() - t
runtime = SDNetRuntime(sys.argv[1])
volume = np.random.default_rng(0).uniform(0, 1000, (224, 224, 10)).astype(np.float32)
t = time.perf_counter()
labels = runtime.segment_volume(volume, (1.37, 1.37))
predict_s = time.perf_counter() - t
segment_peak = peak_rss_mb()
# the networks the quality control adds per slice: anatomy and modality encoders, decoder
from sdnet_infer.preprocess import preprocess_frame
slices = preprocess_frame(volume, (1.37, 1.37), size=runtime.size, target=runtime.spacing)[0][..., None]
t = time.perf_counter()
anatomy, mean, _ = runtime.decompose(slices)
runtime.decode(anatomy, mean)
print(json.dumps({"import_s": imported, "predict_s": predict_s, "peak_rss_mb": segment_peak,
                  "qc_networks_s": time.perf_counter() - t, "peak_rss_with_qc_networks_mb": peak_rss_mb(),
                  "provider": runtime.provider, "tensorflow_loaded": "tensorflow" in sys.modules}))
"""

FOOTPRINT_TF = """
import json, sys, time
{PEAK}
t = time.perf_counter()
import numpy as np
import keras, tensorflow
from sdnet_infer.predict import predict_volume
from sdnet_tf.inference import load_run, probabilities_fn
imported = time.perf_counter() - t
model, config = load_run(sys.argv[1])
volume = np.random.default_rng(0).uniform(0, 1000, (224, 224, 10)).astype(np.float32)
t = time.perf_counter()
labels = predict_volume(volume, (1.37, 1.37), probabilities_fn(model), size=model.input_size)
print(json.dumps({"import_s": imported, "predict_s": time.perf_counter() - t,
                  "peak_rss_mb": peak_rss_mb()}))
"""


def segment_flops(run_dir):
    """FLOP of one slice through U-Net + segmentor, from TensorFlow's graph profiler."""
    code = f"""
import json, tensorflow as tf
from tensorflow.python.profiler.model_analyzer import profile
from tensorflow.python.profiler.option_builder import ProfileOptionBuilder
from sdnet_tf.inference import load_run
model, _ = load_run({str(run_dir)!r})
fn = tf.function(lambda x: model.segment(x, training=False))
graph = fn.get_concrete_function(tf.TensorSpec([1, model.input_size, model.input_size, 1])).graph
info = profile(graph, options=ProfileOptionBuilder.float_operation())
print(json.dumps({{"flops": info.total_float_ops}}))
"""
    return _child(code)["flops"]


MATMUL_RATES = """
import json, statistics, time, numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
N = 2048
rng = np.random.default_rng(0)
def rate(dtype_a, dtype_b, op, out_type):
    a = helper.make_tensor_value_info("a", dtype_a, [N, N])
    b = numpy_helper.from_array(rng.integers(-100, 100, (N, N)).astype(helper.tensor_dtype_to_np_dtype(dtype_b)), "b")
    y = helper.make_tensor_value_info("y", out_type, [N, N])
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], "mm", [a], [y], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.integers(0, 100, (N, N)).astype(helper.tensor_dtype_to_np_dtype(dtype_a))
    session.run(None, {"a": x})
    times = []
    for _ in range(7):
        t = time.perf_counter(); session.run(None, {"a": x}); times.append(time.perf_counter() - t)
    return 2 * N ** 3 / statistics.median(times)
print(json.dumps({"fp32": rate(TensorProto.FLOAT, TensorProto.FLOAT, "MatMul", TensorProto.FLOAT),
                  "int8": rate(TensorProto.UINT8, TensorProto.INT8, "MatMulInteger", TensorProto.INT32)}))
"""


def _footprint(code, repeats):
    """Medians over ``repeats`` fresh processes of each number ``code`` prints, with every run's values."""
    import statistics

    runs = [_child(code) for _ in range(repeats)]
    out = {key: (statistics.median(r[key] for r in runs) if isinstance(value, (int, float))
                 and not isinstance(value, bool) else value) for key, value in runs[0].items()}
    out["runs"] = runs
    return out


def calibration_images(size, count=32):
    """``count`` preprocessed slices (N, size, size, 1) of the built-in phantom at 1.37 mm, the
    int8 calibration set of the random-weights model (its ranges, not its accuracy, matter here)."""
    import numpy as np

    from sdnet_infer.preprocess import TARGET_SPACING, preprocess_frame
    from sdnet_tf.data.phantom import write_patient

    folder = Path(tempfile.mkdtemp(prefix="sdnet-bench-phantom-"))
    slices = []
    for seed in range(4):
        patient = write_patient(folder, seed=seed, number=seed + 1)
        for frame in sorted(Path(patient).glob("*_frame??.nii.gz")):
            from sdnet_infer.io import read_volume

            volume = read_volume(frame)
            slices.append(preprocess_frame(volume.data, volume.zooms[:2], size=size, target=TARGET_SPACING)[0])
    slices = np.concatenate(slices)
    index = np.random.default_rng(0).choice(len(slices), min(count, len(slices)), replace=False)
    return slices[index][..., None]


def run_exports(run_dir, work):
    """Export a trained run at fp32 and int8 (gated) and return the gate's figures and speeds."""
    from export.onnx_export import export_run

    out = {}
    for precision in ("fp32", "int8"):
        folder = work / f"run-{precision}"
        meta = export_run(run_dir, folder, precision=precision, log=lambda line: print(line, file=sys.stderr))
        entry = {"batch1_ms_per_slice": 1000 * _child(_timing_code(ort_setup(folder), 10))["1"]["median_s"]}
        if precision != "fp32":
            entry["accuracy"] = meta["reduced_precision"]["accuracy"]
            entry["validation_patients"] = meta["reduced_precision"]["validation_patients"]
        out[precision] = entry
    out["int8"]["batch1_speedup_vs_fp32"] = out["fp32"]["batch1_ms_per_slice"] / out["int8"]["batch1_ms_per_slice"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sdnet-acdc")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--run", type=Path, default=None, help="a trained SDNet run: also report its int8 Dice change")
    parser.add_argument("--footprint-repeats", type=int, default=3,
                        help="processes per footprint measurement; the medians are reported")
    parser.add_argument("--no-xla", action="store_true", help="skip the TensorFlow + XLA variant")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from export.onnx_export import export_model
    from export.precision import quantise_int8
    from sdnet_tf.config import load_config, model_kwargs, save_config
    from sdnet_tf.models import SDNet

    work = Path(tempfile.mkdtemp(prefix="sdnet-bench-"))
    config = load_config(args.config)
    keras.utils.set_random_seed(1)
    model = SDNet(**model_kwargs(config), seed=1)
    model.build()
    run_dir = work / "run"
    run_dir.mkdir()
    model.save(run_dir / "model.keras")
    save_config(config, run_dir / "config.yaml")
    images = calibration_images(config.model.input_size)

    def int8(fp32_path, out_path, work_dir):
        quantise_int8(fp32_path, out_path, images, LAYOUT, work_dir=work_dir)
        return {"calibration": {"slices": len(images), "pool": "phantom slices (benchmark)"}}

    exports = {}
    for precision in ("fp32", "int8"):
        start = time.perf_counter()
        exports[precision] = work / f"export-{precision}"
        export_model(model, config, exports[precision], layout=LAYOUT, precision=precision,
                     reduce=int8 if precision == "int8" else None)
        print(f"exported {precision} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    del model

    flops = segment_flops(run_dir)
    rates = _child(MATMUL_RATES)
    sizes = {p: sum(f.stat().st_size for f in folder.glob("segment.onnx*")) / 1e6 for p, folder in exports.items()}
    results = {"config": args.config, "input_size": config.model.input_size, "cpu_count": os.cpu_count(),
               "segment_flop_per_slice": flops, "matmul_flop_per_s": rates["fp32"],
               "int8_matmul_op_per_s": rates["int8"], "segment_file_mb": sizes, "variants": {}}
    for name, precision in ORT_VARIANTS:
        print(f"timing {name}", file=sys.stderr)
        results["variants"][name] = _child(_timing_code(ort_setup(exports[precision]), args.repeats))
    for name, xla in TF_VARIANTS:
        if xla and args.no_xla:
            continue
        print(f"timing {name}", file=sys.stderr)
        results["variants"][name] = _child(_timing_code(tf_setup(run_dir, xla), args.repeats))
    tf_base = results["variants"]["TensorFlow tf.function"]
    ort_base = results["variants"]["onnxruntime fp32"]
    for name, entry in results["variants"].items():
        rate = rates["int8"] if name == "onnxruntime int8" else rates["fp32"]
        entry["batch1_ms_per_slice"] = 1000 * entry["1"]["median_s"]
        entry["batch16_slices_per_s"] = 16 / entry["16"]["median_s"]
        entry["batch1_speedup_vs_tf"] = tf_base["1"]["median_s"] / entry["1"]["median_s"]
        entry["batch1_speedup_vs_ort_fp32"] = ort_base["1"]["median_s"] / entry["1"]["median_s"]
        entry["batch16_speedup_vs_ort_fp32"] = ort_base["16"]["median_s"] / entry["16"]["median_s"]
        entry["batch1_share_of_matmul_rate"] = flops / (entry["1"]["median_s"] * rate)
        entry["batch16_share_of_matmul_rate"] = flops * 16 / (entry["16"]["median_s"] * rate)
    print("footprint", file=sys.stderr)
    runtime = FOOTPRINT_RUNTIME.replace("{PEAK}", PEAK)
    results["footprint"] = {
        **{f"runtime {p} (sdnet_infer + onnxruntime)": _footprint(runtime.replace("sys.argv[1]", repr(str(folder))),
                                                                   args.footprint_repeats)
           for p, folder in exports.items()},
        "TensorFlow (sdnet-tf predict)": _footprint(FOOTPRINT_TF.replace("{PEAK}", PEAK).replace(
            "sys.argv[1]", repr(str(run_dir))), args.footprint_repeats),
    }
    if args.run:
        print(f"exporting {args.run}", file=sys.stderr)
        results["trained_run"] = {"run": str(args.run), **run_exports(args.run, work)}
    report(results, args.out)


if __name__ == "__main__":
    main()
