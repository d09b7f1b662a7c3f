"""Two NVAE training steps on fixed inputs with the prior engine of Keras' backend, for the
parity test of the TensorFlow and JAX prior engines.

Run in-process under TensorFlow, and as a script under JAX (a process holds one backend):

    KERAS_BACKEND=jax python tests/support/prior_step_parity.py INITIAL.npz OUT.npz

The first step is a real one (KL warm-up coefficient 0.5 with balancing, the spectral
penalty and its power iteration, coupled weight decay, Adamax); the second gets a mask with a
NaN, which the finite-value guard must skip without touching weights or optimiser state.
``keras.random.normal`` is replaced by a deterministic wave (``wave_normal``), because
TensorFlow's Philox and JAX's threefry give different numbers for the same seed; it still
advances the seed generator as a real draw does. The learning rate is 1e-3 with Adamax's
epsilon of 1e-3, so the first step moves a weight by at most 1e-3 and a gradient that is
float32 noise (the biases feeding BatchNorm) by far less.
"""

import sys
from pathlib import Path

import keras
import numpy as np
from keras import ops

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for support.helpers

from support.helpers import TINY_NVAE  # noqa: E402
from sdnet_tf.config import PriorConfig  # noqa: E402
from sdnet_tf.data.masks import prior_one_hot  # noqa: E402
from sdnet_tf.models.priors import assign_values, build_prior, variable_values  # noqa: E402
from sdnet_tf.training.engines import step_engine  # noqa: E402
from sdnet_tf.training.prior_trainer import prior_loss  # noqa: E402

TINY = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_NVAE.items()}  # config values are lists


def wave_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
    """A deterministic stand-in for ``keras.random.normal``: a sine wave over the draw's
    elements whose phase is the seed generator's counter (advanced as by a real draw)."""
    counter = ops.cast(seed.next()[1], "float32")
    index = ops.cumsum(ops.reshape(ops.ones(shape, "float32"), (-1,)))
    eps = ops.reshape(1.4 * ops.sin(0.618 * index + 1.3 * counter), shape)
    return ops.cast(eps, dtype or "float32") * stddev + mean


def config():
    c = PriorConfig()
    for key, value in TINY.items():
        setattr(c.model, key, value)
    c.train.learning_rate, c.train.spectral_weight, c.train.weight_decay = 1e-3, 0.1, 3e-4
    c.train.backend = keras.backend.backend()
    return c


def masks(batch=4, size=32):
    """Blocky label maps (4 x 4 cells of one class), so the NVAE sees shapes, not noise."""
    cells = np.random.default_rng(11).integers(0, 4, (batch, size // 4, size // 4))
    return prior_one_hot(np.kron(cells, np.ones((4, 4), np.int64)).astype(np.uint8))


def run(initial, out=None):
    """The two steps from ``initial`` (written first if missing); returns the arrays to compare."""
    keras.random.normal = wave_normal  # the NVAE's Normal.sample looks it up at call time
    c = config()
    model = build_prior(c.model, seed=3)
    initial = Path(initial)
    if not initial.is_file():
        np.savez(initial, **variable_values(model))
    with np.load(initial) as data:
        assign_values(model, {k: data[k] for k in data.files})
    loss_fn, extra = prior_loss("nvae", model, c.train)
    optimizer = keras.optimizers.Adamax(c.train.learning_rate, epsilon=c.train.epsilon)
    engine = step_engine(c)(model.trainable_variables, loss_fn, optimizer, c.train.weight_decay,
                            state=model.non_trainable_variables + extra)
    batch = masks()
    terms = engine.step(batch, np.float32(0.5))
    result = {f"terms/{k}": np.float64(v) for k, v in terms.items()}
    result.update({f"model/{k}": v for k, v in variable_values(model).items()})
    result.update({f"optimizer/{i:04d}": np.asarray(v.value) for i, v in enumerate(optimizer.variables)})
    result.update({f"spectral/{i:04d}": np.asarray(v.value) for i, v in enumerate(extra)})
    bad = batch.copy()
    bad[0, 0, 0, 0] = np.nan
    skipped = engine.step(bad, np.float32(0.5))
    result["skipped"] = np.float64(skipped["skipped"])
    result["unchanged_after_skip"] = np.float64(
        all(np.array_equal(result[f"model/{k}"], v) for k, v in variable_values(model).items()
            if np.issubdtype(v.dtype, np.floating))
        and all(np.array_equal(result[f"optimizer/{i:04d}"], np.asarray(v.value))
                for i, v in enumerate(optimizer.variables)))
    if out:
        np.savez(out, **result)
    return result


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
