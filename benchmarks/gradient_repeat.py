"""Is a prior's gradient on one batch the same every time? The NVAE's (or ACNN's) loss gradient
from one set of weights on one batch of random masks, computed ``--calls`` times in one
``tf.function`` (the state a call changes, BatchNorm statistics and the spectral power
iterates, put back before each), and each call compared with the first, bit for bit.

    python benchmarks/gradient_repeat.py                      # TensorFlow's defaults
    python benchmarks/gradient_repeat.py --deterministic      # as train.deterministic sets it
    python benchmarks/gradient_repeat.py --op-determinism     # op determinism alone
    python benchmarks/gradient_repeat.py --grappler-off remapping   # one Grappler pass off
    TF_NUM_INTEROP_THREADS=1 python benchmarks/gradient_repeat.py

Prints how many calls differ from the first and the largest difference (README, Training,
"Same seed, same weights").
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="nvae-acdc", help="a prior config (name in configs/ or path)")
    parser.add_argument("--calls", type=int, default=16)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--deterministic", action="store_true", help="tf_engine.enable_determinism, as "
                                                                   "train.deterministic: true")
    mode.add_argument("--op-determinism", action="store_true", help="tf.config.experimental.enable_op_determinism "
                                                                    "only")
    mode.add_argument("--grappler-off", metavar="PASS", help="one of Grappler's passes off (e.g. remapping), or "
                                                             "'all'")
    args = parser.parse_args()
    if args.calls < 2:
        parser.error("--calls must be at least 2: each later call is compared with the first")

    import numpy as np
    import tensorflow as tf

    from sdnet_tf.training.tf_engine import enable_determinism

    if args.deterministic:
        enable_determinism()
    elif args.op_determinism:
        tf.config.experimental.enable_op_determinism()
    elif args.grappler_off:
        tf.config.optimizer.set_experimental_options(
            {"disable_meta_optimizer": True} if args.grappler_off == "all" else {args.grappler_off: False})
    import keras

    from sdnet_tf.config import PriorConfig, load_config
    from sdnet_tf.data.masks import prior_one_hot
    from sdnet_tf.models.priors import build_prior
    from sdnet_tf.training.prior_trainer import prior_loss

    config = load_config(args.config, [], kind=PriorConfig)
    keras.utils.set_random_seed(config.train.seed)
    model = build_prior(config.model, seed=config.train.seed)
    loss_fn, extra = prior_loss(config.model.kind, model, config.train)
    size, batch = config.model.input_size, config.train.batch_size
    masks = prior_one_hot(np.random.default_rng(0).integers(0, 4, (batch, size, size)).astype(np.uint8))
    inputs = (masks, np.float32(0.5)) if config.model.kind == "nvae" else (masks,)
    state = model.non_trainable_variables + extra
    start = [np.asarray(v).copy() for v in state]

    @tf.function(autograph=False)
    def gradients(*inputs):
        with tf.GradientTape() as tape:
            out = loss_fn(*inputs)
            loss = out[0] if isinstance(out, (tuple, list)) else out
        return tape.gradient(loss, model.trainable_variables)

    first, differing, largest = None, 0, 0.0
    for call in range(args.calls):
        for variable, value in zip(state, start):
            variable.assign(value)
        grads = [np.asarray(g) for g in gradients(*inputs)]
        if first is None:
            first = grads
            continue
        difference = max(float(np.abs(a - b).max()) for a, b in zip(first, grads))
        differing += difference > 0
        largest = max(largest, difference)
    mode_name = ("deterministic" if args.deterministic else "op determinism" if args.op_determinism
                 else f"Grappler {args.grappler_off} off" if args.grappler_off else "default")
    print(json.dumps({"config": args.config, "mode": mode_name, "calls": args.calls,
                      "TF_NUM_INTEROP_THREADS": os.environ.get("TF_NUM_INTEROP_THREADS"),
                      "differing_from_first": differing, "largest_difference": largest}))


if __name__ == "__main__":
    main()
