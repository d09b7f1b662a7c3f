"""Time one full SDNet training iteration (all five steps) on the JAX backend.

    python benchmarks/jax_iteration.py                          # the original: 224 x 224, 64 filters
    python benchmarks/jax_iteration.py --size 64 --filters 8    # a quick check on a CPU
    python benchmarks/jax_iteration.py --out results/jax_iteration-h100.json

Made for GPU machines that have JAX and no TensorFlow: it imports no TensorFlow. The
iteration is ``Trainer.train_iteration`` with the ``JAXEngine`` on random data (the five
updates, the fake masks of the discriminator images and the pool), timed after warm-up
iterations that compile every step. Printed and written as JSON (``--out``):

- the median seconds per iteration over ``--iterations`` repeats;
- the FLOPs of one iteration, XLA's own count (``cost_analysis`` of each compiled step,
  summed over the five updates and the fake-mask pass), and the TFLOP/s achieved. At the
  original size XLA counts 3.83 TFLOP (compiled on the CPU; each update's count is three
  times its forward pass, as expected of forward + backward) against the project's
  estimate of 2.7, so the rate at 2.7 TFLOP is given as well;
- the device's measured matrix-multiply rate (a large float32 ``jnp.dot``) and the fraction
  of it the iteration reaches. The dot runs at JAX's default precision, which is what the
  model's convolutions get: on A100 / H100 / H200 GPUs that is TF32 on the tensor cores, so
  the dot is also timed at ``precision="highest"`` (true float32) for reference.
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdnet_tf.runtime import select_backend  # noqa: E402

select_backend("jax")  # before Keras is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402

from sdnet_tf.config import load_config, model_kwargs  # noqa: E402
from sdnet_tf.data.synthetic import synthetic_arrays  # noqa: E402
from sdnet_tf.models import SDNet  # noqa: E402
from sdnet_tf.training.trainer import Trainer  # noqa: E402

from common import iteration_flops, matmul_rate, report, time_iterations  # noqa: E402  (benchmarks/common.py, beside this script)

EXPECTED_TFLOP = 2.7  # the project's estimate of one iteration at the original size


def matmul_tflops(n, precision, repeats=5):
    """Measured TFLOP/s of an (n, n) @ (n, n) float32 product (median of ``repeats``)."""
    keys = jax.random.split(jax.random.key(0))
    a = jax.random.normal(keys[0], (n, n), jnp.float32)
    b = jax.random.normal(keys[1], (n, n), jnp.float32)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, precision=precision))
    return matmul_rate(n, lambda: dot(a, b).block_until_ready(), repeats)


def run(args):
    overrides = ["train.image_summaries=0", "train.backend=jax", "data.augment=false"]
    if args.size:
        overrides.append(f"model.input_size={args.size}")
    if args.filters:
        overrides += [f"model.unet_filters={args.filters}", f"model.segmentor_filters={args.filters}",
                      f"model.discriminator_filters={args.filters}"]
    config = load_config(args.config, overrides)
    m, batch_size = config.model, config.train.batch_size
    # no keras.utils.set_random_seed: it imports TensorFlow to seed it wherever it is installed,
    # and the timing does not depend on the initial weights
    model = SDNet(**model_kwargs(config), seed=1)
    model.build()
    # enough images that every batch of the iteration differs, as in training
    arrays = synthetic_arrays(4 * batch_size, 8, m.input_size, 0.5, seed=0)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, arrays, config, run_dir, progress=False)
        warmup, times = time_iterations(trainer, args.warmup, args.iterations)
        flops, per_step = iteration_flops(trainer)
    median = statistics.median(times)
    achieved = flops / median / 1e12
    original = (m.input_size, m.unet_filters, batch_size) == (224, 64, 4)
    device = jax.devices()[0]
    n = args.matmul_size or (8192 if device.platform == "gpu" else 2048)
    default_rate = matmul_tflops(n, None)
    highest_rate = matmul_tflops(n, "highest")
    return {
        "config": args.config, "input_size": m.input_size, "unet_filters": m.unet_filters,
        "segmentor_filters": m.segmentor_filters, "discriminator_filters": m.discriminator_filters,
        "batch": f"{batch_size}+{batch_size}", "precision": config.train.precision,
        "framework": f"jax {jax.__version__}, keras {keras.__version__}",
        "device": f"{device.platform}: {device.device_kind}", "device_count": jax.device_count(),
        "iterations": args.iterations, "median_s_per_iteration": round(median, 5),
        "all_s": [round(t, 5) for t in times], "warmup_s": round(warmup, 2),
        "images_per_s": round(2 * batch_size / median, 2),
        "tflop_per_iteration": round(flops / 1e12, 4),
        "tflop_per_step": {name: round(value / 1e12, 4) for name, value in per_step.items()},
        "tflop_vs_expected_2.7": round(flops / 1e12 / EXPECTED_TFLOP, 3) if original else None,
        "achieved_tflops": round(achieved, 3),
        "achieved_tflops_at_expected_2.7": round(EXPECTED_TFLOP / median, 3) if original else None,
        "matmul_size": n, "matmul_tflops_default_precision": round(default_rate, 3),
        "matmul_tflops_highest_precision": round(highest_rate, 3),
        "fraction_of_matmul_default": round(achieved / default_rate, 4),
        "fraction_of_matmul_highest": round(achieved / highest_rate, 4),
        "cpu_count": os.cpu_count(),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sdnet-acdc", help="config name in configs/ or a YAML path")
    parser.add_argument("--size", type=int, default=None, help="input size (default: the config's, 224)")
    parser.add_argument("--filters", type=int, default=None,
                        help="U-Net, segmentor and discriminator filters (default: the config's, 64)")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (compiling)")
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="n of the (n, n) @ (n, n) rate check (default: 8192 on a GPU, 2048 otherwise)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON results here")
    args = parser.parse_args()
    result = run(args)
    report(result, args.out)


if __name__ == "__main__":
    main()
