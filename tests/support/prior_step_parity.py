"""Two training steps of a shape prior (NVAE or ACNN) on fixed inputs with the prior engine of
Keras' backend, for the parity test of the TensorFlow and JAX prior engines.

Run in-process under TensorFlow, and as a script under JAX (a process holds one backend):

    KERAS_BACKEND=jax python tests/support/prior_step_parity.py INITIAL.npz OUT.npz [nvae|acnn]

The first step is a real one (NVAE: KL warm-up coefficient 0.5 with balancing, the spectral
penalty and its power iteration; ACNN: the denoising loss on label-swapped masks; both with
coupled weight decay and Adamax); the second gets a mask with a NaN, which the finite-value
guard must skip without touching weights or optimiser state. ``keras.random.normal`` (the
NVAE's sampling) and ``keras.random.uniform`` / ``randint`` (ACNN's label swap) are replaced
by deterministic waves (``wave_normal``, ``wave_uniform``, ``wave_randint``), because
TensorFlow's Philox and JAX's threefry give different numbers for the same seed; they still
advance the seed generator as a real draw does. The learning rate is 1e-3 with Adamax's
epsilon of 1e-3, so the first step moves a weight by at most 1e-3 and a gradient that is
float32 noise (the biases feeding BatchNorm) by far less.
"""

import sys
from pathlib import Path

import keras
import numpy as np
from keras import ops

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for support.helpers

from support.helpers import TINY_ACNN, TINY_NVAE  # noqa: E402
from sdnet_tf.config import PriorConfig  # noqa: E402
from sdnet_tf.data.masks import prior_one_hot  # noqa: E402
from sdnet_tf.models.priors import assign_values, build_prior, variable_values  # noqa: E402
from sdnet_tf.training.engines import step_engine  # noqa: E402
from sdnet_tf.training.prior_trainer import prior_loss  # noqa: E402

# config values are lists
TINY = {kind: {k: list(v) if isinstance(v, tuple) else v for k, v in tiny.items()}
        for kind, tiny in (("nvae", TINY_NVAE), ("acnn", TINY_ACNN))}


def _wave(shape, seed):
    """A sine wave over a draw's elements, in [-1, 1], whose phase is the seed generator's
    counter (advanced as by a real draw)."""
    counter = ops.cast(seed.next()[1], "float32")
    index = ops.cumsum(ops.reshape(ops.ones(shape, "float32"), (-1,)))
    return ops.reshape(ops.sin(0.618 * index + 1.3 * counter), shape)


def wave_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
    """A deterministic stand-in for ``keras.random.normal``."""
    return ops.cast(1.4 * _wave(shape, seed), dtype or "float32") * stddev + mean


def wave_uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
    """A deterministic stand-in for ``keras.random.uniform``."""
    unit = 0.5 * (_wave(shape, seed) + 1.0)
    return ops.cast(minval + (maxval - minval) * unit, dtype or "float32")


def wave_randint(shape, minval, maxval, dtype="int32", seed=None):
    """A deterministic stand-in for ``keras.random.randint``: the wave's uniform, floored."""
    unit = 0.5 * (_wave(shape, seed) + 1.0) * 0.999
    return ops.cast(ops.floor(minval + (maxval - minval) * unit), dtype)


def config(kind="nvae"):
    c = PriorConfig()
    c.model.kind = kind
    for key, value in TINY[kind].items():
        setattr(c.model, key, value)
    c.train.learning_rate, c.train.spectral_weight, c.train.weight_decay = 1e-3, 0.1, 3e-4
    c.train.label_swap = 0.3  # ACNN: a swap that changes many of the batch's pixels in its one real step
    c.train.backend = keras.backend.backend()
    return c


def masks(batch=4, size=32):
    """Blocky label maps (4 x 4 cells of one class), so the NVAE sees shapes, not noise."""
    cells = np.random.default_rng(11).integers(0, 4, (batch, size // 4, size // 4))
    return prior_one_hot(np.kron(cells, np.ones((4, 4), np.int64)).astype(np.uint8))


def run(initial, out=None, kind="nvae"):
    """The two steps from ``initial`` (written first if missing); returns the arrays to compare.
    Replaces ``keras.random``'s normal, uniform and randint for good (the caller restores them)."""
    # the NVAE's Normal.sample and ACNN's swap_labels look them up at call time
    keras.random.normal, keras.random.uniform, keras.random.randint = wave_normal, wave_uniform, wave_randint
    c = config(kind)
    model = build_prior(c.model, seed=3)
    initial = Path(initial)
    if not initial.is_file():
        np.savez(initial, **variable_values(model))
    with np.load(initial) as data:
        assign_values(model, {k: data[k] for k in data.files})
    loss_fn, extra = prior_loss(kind, model, c.train)
    optimizer = keras.optimizers.Adamax(c.train.learning_rate, epsilon=c.train.epsilon)
    engine = step_engine(c)(model.trainable_variables, loss_fn, optimizer, c.train.weight_decay,
                            state=model.non_trainable_variables + extra)
    batch = masks()
    inputs = (np.float32(0.5),) if kind == "nvae" else ()  # the KL coefficient
    terms = engine.step(batch, *inputs)
    result = {f"terms/{k}": np.float64(v) for k, v in terms.items()}
    result.update({f"model/{k}": v for k, v in variable_values(model).items()})
    result.update({f"optimizer/{i:04d}": np.asarray(v.value) for i, v in enumerate(optimizer.variables)})
    # the loss's own variables: the NVAE's power-iteration vectors, ACNN's label-swap seed state
    result.update({f"extra/{i:04d}": np.asarray(v.value) for i, v in enumerate(extra)})
    if kind == "acnn":  # the share of pixels the wave's label swap changes (the same draw as the step's)
        from sdnet_tf.models.acnn import swap_labels

        swapped = swap_labels(batch, c.train.label_swap, keras.random.SeedGenerator(c.train.seed))
        result["swapped_share"] = np.float64(np.mean(np.any(np.asarray(swapped) != batch, axis=-1)))
    bad = batch.copy()
    bad[0, 0, 0, 0] = np.nan
    skipped = engine.step(bad, *inputs)
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
    run(sys.argv[1], sys.argv[2], *sys.argv[3:4])
