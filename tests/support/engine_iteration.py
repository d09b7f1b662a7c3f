"""One SDNet iteration on fixed inputs with the engine of Keras' backend, for the parity test.

Run as a script under either backend (a process holds one backend; the first run saves the
initial weights, the second loads them):

    KERAS_BACKEND=tensorflow python tests/support/engine_iteration.py INITIAL.weights.h5 TF.npz
    KERAS_BACKEND=jax python tests/support/engine_iteration.py INITIAL.weights.h5 JAX.npz

Everything an engine could draw differently is fixed: the weights come from one file, the
batch from the numpy sampler with rotation off, the fake masks from a seeded numpy draw, and
``keras.random.normal`` reads a fixed table (``table_normal``), because TensorFlow's Philox
and JAX's threefry give different numbers for the same seed.

Two places where the backends legitimately differ would otherwise decide the comparison,
so the iteration avoids them:

- Subgradients at 0: TensorFlow's LeakyReLU takes the slope ``alpha`` at exactly 0, JAX's
  takes 1. With the biases at their initial zeros, every all-zero patch of a binary mask or
  anatomy map hits exactly 0 and the two gradients differ by design. The initial weights
  therefore get small random biases, as any trained network has.
- Adam's first step moves each weight by ``lr * g / (|g| + epsilon)``, which is +-lr for any
  gradient much larger than epsilon. The conv and dense biases that feed BatchNorm have a
  gradient that is zero in exact arithmetic (BatchNorm removes the mean) and about 1e-6
  of float32 noise in practice, which the original epsilon of 1e-7 turns into a +-1e-4 step
  whose sign is each backend's rounding. Epsilon 1e-3 bounds the step's sensitivity to
  gradient noise by lr / epsilon = 0.1 instead of 1000, so a wrong gradient still shows.
"""

import sys
from pathlib import Path

import keras
import numpy as np
from keras import ops

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for support.helpers

from support.helpers import small_config  # noqa: E402
from sdnet_tf.config import model_kwargs  # noqa: E402
from sdnet_tf.data.synthetic import synthetic_arrays  # noqa: E402
from sdnet_tf.models import SDNet  # noqa: E402
from sdnet_tf.training.schedule import SDNET_SCHEDULE, BatchSampler  # noqa: E402
from sdnet_tf.training.engines import sdnet_engine  # noqa: E402
from sdnet_tf.training.trainer import _step_inputs  # noqa: E402

NOISE = np.random.default_rng(7).standard_normal((16, 4, 8)).astype(np.float32)  # (draws, B, nz)


def table_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
    """``keras.random.normal`` that returns row ``counter % 16`` of ``NOISE``.

    It advances the ``SeedGenerator`` exactly as the real draw does and picks the row with
    its counter, so every draw of the iteration differs, the seed state is threaded through
    the engines as in training, and both backends sample the same numbers.
    """
    if tuple(shape) != NOISE.shape[1:]:
        raise ValueError(f"table_normal draws {NOISE.shape[1:]} samples, asked for {tuple(shape)}")
    counter = ops.cast(seed.next()[1], "int32")  # the state is [seed, counter]
    eps = ops.take(ops.convert_to_tensor(NOISE), ops.mod(counter, len(NOISE)), axis=0)
    return ops.cast(eps, dtype or "float32") * stddev + mean


def fixed_inputs(config):
    """The iteration's batch (sampler iteration 0, rotation off) and the fake masks."""
    arrays = synthetic_arrays(24, 8, config.model.input_size, 0.25, seed=0)
    sampler = BatchSampler(arrays, config.train.batch_size, config.train.seed, augment=False,
                           nz=config.model.nz)
    batch = sampler.batches(0)
    fakes = np.random.default_rng(3).uniform(0.0, 1.0, batch["real_masks"].shape).astype(np.float32)
    return batch, fakes


def variables(model, engine):
    """Every model and optimiser variable as numpy, by network (or optimiser) and index."""
    out = {}
    for name, network in model.networks().items():
        out.update({f"{name}/{i:04d}": np.array(v.value) for i, v in enumerate(network.variables)})
    for name, optimizer in engine.optimizers.items():
        out.update({f"optimizer_{name}/{i:04d}": np.array(v.value) for i, v in enumerate(optimizer.variables)})
    return out


def prepared(initial_weights, **train):
    """The tiny SDNet on Keras' backend with ``initial_weights`` (saved there from the fresh
    model, with small random biases, when the file does not exist), its engine and the fixed
    inputs: ``(model, engine, batch, fakes)``. ``train`` overrides the config's train section
    (``epsilon`` is 1e-3, see the module docstring)."""
    config = small_config(backend=keras.backend.backend(), **{"epsilon": 1e-3, **train})
    keras.utils.set_random_seed(config.train.seed)
    model = SDNet(**model_kwargs(config), seed=config.train.seed)
    model.build()
    initial_weights = Path(initial_weights)
    if initial_weights.exists():
        model.load_weights(initial_weights)
    else:
        rng = np.random.default_rng(11)
        for variable in model.trainable_variables:
            if not np.any(np.asarray(variable.value)):  # biases and BatchNorm offsets
                variable.assign(rng.uniform(-0.05, 0.05, variable.shape).astype(np.float32))
        model.save_weights(initial_weights)
    return (model, sdnet_engine(model, config), *fixed_inputs(config))


def run(initial_weights):
    """Load ``initial_weights`` (or save the fresh model's there) and run one iteration.

    Call with ``keras.random.normal`` replaced by ``table_normal``. Returns a dict of numpy
    arrays: ``initial/...`` and ``final/...`` variables, ``predicted`` (the initial model's
    masks of the discriminator images), ``terms/<step>/<term>`` loss values and
    ``seed_state`` (the sampling layer's seed-generator state at the end).
    """
    model, engine, batch, fakes = prepared(initial_weights)
    out = {f"initial/{k}": v for k, v in variables(model, engine).items()}
    out["predicted"] = engine.predict_masks(batch["discriminator_images"])
    for step in SDNET_SCHEDULE:
        terms = engine.run_step(step, *_step_inputs(step, batch, fakes))
        out.update({f"terms/{step.name}/{k}": np.float64(v) for k, v in terms.items()})
    out.update({f"final/{k}": v for k, v in variables(model, engine).items()})
    out["seed_state"] = np.asarray(model.modality_encoder.sampler.seed_generator.state.value, np.int64)
    return out


def main(initial_weights, out_path):
    if keras.backend.backend() == "tensorflow":  # Grappler off, as in the test processes (tests/conftest.py)
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    keras.random.normal = table_normal
    np.savez(out_path, **run(initial_weights))


if __name__ == "__main__":
    main(*sys.argv[1:])
