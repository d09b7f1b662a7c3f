"""Time one full SDNet training iteration (the five steps of the original schedule).

    python benchmarks/train_step.py --config sdnet-acdc [--xla] [--iterations 3]
    python benchmarks/train_step.py --compare --config sdnet-acdc

A single run prints JSON with the median seconds per iteration and the images per second
(labelled + unlabelled images consumed). ``--compare`` runs each variant (plain tf.function,
XLA, and each with glibc's default allocator, with the package's in-process allocator tuning,
and with the equivalent environment variables) in its own fresh process, one after the
other in the same invocation, and prints every result with its ratio to the plain default.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = [
    # name, --xla, allocator mode
    ("tf.function", False, "default"),
    ("tf.function + allocator", False, "tuned"),
    ("XLA", True, "default"),
    ("XLA + allocator", True, "tuned"),
    ("XLA + allocator env vars", True, "env"),
]
ENV_ALLOCATOR = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def run_once(args):
    if args.allocator == "tuned":
        from sdnet_tf.runtime import tune_allocator

        applied = tune_allocator()
    else:
        applied = False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from sdnet_tf.config import load_config, model_kwargs
    from sdnet_tf.data.synthetic import synthetic_arrays
    from sdnet_tf.models import SDNet
    from sdnet_tf.training.trainer import Trainer

    overrides = [f"train.jit_compile={'true' if args.xla else 'false'}", "train.image_summaries=0"]
    config = load_config(args.config, overrides)
    keras.utils.set_random_seed(1)
    size = config.model.input_size
    arrays = synthetic_arrays(32, 8, size, 0.5, seed=0)
    model = SDNet(**model_kwargs(config), seed=1)
    model.build()
    import tempfile

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, arrays, config, run_dir, progress=False)
        start = time.perf_counter()
        for _ in range(args.warmup):
            trainer.train_iteration()
        warmup = time.perf_counter() - start
        times = []
        for _ in range(args.iterations):
            start = time.perf_counter()
            trainer.train_iteration()
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    images = 2 * config.train.batch_size  # labelled + unlabelled images per iteration
    return {
        "config": args.config, "input_size": size, "batch": f"{config.train.batch_size}+{config.train.batch_size}",
        "xla": args.xla, "allocator": args.allocator, "allocator_tuning_applied": applied,
        "iterations": args.iterations, "median_s_per_iteration": round(median, 4),
        "images_per_s": round(images / median, 3), "all_s": [round(t, 4) for t in times],
        "warmup_s": round(warmup, 2), "cpu_count": os.cpu_count(),
    }


def compare(args):
    results = []
    for name, xla, allocator in VARIANTS:
        env = dict(os.environ)
        env.update(ENV_ALLOCATOR if allocator == "env" else {})
        cmd = [sys.executable, __file__, "--config", args.config, "--iterations", str(args.iterations),
               "--warmup", str(args.warmup), "--allocator", "default" if allocator == "env" else allocator]
        if xla:
            cmd.append("--xla")
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["variant"] = name
        results.append(result)
        print(f"{name:<28}{result['median_s_per_iteration']:>9.3f} s/it", file=sys.stderr, flush=True)
    base = results[0]["median_s_per_iteration"]
    for result in results:
        result["speedup_vs_plain"] = round(base / result["median_s_per_iteration"], 3)
    print(json.dumps({"config": args.config, "variants": results}, indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sdnet-acdc", help="config name in configs/ or a YAML path")
    parser.add_argument("--xla", action="store_true", help="compile the steps with XLA")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (tracing, compiling)")
    parser.add_argument("--allocator", choices=["tuned", "default"], default="tuned",
                        help="apply the package's allocator tuning (the CLI's default) or not")
    parser.add_argument("--compare", action="store_true", help="run every variant side by side")
    args = parser.parse_args()
    if args.compare:
        compare(args)
    else:
        print(json.dumps(run_once(args)))


if __name__ == "__main__":
    main()
