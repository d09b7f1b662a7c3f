"""The weight average (``sdnet_tf.training.averaging``) and its use for validation and kept weights."""

import keras
import numpy as np
import pytest

from support.helpers import small_trainer
from sdnet_tf.training.averaging import WeightAverage
from sdnet_tf.training.engines import stateful_compiler


def test_average_follows_the_documented_decay_and_swaps_back():
    w = keras.Variable(np.zeros(3, "float32"))
    other = keras.Variable(np.ones(2, "float32"))  # e.g. a BatchNorm statistic
    average = WeightAverage([w], decay=0.5)
    expected = np.zeros(3)
    for t, value in enumerate([1.0, 2.0, 4.0, 8.0]):
        w.assign(np.full(3, value, "float32"))
        average.update()
        decay = min(0.5, (1 + t) / (10 + t))
        expected = decay * expected + (1 - decay) * value
    np.testing.assert_allclose(np.asarray(average.averages[0]), expected, rtol=1e-6)
    assert int(np.asarray(average.updates)) == 4
    with average.swapped([w, other]):
        np.testing.assert_allclose(np.asarray(w), expected, rtol=1e-6)
        other.assign(np.zeros(2, "float32"))
    np.testing.assert_array_equal(np.asarray(w), np.full(3, 8.0))
    np.testing.assert_array_equal(np.asarray(other), np.ones(2))
    copy = WeightAverage([w], decay=0.5)
    copy.load_state(average.state())
    np.testing.assert_array_equal(np.asarray(copy.averages[0]), np.asarray(average.averages[0]))
    with pytest.raises(ValueError, match="decay"):
        WeightAverage([w], decay=1.0)


def compiled_against_eager(backend, updates=12):
    """Largest difference between the compiled and the eager weight average after
    ``updates`` updates of two weights that move between updates, while the decay changes
    with each update."""

    rng = np.random.default_rng(0)
    weights = [keras.Variable(rng.normal(size=(3, 4)).astype("float32")), keras.Variable(rng.normal(size=5).astype("float32"))]
    eager = WeightAverage(weights, decay=0.9)
    compiled = WeightAverage(weights, decay=0.9, compiler=stateful_compiler(backend))
    for _ in range(updates):  # the decay changes with every update up to 0.9
        for w in weights:
            w.assign(np.asarray(w) + rng.normal(scale=0.1, size=w.shape).astype("float32"))
        eager.update()
        compiled.update()
    assert int(np.asarray(compiled.updates)) == updates
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(eager.averages, compiled.averages))


def test_compiled_update_is_the_eager_update_exactly_on_tensorflow():
    # the trainers' update (engines.stateful_compiler: one tf.function) rounds exactly as the
    # eager operations do; the JAX engine's is checked in test_jax_engine.py
    assert compiled_against_eager("tensorflow") == 0.0


def test_validation_and_kept_weights_are_the_average(tmp_path):
    trainer = small_trainer(tmp_path / "run", iterations_per_epoch=3, epochs=1, weight_average=0.9, batchnorm_recalibration=2)
    model = trainer.model
    trainer.fit()
    raw = [np.array(v) for net in model.networks().values() for v in net.trainable_variables]
    kept = keras.models.load_model(tmp_path / "run" / "model.keras")
    kept_weights = [np.array(v) for net in kept.networks().values() for v in net.trainable_variables]
    averages = [np.asarray(a) for a in trainer.average.averages]
    assert len(kept_weights) == len(averages) == len(raw)
    for k, a in zip(kept_weights, averages):
        np.testing.assert_allclose(k, a, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(k, r) for k, r in zip(kept_weights, raw))  # training goes on from the raw weights
