#!/usr/bin/env python
"""XLA's FLOP count of one SDNet training iteration (five updates and the fake-mask pass) for
a config, without timing: compiled on the JAX backend, as ``benchmarks/jax_iteration.py``
counts it.

    KERAS_BACKEND=jax python results/acdc/flops.py sdnet-acdc-cpu [sdnet-acdc]
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from jax_iteration import iteration_flops  # noqa: E402

from sdnet_tf.config import load_config, model_kwargs  # noqa: E402
from sdnet_tf.data.synthetic import synthetic_arrays  # noqa: E402
from sdnet_tf.models import SDNet  # noqa: E402
from sdnet_tf.training.trainer import Trainer  # noqa: E402


def count(name):
    config = load_config(name, ["train.image_summaries=0", "train.backend=jax", "data.augment=false"])
    model = SDNet(**model_kwargs(config), seed=1)
    model.build()
    arrays = synthetic_arrays(4 * config.train.batch_size, 8, config.model.input_size, 0.5, seed=0)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, arrays, config, run_dir, progress=False)
        trainer.train_iteration()  # fills the pool, as in training
        flops, per_step = iteration_flops(trainer)
    return {"config": name, "tflop_per_iteration": round(flops / 1e12, 5),
            "tflop_per_step": {k: round(v / 1e12, 5) for k, v in per_step.items()}}


if __name__ == "__main__":
    print(json.dumps([count(name) for name in sys.argv[1:] or ["sdnet-acdc-cpu"]], indent=2))
