"""Time the shape priors' training step on each engine: TensorFlow (tf.function), TensorFlow
with XLA (``train.jit_compile``) and JAX.

    python benchmarks/prior_step.py --compare                    # NVAE Default-N, the thesis' settings
    python benchmarks/prior_step.py --compare --config acnn-acdc
    python benchmarks/prior_step.py --engine jax --out results/prior_step-jax.json

One step is the trainer's: the loss of ``prior_trainer.prior_loss`` (for the NVAE: the
weighted negative ELBO during the KL warm-up, with balancing, plus the spectral penalty),
its gradients, coupled weight decay, the finite-value guard and the Adamax update, on a
batch of ``train.batch_size`` random one-hot masks (the cost does not depend on their
content). ``--compare`` runs every engine one after the other, each in a fresh process
(Keras takes one backend per process), and prints the medians side by side with the ratio
to plain ``tf.function``. With ``--engine jax`` the script imports no TensorFlow, so it runs
on a GPU machine that has JAX only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import time_calls  # noqa: E402  (benchmarks/common.py, beside this script)
from sdnet_tf.atomic import write_text  # noqa: E402

ENGINES = {"tf-function": ("tensorflow", False), "tf-xla": ("tensorflow", True), "jax": ("jax", True)}


def measure(engine, config_name, overrides, warmup, steps):
    """Seconds of the warm-up (compilation included) and of each timed step, in this process."""
    from sdnet_tf.runtime import select_backend

    backend, xla = ENGINES[engine]
    select_backend(backend)  # before Keras is imported
    import keras
    import numpy as np

    from sdnet_tf.config import PriorConfig, load_config
    from sdnet_tf.data.masks import prior_one_hot
    from sdnet_tf.models.priors import build_prior
    from sdnet_tf.training.engines import step_engine
    from sdnet_tf.training.prior_trainer import prior_loss

    config = load_config(config_name, overrides, kind=PriorConfig)
    config.train.backend, config.train.jit_compile = backend, xla
    keras.utils.set_random_seed(config.train.seed)
    model = build_prior(config.model, seed=config.train.seed)
    loss_fn, extra = prior_loss(config.model.kind, model, config.train)
    optimizer = keras.optimizers.Adamax(config.train.learning_rate, epsilon=config.train.epsilon)
    engine_ = step_engine(config)(model.trainable_variables, loss_fn, optimizer, config.train.weight_decay, xla,
                                  state=model.non_trainable_variables + extra, networks=(model,))
    rng = np.random.default_rng(0)
    size, batch = config.model.input_size, config.train.batch_size
    batches = [prior_one_hot(rng.integers(0, 4, (batch, size, size)).astype(np.uint8)) for _ in range(4)]
    inputs = (lambda i: (batches[i % 4], np.float32(0.5))) if config.model.kind == "nvae" else \
        (lambda i: (batches[i % 4],))
    warmup_s, times = time_calls(lambda i: engine_.step(*inputs(i)), warmup, steps)
    parameters = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
    device = keras.backend.backend()
    if backend == "jax":
        import jax

        device = f"jax {jax.devices()[0].platform}"
    return {"engine": engine, "device": device, "config": config_name, "kind": config.model.kind,
            "input_size": size, "batch_size": batch, "trainable_parameters": parameters,
            "warmup_s": round(warmup_s, 2), "step_s": [round(t, 4) for t in times],
            "median_step_s": round(statistics.median(times), 4),
            "masks_per_s": round(batch / statistics.median(times), 2)}


def compare(args):
    rows = []
    for engine in args.engines:
        command = [sys.executable, __file__, "--engine", engine, "--config", args.config, "--warmup",
                   str(args.warmup), "--steps", str(args.steps), "--json"] + [f"--set={o}" for o in args.set]
        print(f"... {engine}", file=sys.stderr, flush=True)
        result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        if result.returncode:
            rows.append({"engine": engine, "error": result.stderr.strip().splitlines()[-1:]})
            continue
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    base = next((r["median_step_s"] for r in rows if r.get("engine") == "tf-function" and "median_step_s" in r), None)
    print(f"\n{args.config}: median seconds per training step ({args.steps} timed after {args.warmup} warm-up)\n")
    print("| engine | warm-up s | median s / step | masks / s | speed-up over tf.function |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['engine']} | failed: {' '.join(r['error'])} | | | |")
            continue
        ratio = f"{base / r['median_step_s']:.2f}" if base else "-"
        print(f"| {r['engine']} | {r['warmup_s']:.1f} | {r['median_step_s']:.3f} | {r['masks_per_s']:.1f} | {ratio} |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="nvae-acdc", help="a prior config (name in configs/ or path)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--engine", choices=sorted(ENGINES), help="time one engine in this process")
    parser.add_argument("--compare", action="store_true", help="time every engine, each in a fresh process")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=sorted(ENGINES))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line (for --compare)")
    parser.add_argument("--out", help="also write the result(s) here as JSON")
    args = parser.parse_args()
    if args.compare == bool(args.engine):
        parser.error("give --compare or --engine")
    result = compare(args) if args.compare else measure(args.engine, args.config, args.set, args.warmup, args.steps)
    if args.json:
        print(json.dumps(result))
    elif not args.compare:
        print(json.dumps(result, indent=2))
    if args.out:
        write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
