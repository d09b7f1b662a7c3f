"""Train the tiny SDNet for a few iterations on one device or on two replicas; save an .npz.

Run by ``test_distribute.py`` in subprocesses (the two runs side by side), because logical
devices can be configured only before TensorFlow initialises its devices. Both runs start
from the same seed, so from the same weights, and draw the same batches (the sampler is a
pure function of the seed and the iteration) and the same z noise. "one" trains without a
strategy in a process with one CPU device; "two" with ``MirroredStrategy`` over two logical
CPU devices, with the same global batch.

Usage: python distribute_compare.py {one,two} OUT.npz ITERATIONS
"""

import contextlib
import sys
import tempfile
import time

import tensorflow as tf

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent.parent))  # tests/, for support.helpers

if sys.argv[1] == "two":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from support.helpers import small_config  # noqa: E402
from sdnet_tf.config import model_kwargs  # noqa: E402
from sdnet_tf.data.synthetic import synthetic_arrays  # noqa: E402
from sdnet_tf.models import SDNet  # noqa: E402
from sdnet_tf.training.engines import sdnet_engine  # noqa: E402
from sdnet_tf.training.trainer import Trainer  # noqa: E402


def _variables(model, value=np.array):
    return {f"{name}/{i:04d}": value(v) for name, net in model.networks().items()
            for i, v in enumerate(net.variables)}


def train(strategy, iterations, run_dir):
    """Initial and final variables, loss terms and validation predictions of one run."""
    config = small_config()
    keras.utils.set_random_seed(config.train.seed)
    arrays = synthetic_arrays(24, 8, config.model.input_size, 0.25, seed=0)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = SDNet(**model_kwargs(config), seed=config.train.seed)
        model.build()
    engine = sdnet_engine(model, config, strategy=strategy)
    trainer = Trainer(model, arrays, config, run_dir, engine=engine, progress=False)
    out = {f"initial/{k}": v for k, v in _variables(model).items()}
    out.update({f"path/{k}": np.array(v) for k, v in _variables(model, lambda v: v.path).items()})
    start = time.perf_counter()
    for iteration in range(iterations):
        for step, terms in trainer.train_iteration().items():
            out.update({f"terms/{iteration}/{step}/{name}": np.float64(v) for name, v in terms.items()})
    out["seconds"] = np.float64(time.perf_counter() - start)
    out.update({f"final/{k}": v for k, v in _variables(model).items()})
    out["validation"] = engine.predict_masks(arrays.validation_images)
    out["optimizer_steps"] = np.array([int(o.iterations.numpy()) for o in engine.optimizers.values()])
    return out


def main(mode, path, iterations):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if mode == "two" else None
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(path, **train(strategy, iterations, tmp))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
