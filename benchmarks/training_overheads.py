"""Time the two pieces of SDNet training outside its updates, eagerly and compiled: the weight
average's update (``train.weight_average``) and the BatchNorm recalibration before each
validation (``train.batchnorm_recalibration``).

    python benchmarks/training_overheads.py --compare                    # both backends, each in its own process
    python benchmarks/training_overheads.py --backend jax --config sdnet-acdc

The trainers fold every trainable weight of SDNet into its average after each iteration.
Eagerly that is five operations per weight (170 weights at the CPU protocol's size); the
trainers run it as one compiled call instead (``engines.stateful_compiler``: a ``tf.function``
with the assignments inside on TensorFlow, ``jax.jit`` under a ``keras.StatelessScope`` on JAX). This
prints, for one backend, the median milliseconds per update of both forms measured in the
same process, their ratio, and the largest difference between the two averages after the
same updates (0 on TensorFlow; on JAX XLA fuses multiply and add, so the last bit may
differ).

Before each validation the trainers recompute the BatchNorm statistics of the anatomy
encoder, the modality encoder and the segmentor from ``train.batchnorm_recalibration``
forward passes in training mode (50 batches of 16 at the CPU protocol). The forward pass ran
eagerly; the trainers now compile it once (``engines.stateful_compiler``). This prints the
mean seconds per batch of both, measured in the same process on the same batches, their
ratio, and the largest difference between the statistics they leave.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(backend, config_name, updates, batches):
    from sdnet_tf.runtime import select_backend

    select_backend(backend)  # before Keras is imported
    import numpy as np

    from sdnet_tf.apps.train import model_kwargs
    from sdnet_tf.config import load_config
    from sdnet_tf.models.sdnet import SDNet
    from sdnet_tf.training.averaging import WeightAverage
    from sdnet_tf.training.engines import stateful_compiler

    config = load_config(config_name, [f"train.backend={backend}"])
    model = SDNet(**model_kwargs(config), seed=1)
    model.build()
    weights = [v for net in model.networks().values() for v in net.trainable_variables]
    eager = WeightAverage(weights, 0.995)
    compiled = WeightAverage(weights, 0.995, compiler=stateful_compiler(backend))
    rng = np.random.default_rng(0)
    times = {"eager": [], "compiled": []}
    for i in range(3 + updates):  # 3 untimed updates first (tracing, compiling)
        for w in weights:  # the weights move between updates, as in training
            w.assign(np.asarray(w.value) + rng.normal(0, 1e-3, w.shape).astype("float32"))
        for name, average in (("eager", eager), ("compiled", compiled)):
            start = time.perf_counter()
            average.update()
            np.asarray(average.averages[-1].value)  # wait for the device
            if i >= 3:
                times[name].append(time.perf_counter() - start)
    difference = max(float(np.max(np.abs(np.asarray(a.value) - np.asarray(b.value))))
                     for a, b in zip(eager.averages, compiled.averages))
    eager_ms, compiled_ms = (1000 * statistics.median(times[k]) for k in ("eager", "compiled"))
    result = {"backend": backend, "config": config_name, "weights": len(weights), "updates": updates,
              "eager_ms": round(eager_ms, 2), "compiled_ms": round(compiled_ms, 2),
              "speed_up": round(eager_ms / compiled_ms, 1), "max_abs_difference": difference,
              "cpu_count": os.cpu_count()}
    result["recalibration"] = measure_recalibration(model, backend, config.train.validation_batch_size, batches)
    return result


def measure_recalibration(model, backend, batch_size, count):
    """Seconds per batch of the recalibration's forward pass, eager and compiled (the first
    compiled call, which traces, is timed apart), and the largest difference of the results."""
    import numpy as np

    from sdnet_tf.training.batchnorm import batchnorm_layers, recalibrate
    from sdnet_tf.training.engines import stateful_compiler

    networks = (model.anatomy_encoder, model.modality_encoder, model.segmentor)
    layers = batchnorm_layers(*networks)
    moving = [v for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
    start = [np.array(v.value) for v in moving]

    def forward(x):  # the trainer's (Trainer._batchnorm_forward)
        anatomy, _, _, _ = model.decompose(x, training=True, sample=False)
        model.segmentor(anatomy, training=True)

    size = model.input_size
    images = np.random.default_rng(1).normal(size=(count, batch_size, size, size, 1)).astype("float32")
    compiled = stateful_compiler(backend)(forward, [v for net in networks for v in net.variables], moving)
    results, seconds = {}, {}
    for name, fn, flag in (("eager", forward, False), ("compiled", compiled, True)):
        for variable, value in zip(moving, start):
            variable.assign(value)
        begin = time.perf_counter()
        if flag:  # the first call traces and compiles: timed on its own
            recalibrate(fn, layers, images[:1], compiled=True)
            seconds["compile_s"] = round(time.perf_counter() - begin, 2)
            for variable, value in zip(moving, start):
                variable.assign(value)
            begin = time.perf_counter()
        recalibrate(fn, layers, images, compiled=flag)
        np.asarray(moving[-1].value)
        seconds[name] = (time.perf_counter() - begin) / count
        results[name] = [np.array(v.value) for v in moving]
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(results["eager"], results["compiled"]))
    return {"batches": count, "batch_size": batch_size, "eager_s_per_batch": round(seconds["eager"], 4),
            "compiled_s_per_batch": round(seconds["compiled"], 4), "first_compiled_call_s": seconds["compile_s"],
            "speed_up": round(seconds["eager"] / seconds["compiled"], 2), "max_abs_difference": difference}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow")
    parser.add_argument("--config", default="sdnet-acdc-cpu", help="config name in configs/ or a YAML path")
    parser.add_argument("--updates", type=int, default=20, help="timed updates (median reported)")
    parser.add_argument("--batches", type=int, default=10, help="recalibration batches timed (mean reported)")
    parser.add_argument("--compare", action="store_true", help="both backends, each in a fresh process")
    args = parser.parse_args()
    if not args.compare:
        print(json.dumps(measure(args.backend, args.config, args.updates, args.batches)))
        return
    rows = {}
    for backend in ("tensorflow", "jax"):
        out = subprocess.run([sys.executable, __file__, "--backend", backend, "--config", args.config,
                              "--updates", str(args.updates), "--batches", str(args.batches)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            rows[backend] = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else str(out.returncode)
            continue
        rows[backend] = json.loads(out.stdout.strip().splitlines()[-1])
    print("| backend | weights | eager ms / update | compiled ms / update | speed-up | max abs difference |")
    print("|---|---|---|---|---|---|")
    for backend, r in rows.items():
        print(f"| {backend} | failed: {r} |" if isinstance(r, str) else
              f"| {backend} | {r['weights']} | {r['eager_ms']} | {r['compiled_ms']} | {r['speed_up']}x | "
              f"{r['max_abs_difference']:.1e} |")
    print()
    print("| backend | batches of | eager s / batch | compiled s / batch | speed-up | first compiled call s | "
          "max abs difference |")
    print("|---|---|---|---|---|---|---|")
    for backend, r in rows.items():
        if isinstance(r, str):
            continue
        c = r["recalibration"]
        print(f"| {backend} | {c['batch_size']} | {c['eager_s_per_batch']} | {c['compiled_s_per_batch']} | "
              f"{c['speed_up']}x | {c['first_compiled_call_s']} | {c['max_abs_difference']:.1e} |")


if __name__ == "__main__":
    main()
