"""Precise BatchNorm statistics (``sdnet_tf.training.batchnorm``) and their use before validation."""

import keras
import numpy as np
import pytest

from support.helpers import small_config, small_trainer
from sdnet_tf.config import model_kwargs
from sdnet_tf.models import SDNet
from sdnet_tf.training.batchnorm import batchnorm_layers, recalibrate, recalibration_batches
from sdnet_tf.training.trainer import validation_dice


def _net():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3)(x)
    return keras.Model(inputs, keras.layers.ReLU()(x))


def test_moving_statistics_become_the_mean_of_the_batch_statistics(rng):
    net = _net()
    conv, bn = net.layers[1], net.layers[2]
    batches = [rng.normal(3.0, 2.0, (5, 6, 6, 2)).astype("float32") for _ in range(4)]
    weights = [np.array(w) for w in net.trainable_weights]
    used = recalibrate(lambda x: net(x, training=True), batchnorm_layers(net), batches)
    assert used == 4
    features = [np.asarray(conv(b)) for b in batches]
    np.testing.assert_allclose(np.asarray(bn.moving_mean), np.mean([f.mean(axis=(0, 1, 2)) for f in features], 0),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), np.mean([f.var(axis=(0, 1, 2)) for f in features], 0),
                               rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.99  # restored
    for before, after in zip(weights, net.trainable_weights):
        np.testing.assert_array_equal(before, np.asarray(after))


def test_recalibrated_inference_matches_training_mode_where_stale_statistics_do_not(rng):
    # what made SDNet's validation swing: after the weights move, inference with the moving
    # averages no longer computes what training computes. Recalibrated on one batch, the
    # inference-mode network gives exactly its training-mode outputs on that batch.
    config = small_config()
    model = SDNet(**model_kwargs(config), seed=1)
    model.build()
    images = rng.uniform(-1, 1, (8, 32, 32, 1)).astype("float32")
    for variable in model.anatomy_encoder.trainable_variables:  # the weights move on
        variable.assign(np.asarray(variable) * 1.5 + 0.05)
    train_mode = np.asarray(model.segment(images, training=True))
    stale = np.asarray(model.segment(images, training=False))
    assert np.abs(stale - train_mode).max() > 0.05
    layers = batchnorm_layers(model.anatomy_encoder, model.segmentor)
    recalibrate(lambda x: model.segment(x, training=True), layers, [images])
    np.testing.assert_allclose(np.asarray(model.segment(images, training=False)), train_mode, atol=2e-3)


def test_recalibration_batches_draw_distinct_images():
    rng = np.random.default_rng(0)
    batches = recalibration_batches(np.arange(10), 3, 4, rng)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert [len(b) for b in recalibration_batches(np.arange(100), 2, 4, rng)] == [4, 4]


def test_validation_uses_the_recalibrated_statistics(tmp_path):
    trainer = small_trainer(tmp_path / "run", iterations_per_epoch=2, epochs=1, batchnorm_recalibration=3, validation_batch_size=4)
    model, arrays = trainer.model, trainer.arrays
    trainer.fit()  # 2 iterations, then the epoch's validation with recalibrated statistics
    layers = batchnorm_layers(model.anatomy_encoder, model.modality_encoder, model.segmentor)
    after_fit = [np.array(v) for layer in layers for v in layer.non_trainable_variables]
    # the same draw (seed, iteration) from the same weights gives the same statistics again
    assert trainer.recalibrate_batchnorm() == 3
    for before, layer_value in zip(after_fit, [v for layer in layers for v in layer.non_trainable_variables]):
        np.testing.assert_allclose(np.asarray(layer_value), before, rtol=1e-5, atol=1e-6)
    dice = validation_dice(trainer.engine.predict_masks(arrays.validation_images), arrays.validation_masks)
    assert trainer.best_dice == pytest.approx(dice, abs=1e-6)


def compiled_against_eager_recalibration(run_dir, **train):
    """Largest difference between the trainer's recalibration (its forward pass compiled,
    ``engines.stateful_compiler``) and the same batches run eagerly, from the same weights."""
    trainer = small_trainer(run_dir, iterations_per_epoch=2, epochs=1, batchnorm_recalibration=3,
                            validation_batch_size=4, **train)
    trainer.fit()  # the weights and statistics move away from their initial values
    layers = batchnorm_layers(*trainer._batchnorm_networks())
    statistics = [v for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
    start = [np.array(v) for v in statistics]
    assert trainer.recalibrate_batchnorm() == 3
    compiled = [np.array(v) for v in statistics]
    for variable, value in zip(statistics, start):
        variable.assign(value)
    rng = np.random.default_rng([trainer.config.train.seed, trainer.iteration, 2])
    a = trainer.arrays
    labelled = len(a.labelled_images)
    indices = recalibration_batches(np.arange(labelled + len(a.unlabelled_images)), 3, 4, rng)
    batches = [np.concatenate([a.labelled_images[i[i < labelled]], a.unlabelled_images[i[i >= labelled] - labelled]])
               for i in indices]
    assert recalibrate(trainer._batchnorm_forward, layers, batches) == 3
    assert [layer.momentum for layer in layers] == [0.99] * len(layers)  # restored
    return max(float(np.max(np.abs(np.asarray(v) - c))) for v, c in zip(statistics, compiled))


def test_compiled_recalibration_matches_the_eager_one(tmp_path):
    # the same batches and the same float32 running mean; only the forward pass's kernels
    # (graph against eager) may round differently. JAX: test_jax_engine.py
    assert compiled_against_eager_recalibration(tmp_path / "run") < 1e-5
