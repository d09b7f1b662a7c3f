"""Inference speed and footprint: onnxruntime against TensorFlow on the same SDNet weights.

    python benchmarks/inference.py [--config sdnet-acdc] [--repeats 10] [--out benchmarks/results/inference.json]

One invocation builds the model at the config's size (random weights, seed 1; speed does not
depend on the values), exports it to ONNX with NHWC and NCHW image inputs, and then, each in a
fresh process, one after the other:

* per-slice latency at batch 1 (median of ``--repeats`` calls after warm-up) and throughput at
  batch 16 of segmentation (U-Net + binarisation + segmentor), for onnxruntime with each input
  layout, graph optimisation level and thread setting tried, and for TensorFlow (a
  ``tf.function`` of the same Keras model, with and without XLA);
* the import time and peak resident memory of a process that predicts one 224 x 224 x 10
  volume with the runtime (``sdnet_infer`` with its defaults: NCHW export, batch 1 on the
  CPU) and with TensorFlow (``sdnet-tf predict``'s code, batch 16).

Prints one JSON document with every figure, the ratios to TensorFlow, and latency as a
multiple of the FLOP floor (measured FLOP / the machine's matrix-multiply rate, both printed).
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
ORT_VARIANTS = [
    # name, export layout, graph optimisation level, intra-op threads (0: onnxruntime's default)
    ("onnxruntime NHWC, all optimisations", "NHWC", "all", 0),
    ("onnxruntime NCHW, all optimisations", "NCHW", "all", 0),
    ("onnxruntime NHWC, basic optimisations", "NHWC", "basic", 0),
    ("onnxruntime NHWC, all optimisations, 1 thread", "NHWC", "all", 1),
]
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


def ort_setup(folder, layout, level, threads):
    return f"""
import onnxruntime as ort
SIZE = json.load(open({str(folder / 'sdnet-export.json')!r}))["preprocessing"]["size"]
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.{'ORT_ENABLE_ALL' if level == 'all' else 'ORT_ENABLE_BASIC'}
options.intra_op_num_threads = {threads}
session = ort.InferenceSession({str(folder / 'segment.onnx')!r}, options, providers=["CPUExecutionProvider"])
def run(x):
    if {layout == 'NCHW'}:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return session.run(["probabilities"], {{"image": x}})[0]
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
print(json.dumps({"import_s": imported, "predict_s": time.perf_counter() - t,
                  "peak_rss_mb": peak_rss_mb(),
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


def matmul_rate():
    """Sustained float32 matrix-multiply rate of this machine (numpy, 2048^2), in FLOP/s."""
    code = """
import json, time, numpy as np
a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32); b = a.copy()
a @ b
times = []
for _ in range(7):
    t = time.perf_counter(); a @ b; times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"rate": 2 * 2048 ** 3 / times[len(times) // 2]}))
"""
    return _child(code)["rate"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sdnet-acdc")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from export.onnx_export import export_model
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
    exports = {}
    for layout in ("NHWC", "NCHW"):
        start = time.perf_counter()
        exports[layout] = work / f"export-{layout}"
        export_model(model, config, exports[layout], layout=layout)
        print(f"exported {layout} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    del model

    flops = segment_flops(run_dir)
    rate = matmul_rate()
    floor = flops / rate
    results = {"config": args.config, "input_size": config.model.input_size, "cpu_count": os.cpu_count(),
               "segment_flop_per_slice": flops, "matmul_flop_per_s": rate, "flop_floor_s_per_slice": floor,
               "variants": {}}
    for name, layout, level, threads in ORT_VARIANTS:
        print(f"timing {name}", file=sys.stderr)
        results["variants"][name] = _child(_timing_code(ort_setup(exports[layout], layout, level, threads),
                                                        args.repeats))
    for name, xla in TF_VARIANTS:
        print(f"timing {name}", file=sys.stderr)
        results["variants"][name] = _child(_timing_code(tf_setup(run_dir, xla), args.repeats))
    baseline = results["variants"]["TensorFlow tf.function"]
    for entry in results["variants"].values():
        entry["batch1_ms_per_slice"] = 1000 * entry["1"]["median_s"]
        entry["batch16_slices_per_s"] = 16 / entry["16"]["median_s"]
        entry["batch1_speedup_vs_tf"] = baseline["1"]["median_s"] / entry["1"]["median_s"]
        entry["batch16_speedup_vs_tf"] = baseline["16"]["median_s"] / entry["16"]["median_s"]
        entry["batch1_x_flop_floor"] = entry["1"]["median_s"] / floor
        entry["batch16_x_flop_floor"] = entry["16"]["median_s"] / 16 / floor
    print("footprint", file=sys.stderr)
    results["footprint"] = {
        "runtime (sdnet_infer + onnxruntime)": _child(FOOTPRINT_RUNTIME.replace("{PEAK}", PEAK).replace("sys.argv[1]",
                                                                               repr(str(exports["NCHW"])))),
        "TensorFlow (sdnet-tf predict)": _child(FOOTPRINT_TF.replace("{PEAK}", PEAK).replace("sys.argv[1]", repr(str(run_dir)))),
    }
    report(results, args.out)


if __name__ == "__main__":
    main()
