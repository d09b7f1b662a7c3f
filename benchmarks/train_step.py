"""Time one full SDNet training iteration (the five steps of the original schedule).

    python benchmarks/train_step.py --config sdnet-acdc [--xla | --no-xla] [--iterations 3]
    python benchmarks/train_step.py --compare --config sdnet-acdc
    python benchmarks/train_step.py --compare --config sdnet-acdc-cpu --set model.input_size=64
    python benchmarks/train_step.py --profile --config sdnet-acdc-cpu    # where one iteration's time goes

``--set SECTION.KEY=VALUE`` (repeatable) overrides the config as ``sdnet-tf train --set`` does;
the PyTorch variants take the overridden sizes and filters too.

A single run prints JSON with the median seconds per iteration, the images per second
(labelled + unlabelled images consumed), TensorFlow's count of the iteration's floating-point
operations (``common.iteration_flops``: the convolutions and matrix products of the five updates
and the fake masks) and the fraction of the machine's measured float32 matrix-product rate
(``--matmul-size``) that the iteration reaches; ``--compare`` prints them for every variant,
PyTorch's rated on the same operation count. ``--compare`` runs each variant (plain tf.function
and XLA, with glibc's default allocator or the package's in-process allocator tuning, plain
``tf.function`` with Keras' per-weight Adam instead of the fused kernel, with TensorFlow's
fused BatchNorm kernel forced or Keras' BatchNorm ops instead, with Grappler's graph
rewriting forced on or off, and the same iteration in PyTorch eager mode from
``torch_reference.py`` when torch is installed, with and without the allocator environment variables) in its own fresh process, one after
the other in the same invocation, and prints every result with its speed-up over the first
(plain tf.function unless ``--variants`` names others, e.g. ``--variants plain,keras-adam,torch``). ``--profile`` times each part of the iteration instead: the five
steps, the fake masks, the weight average and the host's share (``common.profile_iterations``).
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path

VARIANTS = {
    # key: name, framework, XLA, allocator mode, extra overrides
    "plain": ("tf.function", "tf", False, "default", []),
    "keras-adam": ("tf.function, Keras' per-weight Adam", "tf", False, "default", ["train.fused_optimizer=false"]),
    "fused-bn": ("tf.function, fused BatchNorm", "tf", False, "default", ["train.fused_batchnorm=true"]),
    "keras-bn": ("tf.function, Keras' BatchNorm ops", "tf", False, "default", ["train.fused_batchnorm=false"]),
    "grappler-on": ("tf.function, Grappler on", "tf", False, "default", ["train.graph_rewriting=true"]),
    "grappler-off": ("tf.function, Grappler off", "tf", False, "default", ["train.graph_rewriting=false"]),
    "allocator": ("tf.function + allocator", "tf", False, "tuned", []),
    "xla": ("XLA", "tf", True, "default", []),
    "xla-allocator": ("XLA + allocator", "tf", True, "tuned", []),
    "torch": ("PyTorch eager", "torch", False, "default", []),
    "torch-env": ("PyTorch eager + allocator env vars", "torch", False, "env", []),
}
ENV_ALLOCATOR = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def run_once(args):
    from sdnet_tf.runtime import tune_allocator

    # tuned: from the start; default: never; auto: as sdnet-tf does (the engine tunes it with XLA)
    os.environ["SDNET_TF_ALLOCATOR"] = args.allocator
    applied = tune_allocator(when_auto=False)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from sdnet_tf.config import load_config
    from sdnet_tf.training.trainer import Trainer

    from common import iteration_flops, profile_iterations, seeded_sdnet, time_iterations

    overrides = ["train.image_summaries=0", *args.overrides]
    if args.xla is not None:
        overrides.append(f"train.jit_compile={'true' if args.xla else 'false'}")
    config = load_config(args.config, overrides)
    size = config.model.input_size
    model, arrays = seeded_sdnet(config)
    import tempfile

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, arrays, config, run_dir, progress=False)
        if args.profile:
            median, parts = profile_iterations(trainer, args.warmup, args.iterations)
            return {"config": args.config, "overrides": args.overrides, "input_size": size,
                    "xla": trainer.engine.jit_compile, "compute_dtype": model.anatomy_encoder.compute_dtype,
                    "iterations": args.iterations,
                    "median_s_per_iteration": round(median, 4),
                    "median_s_per_part": {k: round(v, 4) for k, v in parts.items()},
                    "share_of_iteration": {k: round(v / median, 3) for k, v in parts.items()},
                    "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags()}
        warmup, times = time_iterations(trainer, args.warmup, args.iterations)
        flops, _ = iteration_flops(trainer)
    median = statistics.median(times)
    rate = matmul_tflops(args.matmul_size)
    images = 2 * config.train.batch_size  # labelled + unlabelled images per iteration
    return {
        "config": args.config, "overrides": args.overrides, "input_size": size, "batch": f"{config.train.batch_size}+{config.train.batch_size}",
        "framework": "tensorflow " + __import__("tensorflow").__version__, "xla": trainer.engine.jit_compile,
        "jit_compile_setting": config.train.jit_compile,
        "allocator": args.allocator, "allocator_tuning_applied": applied or getattr(trainer.engine, "allocator_tuned", False),
        "graph_rewriting": getattr(trainer.engine, "graph_rewriting", None),
        "fused_optimizer": getattr(trainer.engine, "fused_optimizer", None),
        "compute_dtype": model.anatomy_encoder.compute_dtype,  # what the convolutions ran in
        "iterations": args.iterations, "median_s_per_iteration": round(median, 4),
        "images_per_s": round(images / median, 3), "all_s": [round(t, 4) for t in times],
        "warmup_s": round(warmup, 2), "cpu_count": os.cpu_count(),
        "tflop_per_iteration": round(flops / 1e12, 5), "achieved_tflops": round(flops / median / 1e12, 4),
        "matmul_size": args.matmul_size, "matmul_tflops": round(rate, 4),
        "fraction_of_matmul": round(flops / median / 1e12 / rate, 4),
    }


def matmul_tflops(n, repeats=5):
    """The machine's measured float32 matrix-product rate in TFLOP/s: the median of ``repeats``
    (n, n) @ (n, n) products in TensorFlow, after one untimed."""
    import tensorflow as tf

    from common import matmul_rate

    a = tf.random.normal((n, n), seed=0)
    b = tf.random.normal((n, n), seed=1)
    product = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    return matmul_rate(n, lambda: product(a, b).numpy(), repeats)


def cpu_flags():
    """The vector and matrix instruction sets this CPU reports (Linux), for the record."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return [f for f in wanted if f in flags]


def compare(args):
    from common import run_json
    from sdnet_tf.config import load_config

    config = load_config(args.config, args.overrides)
    m = config.model
    sets = [a for o in args.overrides for a in ("--set", o)]
    results, counted = [], []
    for key in args.variants:
        name, framework, xla, allocator, extra = VARIANTS[key]
        env = dict(os.environ)
        env.update(ENV_ALLOCATOR if allocator == "env" else {})
        if framework == "torch":
            if importlib.util.find_spec("torch") is None:
                print(f"{name:<38} skipped: torch is not installed", file=sys.stderr)
                continue
            cmd = [sys.executable, str(Path(__file__).with_name("torch_reference.py")), "--size", str(m.input_size),
                   "--filters", str(m.unet_filters), "--depth", str(m.unet_depth),
                   "--segmentor-filters", str(m.segmentor_filters),
                   "--discriminator-filters", str(m.discriminator_filters), "--batch", str(config.train.batch_size),
                   "--iterations", str(args.iterations), "--warmup", str(args.warmup)]
        else:
            cmd = [sys.executable, __file__, "--config", args.config, "--iterations", str(args.iterations),
                   "--warmup", str(args.warmup), "--allocator", "default" if allocator == "env" else allocator,
                   "--xla" if xla else "--no-xla", "--matmul-size", str(args.matmul_size), *sets, *[a for o in extra for a in ("--set", o)]]
        result = run_json(cmd, env)
        result["variant"] = name
        if "fraction_of_matmul" not in result and counted:  # PyTorch: the same iteration's operations
            flops, rate = counted[0]["tflop_per_iteration"], counted[0]["matmul_tflops"]
            result["fraction_of_matmul"] = round(flops / result["median_s_per_iteration"] / rate, 4)
        counted += [result] if "matmul_tflops" in result else []
        results.append(result)
        fraction = result.get("fraction_of_matmul")
        print(f"{name:<38}{result['median_s_per_iteration']:>9.3f} s/it {result['images_per_s']:>8.2f} images/s "
              + (f"{fraction:>7.1%} of the matmul rate" if fraction is not None else ""), file=sys.stderr, flush=True)
    base = results[0]["median_s_per_iteration"]  # the first variant named
    for result in results:
        result["speedup_vs_plain"] = round(base / result["median_s_per_iteration"], 3)
    report = {"config": args.config, "overrides": args.overrides, "variants": results}
    print(json.dumps(report, indent=2))
    if args.out:
        from sdnet_tf.atomic import write_text

        write_text(args.out, json.dumps(report, indent=2) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sdnet-acdc", help="config name in configs/ or a YAML path")
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None,
                        help="compile the steps with XLA (default: the config's train.jit_compile)")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (tracing, compiling)")
    parser.add_argument("--allocator", choices=["auto", "tuned", "default"], default="auto",
                        help="the allocator tuning as SDNET_TF_ALLOCATOR: auto (the CLI's default: with XLA), "
                             "tuned (always) or default (never)")
    parser.add_argument("--compare", action="store_true", help="run every variant side by side")
    parser.add_argument("--variants", default=",".join(VARIANTS), type=lambda text: text.split(","),
                        help="--compare's variants, comma-separated, the first the reference of the speed-ups: "
                             + ", ".join(VARIANTS) + " (default: all)")
    parser.add_argument("--profile", action="store_true",
                        help="time each part of the iteration (steps, fake masks, weight average, host)")
    parser.add_argument("--matmul-size", type=int, default=2048,
                        help="n of the (n, n) @ (n, n) float32 product whose rate is the machine's reference")
    parser.add_argument("--out", default=None, help="also write the result (one run, --profile or --compare) here as JSON")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable), as sdnet-tf train --set")
    args = parser.parse_args()
    unknown = [key for key in args.variants if key not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    if args.compare:
        compare(args)
    else:
        result = run_once(args)
        print(json.dumps(result))
        if args.out:
            from sdnet_tf.atomic import write_text

            write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
