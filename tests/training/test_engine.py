"""TensorFlow engine: each step updates exactly its variables; exact resume; checkpoints."""

import os
import shutil

import keras
import numpy as np
import pytest

from support.helpers import small_config
from sdnet_tf.config import model_kwargs
from sdnet_tf.data.synthetic import synthetic_arrays
from sdnet_tf.models import SDNet
from sdnet_tf.training.schedule import SDNET_SCHEDULE
from sdnet_tf.training.trainer import Trainer, _step_inputs, validation_dice


def _trainer(tmp_path, config=None, name="run"):
    config = config or small_config()
    keras.utils.set_random_seed(config.train.seed)
    arrays = synthetic_arrays(24, 8, config.model.input_size, 0.25, seed=0)
    model = SDNet(**model_kwargs(config), seed=config.train.seed)
    model.build()
    return Trainer(model, arrays, config, tmp_path / name, progress=False)


def _snapshot(model):
    return {name: [np.array(v) for v in net.variables] for name, net in model.networks().items()}


@pytest.fixture(scope="module")
def warm_trainer(tmp_path_factory):
    trainer = _trainer(tmp_path_factory.mktemp("engine"))
    trainer.train_iteration()  # build optimisers' slots and fill the pool
    return trainer


@pytest.mark.parametrize("step", SDNET_SCHEDULE, ids=lambda s: s.name)
def test_each_step_updates_exactly_the_networks_it_names(warm_trainer, step):
    trainer = warm_trainer
    batch = trainer.sampler.batches(7)
    fakes = trainer.pool.sample(4, np.random.default_rng(0))
    before = _snapshot(trainer.model)
    trainer.engine.run_step(step, *_step_inputs(step, batch, fakes))
    after = _snapshot(trainer.model)
    for name, net in trainer.model.networks().items():
        trainable = {id(v) for v in net.trainable_variables}
        changed_trainable = [not np.array_equal(a, b) for v, a, b in zip(net.variables, before[name], after[name])
                             if id(v) in trainable]
        changed_any = [not np.array_equal(a, b) for a, b in zip(before[name], after[name])]
        if name in step.trains:
            assert any(changed_trainable), f"{step.name} did not update {name}"
        else:
            assert not any(changed_any), f"{step.name} changed weights of {name}"


def test_discriminator_step_leaves_every_generator_weight_unchanged(warm_trainer):
    trainer = warm_trainer
    step = SDNET_SCHEDULE[-1]
    assert step.name == "discriminator"
    before = _snapshot(trainer.model)
    trainer.engine.run_step(step, trainer.sampler.batches(3)["real_masks"], trainer.pool.sample(4, np.random.default_rng(1)))
    after = _snapshot(trainer.model)
    for name in ("anatomy_encoder", "modality_encoder", "decoder", "segmentor"):
        for a, b in zip(before[name], after[name]):
            np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(before["discriminator"], after["discriminator"]))


def test_optimisers_use_inverse_time_decay(warm_trainer):
    opt = warm_trainer.engine.optimizers["z_regressor"]
    t = int(opt.iterations.numpy())
    assert t >= 2  # two z-reconstruction steps per iteration
    assert float(opt.learning_rate.numpy()) == pytest.approx(1e-4 / (1 + 1e-4 * t), rel=1e-6)
    assert float(opt.beta_1) == 0.5


def _weights(model):
    return [np.array(v) for v in model.variables]


# each case traces two trainers (about a minute of 2 cores): the default suite keeps the case
# with both validation options on, which checkpoints the most state; the others are slow
@pytest.mark.parametrize("recalibration,average", [
    pytest.param(0, 0.0, id="moving-averages", marks=pytest.mark.slow),
    pytest.param(2, 0.0, id="batchnorm-recalibrated", marks=pytest.mark.slow),
    pytest.param(2, 0.9, id="weight-averaged")])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, recalibration, average):
    # the run crosses an epoch end (iteration 4), where validation recomputes the BatchNorm
    # statistics when train.batchnorm_recalibration is set (of the averaged weights with
    # train.weight_average, whose averages are checkpointed too)
    k, m = 3, 3
    config = small_config(iterations_per_epoch=4, epochs=2, batchnorm_recalibration=recalibration,
                          weight_average=average)
    straight = _trainer(tmp_path, config, "straight")
    straight.fit(max_iterations=k)
    # the run as it was when "killed" after k iterations
    shutil.copytree(tmp_path / "straight", tmp_path / "killed")
    straight.fit(max_iterations=k + m)
    expected = _weights(straight.model)

    resumed = _trainer(tmp_path, config, "killed")
    assert resumed.resume() == k
    resumed.fit(max_iterations=k + m)
    assert resumed.iteration == k + m
    got = _weights(resumed.model)
    assert len(got) == len(expected)
    for a, b in zip(expected, got):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the pool, the weight average and the optimiser step counts came back too
    np.testing.assert_array_equal(resumed.pool.items, straight.pool.items)
    if average:
        for a, b in zip(resumed.average.averages, straight.average.averages):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for name, opt in resumed.engine.optimizers.items():
        assert int(opt.iterations.numpy()) == int(straight.engine.optimizers[name].iterations.numpy())


def test_early_stopping_run_directory_best_weights_and_use_before_the_end(tmp_path, caplog):
    # the first epoch always improves on +inf; with min_delta 10 no later one does:
    # training stops after 1 + patience epochs
    import json
    import logging

    from sdnet_tf.inference import load_run

    config = small_config(iterations_per_epoch=1, epochs=10, patience=2, min_delta=10.0)
    trainer = _trainer(tmp_path, config)
    result = trainer.fit()
    assert result["stopped_early"]
    assert result["iteration"] == 3
    run = tmp_path / "run"
    a = trainer.arrays
    # before finish() (no summary.json: a run still training, or stopped before its end) the
    # run is loaded from its best validation epoch so far, and load_run says which epoch
    assert not (run / "summary.json").exists()
    best = json.loads((run / "best.json").read_text())
    assert best["val_dice"] == pytest.approx(trainer.best_dice)
    with caplog.at_level(logging.WARNING, logger="sdnet_tf.inference"):
        model, _ = load_run(run)
    assert "has not finished training" in caplog.text and f"epoch {best['epoch']} " in caplog.text
    predicted = np.asarray(model.segment(a.validation_images, training=False))
    assert validation_dice(predicted, a.validation_masks) == pytest.approx(best["val_dice"], abs=1e-5)

    summary = trainer.finish()
    assert (run / "config.yaml").is_file()
    assert (run / "model.keras").is_file()
    # the run files of every model kind and backend (run_files): one .npz per checkpoint
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ckpt-2.npz", "ckpt-3.npz"]
    assert (run / "best.npz").is_file()
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,step,seconds,val_dice,val_loss,train_supervised/dice")
    assert len(history) == 4
    best_row = max(history[1:], key=lambda row: float(row.split(",")[3]))
    assert summary["best_val_dice"] == pytest.approx(float(best_row.split(",")[3]))
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    scalars = [json.loads(line) for line in (run / "scalars.jsonl").read_text().splitlines()]
    assert [s["step"] for s in scalars if "validation/dice" in s] == [1, 2, 3]
    # model.keras holds the best epoch's weights: its validation Dice is the best one
    loaded = keras.models.load_model(run / "model.keras")
    predicted = np.asarray(loaded.segment(a.validation_images, training=False))
    assert validation_dice(predicted, a.validation_masks) == pytest.approx(summary["best_val_dice"], abs=1e-5)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdnet_tf.inference"):
        load_run(run)
    assert "has not finished" not in caplog.text
    assert summary["complete"]  # early stopping ended it
    # a run stopped by --max-iterations before its schedule's end says so too
    (run / "summary.json").write_text(json.dumps({**summary, "complete": False}))
    with caplog.at_level(logging.WARNING, logger="sdnet_tf.inference"):
        load_run(run)
    assert "has not finished training (stopped after 3 iterations by --max-iterations" in caplog.text


# slow: two tiny trainers and a validated epoch (about 30 s); the format it reads is frozen
@pytest.mark.slow
def test_a_run_of_tensorflow_checkpoints_from_an_earlier_version_resumes(tmp_path):
    # earlier versions wrote tf.train checkpoints of the same variable names plus state-<i>.npz
    import tensorflow as tf

    config = small_config(iterations_per_epoch=2, epochs=2)
    old = _trainer(tmp_path, config, "old")
    old.fit(max_iterations=3)  # one validated epoch (best.json, model.keras) and one iteration more
    directory = tmp_path / "old" / "checkpoints"
    for path in directory.glob("ckpt-*.npz"):
        path.unlink()
    (tmp_path / "old" / "best.npz").unlink()
    variables = old.variables()
    tf.train.CheckpointManager(tf.train.Checkpoint(**{k: v.value for k, v in variables.items()}), str(directory),
                               max_to_keep=2, checkpoint_name="ckpt").save(checkpoint_number=3)
    np.savez(directory / "state-3.npz", iteration=np.int64(3), best_dice=np.float64(old.best_dice),
             stopped=np.bool_(False), stopper_best=np.float64(old.stopper.best),
             stopper_wait=np.int64(old.stopper.wait), **old.pool.state())

    resumed = _trainer(tmp_path, config, "old")
    assert resumed.resume() == 3 and resumed.best_dice == pytest.approx(old.best_dice)
    for name, variable in resumed.variables().items():
        np.testing.assert_array_equal(np.asarray(variable.value), np.asarray(variables[name].value), err_msg=name)
    np.testing.assert_array_equal(resumed.pool.items, old.pool.items)
    assert (tmp_path / "old" / "best.npz").is_file()  # the best weights, from model.keras
    resumed.fit()
    assert sorted(p.name for p in directory.glob("ckpt-*.npz")) == ["ckpt-4.npz"]
    assert resumed.finish()["iteration"] == 4


def test_auto_xla_follows_the_measured_rule(tmp_path):
    from sdnet_tf.training.speed import choose_xla

    # the rule (benchmarks/RESULTS.md): any GPU, no CPU at any size; true and false win
    assert not any(choose_xla("auto", size, gpu=False) for size in (32, 64, 128, 192, 224, 256))
    assert choose_xla("auto", 64, gpu=True) and choose_xla("auto", None, gpu=True)
    assert not choose_xla("auto", None, gpu=False)
    assert choose_xla(True, 32, gpu=False) and not choose_xla(False, 224, gpu=True)
    # the TensorFlow engine applies it: a 32 x 32 model on this CPU trains without XLA
    trainer = _trainer(tmp_path, small_config(jit_compile="auto"))
    assert trainer.engine.jit_compile is False
    # and at 32 x 32 on a CPU the allocator tuning (SDNET_TF_ALLOCATOR=auto) does not apply,
    # and Grappler (train.graph_rewriting auto) is off, as at every size on a CPU without XLA
    assert trainer.engine.allocator_tuned is (os.environ.get("SDNET_TF_ALLOCATOR") == "tuned")
    assert trainer.engine.graph_rewriting is False


def test_auto_graph_rewriting_and_allocator_tuning_follow_the_measured_rules():
    from sdnet_tf.training.speed import choose_allocator_tuning, choose_graph_rewriting

    # Grappler off on a CPU without XLA at every size (measured at 64, 128 and 224); kept with
    # XLA and on a GPU (not measured); true and false win
    assert [choose_graph_rewriting("auto", False, size, gpu=False) for size in (32, 64, 128, 224, None)] == [
        False] * 5
    assert choose_graph_rewriting("auto", True, 128, gpu=False) and choose_graph_rewriting("auto", False, 128, gpu=True)
    assert choose_graph_rewriting(True, False, 128, False) and not choose_graph_rewriting(False, True, 64, True)
    # the allocator tuning only with XLA on a CPU from 192 x 192 up (measured faster at 224,
    # slower with XLA at 128 and without XLA at 64 and 128)
    assert [choose_allocator_tuning(True, size, gpu=False) for size in (128, 191, 192, 224)] == [
        False, False, True, True]
    assert not choose_allocator_tuning(False, 224, gpu=False) and not choose_allocator_tuning(True, 224, gpu=True)


def test_the_allocator_tuning_follows_its_setting(monkeypatch):
    from sdnet_tf.runtime import tune_allocator

    # (applied when the engine does not compile with XLA, applied when it does)
    for value, expected in (("", (False, True)), ("auto", (False, True)), ("tuned", (True, True)),
                            ("default", (False, False))):
        monkeypatch.setenv("SDNET_TF_ALLOCATOR", value)
        assert (tune_allocator(when_auto=False), tune_allocator(when_auto=True)) == expected, value
    monkeypatch.setenv("SDNET_TF_ALLOCATOR", "fast")
    with pytest.raises(ValueError, match="SDNET_TF_ALLOCATOR='fast': use one of auto, tuned, default"):
        tune_allocator()


# XLA's compilation (about 15 s) makes the float32 case slow; XLA keeps its learning run in
# benchmarks/train_step.py. float16 (a GPU precision; 15 s) is slow too: bfloat16, the CPU's,
# checks the mixed-precision path in the default run
@pytest.mark.parametrize("jit_compile,precision",
                         [pytest.param(True, "float32", marks=pytest.mark.slow), (False, "mixed_bfloat16"),
                          pytest.param(False, "mixed_float16", marks=pytest.mark.slow)])
def test_xla_and_mixed_precision_switches_train(tmp_path, jit_compile, precision):
    keras.config.set_dtype_policy(precision)
    config = small_config(jit_compile=jit_compile, precision=precision)
    trainer = _trainer(tmp_path, config)
    step = SDNET_SCHEDULE[0]
    before = _weights(trainer.model)
    batch = trainer.sampler.batches(0)
    terms = trainer.engine.run_step(step, *_step_inputs(step, batch, None))
    assert all(np.isfinite(v) for v in terms.values())
    assert any(not np.array_equal(a, b) for a, b in zip(before, _weights(trainer.model)))
    expected = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}[precision]
    assert trainer.model.anatomy_encoder.compute_dtype == expected


def test_image_summaries_show_the_input_the_factors_and_both_masks(warm_trainer, monkeypatch):
    from support.helpers import logged_image_summaries

    logged = logged_image_summaries(warm_trainer, monkeypatch)
    assert sorted(logged) == ["anatomy_channels", "input", "predicted_masks", "reconstruction", "true_masks"]
    n, h, w = 2, *warm_trainer.arrays.validation_images.shape[1:3]
    assert logged["anatomy_channels"].shape == (n, h, w * warm_trainer.model.anatomy_channels, 1)
    assert logged["predicted_masks"].shape == logged["true_masks"].shape == (n, h, w, 3)
    assert all(0.0 <= v.min() and v.max() <= 1.0 for v in logged.values())


def test_engine_json_records_what_auto_chose_and_why():
    """config.yaml keeps ``auto``; engine.json (written by sdnet_tf.apps.train) says what it became."""
    from types import SimpleNamespace

    from sdnet_tf.apps.train import engine_choices
    from sdnet_tf.config import Config

    config = Config()
    plain = SimpleNamespace(xla=False, jit_compile=False, graph_rewriting=False, allocator_tuned=False,
                            fused_optimizer=True, fused_batchnorm=True)
    assert engine_choices(plain, config) == {"backend": "tensorflow", "xla": False, "xla_rule": "auto",
                                             "graph_rewriting": False, "allocator_tuned": False,
                                             "fused_optimizer": True, "fused_batchnorm": True,
                                             "precision": "float32"}
    distributed = SimpleNamespace(xla=True, jit_compile=False, graph_rewriting=True, allocator_tuned=False)
    assert engine_choices(distributed, config)["xla_rule"] == "off under tf.distribute"
    config.train.jit_compile = True
    tuned = SimpleNamespace(xla=True, jit_compile=True, graph_rewriting=True, allocator_tuned=True)
    assert engine_choices(tuned, config)["xla_rule"] == "train.jit_compile"
    config.train.backend = "jax"
    chosen = engine_choices(SimpleNamespace(), config)
    assert chosen["xla"] is True and chosen["xla_rule"] == "always (the JAX engine)" and chosen["graph_rewriting"] is None


@pytest.mark.parametrize("kind", ["adam", "adamax"])
def test_fused_adam_is_keras_adam_to_float_rounding(kind):
    """tf_engine.apply_adam (TensorFlow's ResourceApplyAdam / ResourceApplyAdaMax) against Keras'
    own apply: the same weights, moments and step counter after four steps of a decaying
    schedule (SDNet's inverse-time Adam; the priors' cosine Adamax), to within a few float32
    ulps (the kernels round in another order)."""
    import tensorflow as tf

    from sdnet_tf.config import Config
    from sdnet_tf.training.optimizers import make_optimizer
    from sdnet_tf.training.tf_engine import apply_adam, fused_adam_applies

    train = Config().train
    train.learning_rate, train.decay = 0.01, 0.1  # steps that move the weights, a rate that moves between them

    def optimizer():
        if kind == "adam":
            return make_optimizer(train)
        return keras.optimizers.Adamax(keras.optimizers.schedules.CosineDecay(0.01, 4, alpha=0.01), epsilon=1e-3)

    rng = np.random.default_rng(0)
    shapes = [(3, 3, 4, 8), (8,), (5,)]
    initial = [rng.standard_normal(s).astype("float32") for s in shapes]
    grads = [[rng.standard_normal(s).astype("float32") for s in shapes] for _ in range(4)]
    states = []
    for fused in (False, True):
        variables = [keras.Variable(x.copy()) for x in initial]
        opt = optimizer()
        opt.build(variables)
        assert fused_adam_applies(opt, variables)
        step = tf.function(lambda g: apply_adam(opt, g, variables) if fused else opt.apply(g, variables))
        for g in grads:
            step([tf.constant(x) for x in g])
        states.append([v.numpy() for v in variables] + [v.numpy() for v in opt.variables])
    keras_state, fused_state = states
    assert len(keras_state) == len(fused_state) == 3 + 1 + 2 * 3  # weights, iterations, the two moments
    moved = max(np.abs(a - b).max() for a, b in zip(keras_state[:3], initial))
    assert moved > 1e-3
    for ours, theirs in zip(fused_state, keras_state):
        np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-6)
    assert int(fused_state[3]) == 4


def test_fused_adam_leaves_what_it_does_not_cover_to_keras():
    from sdnet_tf.training.tf_engine import fused_adam_applies

    variables = [keras.Variable(np.zeros(3, "float32"))]
    assert fused_adam_applies(keras.optimizers.Adam(1e-3), variables)
    assert not fused_adam_applies(keras.optimizers.Adam(1e-3, amsgrad=True), variables)
    assert not fused_adam_applies(keras.optimizers.Adam(1e-3, clipnorm=1.0), variables)
    assert not fused_adam_applies(keras.optimizers.Adam(1e-3, weight_decay=1e-4), variables)
    assert not fused_adam_applies(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3)), variables)
    assert fused_adam_applies(keras.optimizers.Adamax(1e-3), variables)
    assert not fused_adam_applies(keras.optimizers.SGD(1e-3), variables)
    constrained = keras.layers.Dense(2, kernel_constraint=keras.constraints.NonNeg())
    constrained.build((None, 3))
    assert not fused_adam_applies(keras.optimizers.Adam(1e-3), constrained.trainable_variables)


def test_graph_flops_counts_a_convolution_forward_and_both_backward_products():
    """Golden count: a 3 x 3 convolution, 8 -> 16 channels on 32 x 32, is 2 * 32 * 32 * 16 * 9 * 8
    operations; its gradient adds the same again for the input and for the kernel (and the
    summed output adds 32 * 32 * 16 - 1)."""
    import tensorflow as tf

    from sdnet_tf.training.tf_engine import graph_flops

    kernel = tf.Variable(tf.random.normal((3, 3, 8, 16)))

    @tf.function
    def gradients(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(tf.nn.conv2d(x, kernel, 1, "SAME"))
        return tape.gradient(y, [x, kernel])

    conv = 2 * 32 * 32 * 16 * 9 * 8
    assert graph_flops(gradients.get_concrete_function(tf.zeros((1, 32, 32, 8))).graph) == 3 * conv + 32 * 32 * 16 - 1


def test_an_update_counts_about_three_forward_passes_and_runs_nothing(warm_trainer):
    from sdnet_tf.training.trainer import _step_inputs

    batch = warm_trainer.sampler.batches(0)
    before = _snapshot(warm_trainer.model)
    forward = warm_trainer.engine.predict_flops(batch["labelled_images"])  # anatomy encoder + segmentor
    update = warm_trainer.engine.step_flops(SDNET_SCHEDULE[0], *_step_inputs(SDNET_SCHEDULE[0], batch, None))
    # the supervised update runs the encoders, the decoder and the segmentor forward and backward
    assert 2 * forward < update < 12 * forward
    for name, values in _snapshot(warm_trainer.model).items():
        assert all(np.array_equal(a, b) for a, b in zip(values, before[name])), name


def _batchnorm_pass(layer, x, weights, compiled):
    """Output, gradients (input, gamma, beta) and moving statistics after one training-mode call."""
    import tensorflow as tf

    from sdnet_tf.training.tf_engine import fused_batchnorm

    def run(x):
        with tf.GradientTape() as tape, fused_batchnorm([layer] if compiled else []):
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
        return (y, *tape.gradient(loss, [x, layer.gamma, layer.beta]))

    outputs = tf.function(run, autograph=False)(tf.constant(x))
    return [np.asarray(tf.cast(o, tf.float32)) for o in outputs] + [layer.moving_mean.numpy(),
                                                                      layer.moving_variance.numpy()]


@pytest.mark.parametrize("shape, policy", [((4, 16, 16, 8), "float32"), ((2, 5, 3, 6), "float32"),
                                           ((4, 8, 8, 4), "mixed_bfloat16")])
def test_fused_batchnorm_is_keras_batchnorm_to_float_rounding(shape, policy):
    """tf_engine.fused_batchnorm (TensorFlow's FusedBatchNormV3) against Keras' own training-mode
    call: the normalised output, the gradients for the input, gamma and beta, and the moving
    mean and (biased) variance, to float32 rounding; under mixed_bfloat16 the output keeps the
    layer's compute dtype, and the layers are left with Keras' call afterwards."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3 + 1).astype("float32")
    weights = rng.standard_normal(shape).astype("float32")
    results = []
    for fused in (False, True):
        layer = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype=policy)
        layer.build(shape)
        layer.gamma.assign(np.linspace(0.5, 2.0, shape[-1]))
        layer.beta.assign(np.linspace(-1.0, 1.0, shape[-1]))
        results.append(_batchnorm_pass(layer, x, weights, compiled=fused))
        assert "call" not in vars(layer)
    tolerance = dict(rtol=1e-2, atol=2e-2) if policy != "float32" else dict(rtol=1e-5, atol=1e-5)
    for name, ours, theirs in zip(["y", "dx", "dgamma", "dbeta", "moving mean", "moving variance"], *results[::-1]):
        scale = max(1.0, float(np.abs(theirs).max()))
        np.testing.assert_allclose(ours / scale, theirs / scale, err_msg=name, **tolerance)
    assert np.abs(results[0][5] - 0.9).max() > 0.05  # the statistics moved


def test_fused_batchnorm_leaves_what_it_does_not_cover_to_keras():
    """Inference mode, a 2-D input (the modality encoder's dense BatchNorm) and a frozen layer
    keep Keras' ops: the traced graph has no FusedBatchNormV3 there, and one where it applies."""
    import tensorflow as tf

    from sdnet_tf.training.tf_engine import fused_batchnorm

    def op_types(layer, x, training):
        def run(x):
            with fused_batchnorm([layer]):
                return layer(x, training=training)
        graph = tf.function(run, autograph=False).get_concrete_function(tf.TensorSpec(x.shape)).graph
        return {op.type for op in graph.get_operations()}

    image = np.ones((2, 4, 4, 3), "float32")
    layer = keras.layers.BatchNormalization()
    layer.build(image.shape)
    assert "FusedBatchNormV3" in op_types(layer, image, True)
    assert "FusedBatchNormV3" not in op_types(layer, image, False)
    dense = keras.layers.BatchNormalization()
    dense.build((2, 3))
    assert "FusedBatchNormV3" not in op_types(dense, np.ones((2, 3), "float32"), True)
    layer.trainable = False
    assert "FusedBatchNormV3" not in op_types(layer, image, True)


# slow: two tiny trainers traced (about 28 s); the default run compares the fused BatchNorm with
# Keras' layer in training and inference, forward and backward (the tests above)
@pytest.mark.slow
def test_the_engine_s_fused_batchnorm_update_matches_keras_ops(tmp_path):
    """One iteration of all five SDNet updates with the fused BatchNorm and with Keras' ops,
    from the same weights and batches (train.fused_batchnorm true / false): every step's loss
    terms and the BatchNorm statistics agree to float32 rounding, the weights to within Adam's
    largest step (Adam moves a weight whose gradient is zero but for rounding, e.g. a bias
    before a BatchNorm, by up to the learning rate either way)."""
    from sdnet_tf.training.batchnorm import batchnorm_layers

    runs = []
    for fused in (False, True):
        config = small_config()
        config.train.fused_batchnorm = fused
        trainer = _trainer(tmp_path, config, name=f"fused-{fused}")
        assert trainer.engine.fused_batchnorm is fused
        terms = trainer.train_iteration()
        norms = batchnorm_layers(*trainer.model.networks().values())
        statistics = [np.concatenate([layer.moving_mean.numpy(), layer.moving_variance.numpy()]) for layer in norms]
        runs.append((terms, statistics, _snapshot(trainer.model), config.train.learning_rate))
    (keras_terms, keras_stats, keras_weights, lr), (terms, stats, weights, _) = runs
    assert len(stats) >= 10 and keras_terms.keys() == terms.keys()
    for step in terms:
        for term, value in terms[step].items():
            assert value == pytest.approx(keras_terms[step][term], rel=1e-4, abs=1e-5), f"{step}/{term}"
    for ours, theirs in zip(stats, keras_stats):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    for name in weights:
        for ours, theirs in zip(weights[name], keras_weights[name]):
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=3 * lr, err_msg=name)
