"""The backend-agnostic schedule: order, pool, early stopping, deterministic batches."""

import numpy as np
import pytest

from sdnet_tf.data.synthetic import synthetic_arrays
from sdnet_tf.training.schedule import SDNET_SCHEDULE, BatchSampler, EarlyStopping, FakePool, sdnet_schedule


def test_schedule_is_the_original_order():
    assert [s.name for s in SDNET_SCHEDULE] == [
        "supervised", "z_rec_labelled", "unsupervised", "z_rec_unlabelled", "discriminator"]
    assert SDNET_SCHEDULE[1].trains == ("modality_encoder", "decoder")
    assert SDNET_SCHEDULE[4].trains == ("discriminator",)
    assert {s.optimizer for s in SDNET_SCHEDULE} == {"supervised", "unsupervised", "z_regressor", "discriminator"}


def test_without_an_adversarial_term_there_is_no_discriminator_step():
    # the AdaIN + focal variant of M&Ms 2020: no loss reads the discriminator
    assert sdnet_schedule(10.0) == SDNET_SCHEDULE
    assert [s.name for s in sdnet_schedule(0.0)] == ["supervised", "z_rec_labelled", "unsupervised",
                                                     "z_rec_unlabelled"]
    # the unlabelled step's loss no longer reaches the segmentor, so it does not train it
    assert sdnet_schedule(0.0)[2].trains == ("anatomy_encoder", "modality_encoder", "decoder")
    # and the shipped AdaIN config trains by that schedule (its short run: test_learning_variants.py, slow)
    from sdnet_tf.config import load_config
    from sdnet_tf.training.engines import schedule

    assert schedule(load_config("sdnet-adain-acdc")) == sdnet_schedule(0.0)


def test_the_lv_volume_head_is_trained_by_the_supervised_step_only():
    steps = {s.name: s.trains for s in sdnet_schedule(10.0, lv_volume_head=True)}
    assert steps["supervised"][-1] == "lv_regressor"
    assert all("lv_regressor" not in trains for name, trains in steps.items() if name != "supervised")


def test_the_unlabelled_step_without_an_adversarial_term_leaves_the_discriminator_out():
    from support.helpers import SMALL
    from sdnet_tf.models import SDNet
    from sdnet_tf.training import objectives

    model = SDNet(**SMALL, decoder="adain", seed=0)
    model.build()
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1)).astype("float32")
    weights = {"kl": 0.01, "reconstruction": 1.0, "adversarial": 0.0}
    total, terms = objectives.unsupervised(model, images, weights)
    assert set(terms) == {"reconstruction", "kl"}
    assert float(total) == pytest.approx(float(terms["reconstruction"]) + 0.01 * float(terms["kl"]), rel=1e-6)


def test_pool_keeps_the_latest_50_and_samples_without_replacement():
    pool = FakePool(50)
    for i in range(20):
        pool.add(np.full((4, 1, 1, 1), i, np.float32))
    assert len(pool.items) == 50
    assert pool.items.min() == 20 - 50 // 4 - 1 + 0 or pool.items.min() >= 7  # latest 50 of 80
    np.testing.assert_array_equal(np.unique(pool.items), np.arange(7, 20))
    sample = pool.sample(4, np.random.default_rng(0))
    assert sample.shape == (4, 1, 1, 1)
    pool2 = FakePool(50)
    pool2.add(np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1))
    drawn = pool2.sample(4, np.random.default_rng(0))
    assert sorted(drawn.ravel().tolist()) == [0, 1, 2, 3]


def test_early_stopping_keras_semantics():
    stop = EarlyStopping(patience=2, min_delta=0.01)
    assert not stop.update(0.5)
    assert not stop.update(0.495)  # not an improvement by min_delta
    assert stop.update(0.494)
    stop = EarlyStopping(patience=2, min_delta=0.01)
    assert [stop.update(v) for v in (0.5, 0.48, 0.47, 0.46)] == [False, False, False, False]


def test_sampler_is_a_pure_function_of_the_iteration():
    arrays = synthetic_arrays(20, 4, 32, 0.25, seed=0)
    a = BatchSampler(arrays, 4, seed=1, nz=8)
    b = BatchSampler(arrays, 4, seed=1, nz=8)
    for it in (0, 5, 3):
        x, y = a.batches(it), b.batches(it)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(a.batches(0)["labelled_images"], a.batches(1)["labelled_images"])
    assert a.iterations_per_epoch() == 4  # ceil(max(5, 15) / 4)


def test_sampler_rotation_keeps_masks_one_hot_and_aligned():
    arrays = synthetic_arrays(8, 2, 32, 1.0, seed=0)
    batch = BatchSampler(arrays, 4, seed=2).batches(0)
    masks = batch["labelled_masks"]
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert masks.sum(-1).max() <= 1
    # a rotated disc stays over the bright (style 0) or dark (style 1) pixels it covered
    assert masks.sum() > 0


@pytest.mark.parametrize("epochs", [1, 3])
def test_each_labelled_image_is_seen_once_per_pass(epochs):
    arrays = synthetic_arrays(16, 2, 32, 0.5, seed=0)  # 8 labelled
    sampler = BatchSampler(arrays, 4, seed=0, augment=False)
    seen = []
    for it in range(2 * epochs):
        images = sampler.batches(it)["labelled_images"]
        seen.extend(images.reshape(4, -1)[:, :64].tobytes() for _ in [0])
    assert len(seen) == 2 * epochs
