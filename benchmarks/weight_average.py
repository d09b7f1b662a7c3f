"""Time the weight average's update (``train.weight_average``) eagerly and compiled.

    python benchmarks/weight_average.py --compare                    # both backends, each in its own process
    python benchmarks/weight_average.py --backend jax --config sdnet-acdc

The trainers fold every trainable weight of SDNet into its average after each iteration.
Eagerly that is five operations per weight (170 weights at the CPU protocol's size); the
trainers run it as one compiled call instead (``engines.average_update``: a ``tf.function``
with the assignments inside on TensorFlow, ``jax.jit`` of the pure update on JAX). This
prints, for one backend, the median milliseconds per update of both forms measured in the
same process, their ratio, and the largest difference between the two averages after the
same updates (0 on TensorFlow; on JAX XLA fuses multiply and add, so the last bit may
differ).
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(backend, config_name, updates):
    from sdnet_tf.runtime import select_backend

    select_backend(backend)  # before Keras is imported
    import numpy as np

    from sdnet_tf.apps.train import model_kwargs
    from sdnet_tf.config import load_config
    from sdnet_tf.models.sdnet import SDNet
    from sdnet_tf.training.averaging import WeightAverage
    from sdnet_tf.training.engines import average_update

    config = load_config(config_name, [f"train.backend={backend}"])
    model = SDNet(**model_kwargs(config), seed=1)
    model.build()
    weights = [v for net in model.networks().values() for v in net.trainable_variables]
    eager = WeightAverage(weights, 0.995)
    compiled = WeightAverage(weights, 0.995, compiled=functools.partial(average_update, backend))
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
    return {"backend": backend, "config": config_name, "weights": len(weights), "updates": updates,
            "eager_ms": round(eager_ms, 2), "compiled_ms": round(compiled_ms, 2),
            "speed_up": round(eager_ms / compiled_ms, 1), "max_abs_difference": difference,
            "cpu_count": os.cpu_count()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow")
    parser.add_argument("--config", default="sdnet-acdc-cpu", help="config name in configs/ or a YAML path")
    parser.add_argument("--updates", type=int, default=20, help="timed updates (median reported)")
    parser.add_argument("--compare", action="store_true", help="both backends, each in a fresh process")
    args = parser.parse_args()
    if not args.compare:
        print(json.dumps(measure(args.backend, args.config, args.updates)))
        return
    print("| backend | weights | eager ms / update | compiled ms / update | speed-up | max abs difference |")
    print("|---|---|---|---|---|---|")
    for backend in ("tensorflow", "jax"):
        out = subprocess.run([sys.executable, __file__, "--backend", backend, "--config", args.config,
                              "--updates", str(args.updates)], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {backend} | failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {backend} | {r['weights']} | {r['eager_ms']} | {r['compiled_ms']} | {r['speed_up']}x | "
              f"{r['max_abs_difference']:.1e} |")


if __name__ == "__main__":
    main()
