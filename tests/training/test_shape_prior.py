"""Shape priors: the NVAE objective's pieces (warm-up, balancing, spectral norms), the guarded
engine, the shape loss (zero for a perfect prediction, growing with corruption, a frozen prior),
training a prior and a U-Net on a phantom cohort, resuming, loading and evaluating them."""

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from support.helpers import TINY_NVAE
from sdnet_tf import losses
from sdnet_tf.config import PriorConfig, SegmentationConfig
from sdnet_tf.data.masks import prior_one_hot
from sdnet_tf.models import NVAE, AnatomyEncoder
from sdnet_tf.models.acnn import ShapeAutoencoder
from sdnet_tf.inference import load_prior
from sdnet_tf.models.priors import variable_values
from sdnet_tf.training import prior_objectives
from sdnet_tf.training.guard import NonFiniteError
from sdnet_tf.training.prior_engine import StepEngine
from sdnet_tf.training.prior_trainer import estimate_omega, train_prior, train_unet

SPACING = 5.0  # 32 pixels of 5 mm hold the whole phantom heart


def heart(size=32, shift=0):
    """A hand-made valid label map: LV disc in a MYO ring, an RV crescent beside it."""
    rows, cols = np.mgrid[:size, :size]
    c = size // 2 + shift
    r = np.hypot(rows - c, cols - c)
    labels = np.zeros((size, size), np.uint8)
    rv = (np.hypot(rows - c, cols - c + 8) < 7) & (r >= 7)
    labels[rv] = 1
    labels[r < 7] = 2
    labels[r < 4.5] = 3
    return labels


def corrupt(labels, fraction, seed=0):
    rng = np.random.default_rng(seed)
    out = labels.copy()
    flip = rng.random(labels.shape) < fraction
    out[flip] = rng.integers(0, 4, flip.sum())
    return out


# ------------------------------------------------------------------ objective pieces
def test_kl_coefficient_warm_up():
    c = prior_objectives.kl_coefficient
    assert c(0, 10, warmup_epochs=30, const_steps=10) == 1e-4
    assert c(10, 10, warmup_epochs=30, const_steps=10) == 1e-4
    assert c(160, 10, warmup_epochs=30, const_steps=10) == pytest.approx(0.5)
    assert c(310, 10, warmup_epochs=30, const_steps=10) == 1.0
    assert c(10_000, 10, warmup_epochs=30, const_steps=10) == 1.0


def test_kl_balance_golden_values():
    kl = np.array([[1.0, 3.0, 10.0], [3.0, 5.0, 30.0]], np.float32)
    alpha = np.array([1.0, 2.0, 2.0])
    c = kl.mean(0) + 0.01
    c = c / alpha * c.sum()
    expected = c / c.mean()
    got = np.asarray(losses.kl_balance(kl, alpha))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got.mean() == pytest.approx(1.0)
    assert got[2] > got[1]  # more KL, more weight


def test_group_factors_of_default_n():
    model = NVAE()
    assert model.group_alpha() == [1, 2, 2, 4, 4, 4, 4]
    assert model.group_betas([8, 9, 10]) == [8, 9, 9, 10, 10, 10, 10]
    with pytest.raises(ValueError, match="one per scale"):
        model.group_betas([8, 9])


def test_spectral_norm_power_iteration_matches_svd():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 4, 5)).astype("float32")
    u = rng.normal(size=36).astype("float32")
    sigmas, vectors = losses.spectral_norms([kernel], [u], iterations=50)
    largest = np.linalg.svd(kernel.reshape(36, 5), compute_uv=False)[0]
    assert float(sigmas[0]) == pytest.approx(largest, rel=1e-4)
    assert np.linalg.norm(np.asarray(vectors[0])) == pytest.approx(1.0, rel=1e-5)


def test_nvae_objective_without_balance_is_the_weighted_elbo():
    model = NVAE(**TINY_NVAE, seed=3).build_default()
    masks = prior_one_hot(np.stack([heart(), heart(shift=2)]))
    betas = [1.0, 2.0, 3.0, 3.0]
    keras.utils.set_random_seed(5)
    total, terms = prior_objectives.nvae(model, masks, 0.5, betas, model.group_alpha(), balance=False)
    per_group = np.array([float(terms[f"kl_group{i}"]) for i in range(4)])
    # the per-sample KL sums are averaged over the batch, so the weighted mean is the weighted sum of means
    assert float(terms["kl_weighted"]) == pytest.approx(float(per_group @ np.array(betas)), rel=1e-5)
    assert float(total) == pytest.approx(float(terms["reconstruction"]) + 0.5 * float(terms["kl_weighted"]),
                                         rel=1e-5)


@pytest.mark.parametrize("official", [False, True], ids=["thesis", "official-nvae"])
def test_kl_balancing_weighs_the_groups_kl_before_the_scale_weights(official):
    """The thesis' ``_balance_kl``: c_i from each group's batch-mean KL (not the beta-weighted
    KL), normalised to average 1; official NVAE also divides by the group's size factor."""
    model = NVAE(**TINY_NVAE, seed=3).build_default()
    masks = prior_one_hot(np.stack([heart(), heart(shift=2)]))
    betas = [1.0, 2.0, 3.0, 3.0]
    alpha = np.array(model.group_alpha() if official else [1.0] * 4)
    keras.utils.set_random_seed(5)
    total, terms = prior_objectives.nvae(model, masks, 0.5, betas, alpha, balance=True)
    per_group = np.array([float(terms[f"kl_group{i}"]) for i in range(4)])
    c = (per_group + 0.01) / alpha
    c = c / c.mean()
    assert float(terms["kl_weighted"]) == pytest.approx(float(np.sum(np.array(betas) * c * per_group)), rel=1e-4)
    assert float(total) == pytest.approx(float(terms["reconstruction"]) + 0.5 * float(terms["kl_weighted"]),
                                         rel=1e-5)


# ------------------------------------------------------------------ guarded engine
def test_engine_skips_or_stops_on_non_finite_steps():
    layer = keras.layers.Dense(1, use_bias=False)
    layer.build((None, 2))

    def loss_fn(x):
        value = keras.ops.sum(layer(x))
        return value, {"value": value}

    engine = StepEngine(layer.trainable_variables, loss_fn, keras.optimizers.SGD(0.1), max_nonfinite=2)
    before = np.asarray(layer.kernel).copy()
    out = engine.step(np.array([[np.nan, 1.0]], np.float32))
    assert out["skipped"] == 1.0 and engine.skipped == 1
    np.testing.assert_array_equal(np.asarray(layer.kernel), before)
    assert engine.step(np.ones((1, 2), np.float32))["skipped"] == 0.0
    assert not np.array_equal(np.asarray(layer.kernel), before)
    engine.step(np.array([[np.inf, 1.0]], np.float32))
    with pytest.raises(NonFiniteError, match="2 consecutive"):
        engine.step(np.array([[np.inf, 1.0]], np.float32))
    strict = StepEngine(layer.trainable_variables, loss_fn, keras.optimizers.SGD(0.1), nonfinite="stop")
    with pytest.raises(NonFiniteError, match="learning_rate"):
        strict.step(np.array([[np.nan, 1.0]], np.float32))


# ------------------------------------------------------------------ shape loss
def test_to_prior_masks_reorders_channels_and_crops():
    labels = np.zeros((1, 8, 8), np.uint8)
    labels[0, 3, 3], labels[0, 3, 4], labels[0, 4, 4] = 1, 2, 3
    foreground = np.stack([labels == 2, labels == 3, labels == 1], -1).astype("float32")  # SDNet's [MYO, LV, RV]
    full = np.asarray(losses.to_prior_masks(foreground))
    np.testing.assert_array_equal(full, prior_one_hot(labels))
    cropped = np.asarray(losses.to_prior_masks(foreground, 4))
    np.testing.assert_array_equal(cropped, prior_one_hot(labels)[:, 2:6, 2:6])
    with pytest.raises(ValueError, match="cannot read"):
        losses.to_prior_masks(foreground, 16)


def _disc_labels(size, spacing, radius_mm=20.0, offset_mm=(6.0, -4.0)):
    """A label-3 disc of ``radius_mm`` whose centre is ``offset_mm`` (rows, columns) from the
    image centre, in a ``size`` x ``size`` frame of ``spacing`` mm per pixel."""
    centres = (np.arange(size) + 0.5 - size / 2) * spacing
    rows, cols = np.meshgrid(centres, centres, indexing="ij")
    inside = (rows - offset_mm[0]) ** 2 + (cols - offset_mm[1]) ** 2 <= radius_mm ** 2
    return np.where(inside, 3, 0).astype(np.uint8)[None]


def test_prior_window_resamples_masks_to_the_prior_spacing_about_the_image_centre():
    # a network at 2.0 mm per pixel (64 px, 128 mm), a prior at 1.37 mm (64 px, 87.7 mm)
    network = prior_one_hot(_disc_labels(64, 2.0))
    framed = np.asarray(losses.prior_window(network, 64, 2.0 / 1.37))
    assert framed.shape == (1, 64, 64, 4)
    np.testing.assert_allclose(framed.sum(-1), 1.0, atol=1e-5)  # still a distribution per pixel
    expected = _disc_labels(64, 1.37)[0] == 3
    got = framed[0].argmax(-1) == 3
    dice = 2 * (got & expected).sum() / (got.sum() + expected.sum())
    assert dice > 0.95, dice
    centroid = np.argwhere(got).mean(0) - np.argwhere(expected).mean(0)
    assert np.abs(centroid).max() <= 0.25, centroid  # the window centred exactly (93.4 px taken as 94)
    # the same spacing is the plain centre crop, bit for bit
    np.testing.assert_array_equal(np.asarray(losses.prior_window(network, 32)), network[:, 16:48, 16:48])
    with pytest.raises(ValueError, match="cannot read"):
        losses.prior_window(network, 64, 0.9)  # 58 pixels after resampling


def test_resampled_sizes_keep_the_window_centred_and_shrinking_reaches_every_pixel():
    from sdnet_tf.losses import resampled_size

    # the nearest side of the window's parity: 128 px at 2.0 mm is 186.9 px at 1.37 mm -> 186
    assert [resampled_size(128, 2.0 / 1.37, 128), resampled_size(128, 2.0 / 3.0, 64),
            resampled_size(96, 2.0 / 3.0, 64), resampled_size(64, 1.0, 64)] == [186, 86, 64, 64]
    # a network three times finer than the prior: with antialiasing every pixel of its masks
    # reaches the prior's window (bilinear alone reads one pixel in nine)
    import tensorflow as tf

    masks = tf.Variable(np.random.default_rng(0).uniform(size=(1, 192, 192, 4)).astype("float32"))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(losses.prior_window(masks, 64, 1.0 / 3.0))
    reached = np.abs(np.asarray(tape.gradient(total, masks))).sum(-1)[0] > 0
    assert reached.mean() > 0.95, reached.mean()


def test_sdnet_shape_loss_reads_the_prior_frame_scale():
    from sdnet_tf.training import objectives

    prior = NVAE(**TINY_NVAE, seed=1).build_default()
    prior.trainable = False
    labels = np.stack([heart(size=64, shift=s) for s in range(2)])
    masks = np.stack([labels == 2, labels == 3, labels == 1], -1).astype("float32")  # SDNet's [MYO, LV, RV]
    predicted = np.clip(masks + np.random.default_rng(0).uniform(0, 0.3, masks.shape), 0, 1).astype("float32") / 1.3
    same = float(objectives.shape(prior, masks, predicted))
    assert same == pytest.approx(float(losses.shape_code_loss(
        prior, losses.to_prior_masks(masks)[:, 16:48, 16:48], losses.to_prior_masks(predicted)[:, 16:48, 16:48])))
    prior.frame_scale = 0.5  # the network's 64 pixels are the prior's 32
    halved = float(objectives.shape(prior, masks, predicted))
    framed = [losses.prior_window(losses.to_prior_masks(m), 32, 0.5) for m in (masks, predicted)]
    assert halved == pytest.approx(float(losses.shape_code_loss(prior, *framed)), rel=1e-5)
    assert halved != pytest.approx(same)


@pytest.mark.parametrize("make", [lambda: NVAE(**TINY_NVAE, seed=1),
                                  lambda: ShapeAutoencoder(input_size=32, filters=4, levels=2, code_size=16, seed=1)],
                         ids=["nvae", "acnn"])
def test_shape_loss_is_zero_for_a_perfect_prediction_and_grows_with_corruption(make):
    prior = make().build_default()
    prior.trainable = False
    truth = prior_one_hot(np.stack([heart(), heart(shift=1)]))
    perfect = float(losses.shape_code_loss(prior, truth, truth))
    assert perfect == 0.0
    values = [float(losses.shape_code_loss(prior, truth, prior_one_hot(np.stack([corrupt(heart(), f, 1),
                                                                                  corrupt(heart(shift=1), f, 2)]))))
              for f in (0.05, 0.2, 0.6)]
    print("shape loss at 5%, 20%, 60% corrupted pixels:", values)
    assert 0.0 < values[0] < values[1] < values[2]


def _tiny_prior_and_unet():
    prior = NVAE(**TINY_NVAE, seed=1).build_default()
    prior.trainable = False
    unet = AnatomyEncoder(32, 1, channels=4, filters=4, depth=2, binarise=False).build_default()
    return prior, unet


def test_unet_steps_with_the_shape_loss_leave_the_prior_unchanged():
    prior, unet = _tiny_prior_and_unet()
    before = variable_values(prior)
    unet_before = variable_values(unet)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 32, 32, 1)).astype("float32")
    masks = prior_one_hot(np.stack([heart(shift=s) for s in range(4)]))

    def loss_fn(x, y):
        return prior_objectives.segmentation(unet, x, y, alpha=1.0, omega=10.0, prior=prior)

    engine = StepEngine(unet.trainable_variables, loss_fn, keras.optimizers.Adam(1e-2))
    for _ in range(3):
        terms = engine.step(images, masks)
    assert terms["shape"] > 0 and terms["total"] == pytest.approx(terms["cross_entropy"] + 10 * terms["shape"],
                                                                     rel=1e-4)
    after = variable_values(prior)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    changed = variable_values(unet)
    assert any(not np.array_equal(unet_before[k], changed[k]) for k in unet_before)


def _sdnet_with_a_tiny_prior(config):
    """(SDNet, its engine, a frozen tiny NVAE) for ``config`` (``support.helpers.small_config``),
    the prior handed to the engine with omega 3."""
    from sdnet_tf.models import SDNet
    from sdnet_tf.training.engines import sdnet_engine

    model = SDNet(**{k: getattr(config.model, k) for k in ("input_size", "unet_filters", "unet_depth",
                                                            "segmentor_filters", "discriminator_filters")},
                  seed=1)
    model.build()
    engine = sdnet_engine(model, config)
    prior = NVAE(**TINY_NVAE, seed=1).build_default()
    prior.trainable = False
    engine.use_shape_prior(prior, 3.0)
    return model, engine, prior


def test_sdnet_supervised_step_with_the_shape_loss_leaves_the_prior_unchanged():
    from support.helpers import small_config
    from sdnet_tf.training.schedule import SDNET_SCHEDULE

    model, engine, prior = _sdnet_with_a_tiny_prior(small_config())
    before = variable_values(prior)
    labels = np.stack([heart(shift=s) for s in range(4)])
    masks = np.stack([labels == 2, labels == 3, labels == 1], -1).astype("float32")
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype("float32")
    sizes = engine.shape_sizes(images, masks)
    assert sizes["shape"] > 0 and sizes["dice"] > 0
    step = next(s for s in SDNET_SCHEDULE if s.objective == "supervised")
    terms = engine.run_step(step, images, masks)
    assert terms["shape"] > 0
    after = variable_values(prior)
    assert all(np.array_equal(before[k], after[k]) for k in before)


class _ReconstructsAs:
    """A stand-in prior whose reconstruction of any mask is a fixed label map (as logits)."""

    def __init__(self, labels):
        self.input_size = labels.shape[1]
        self.frame_scale = 1.0
        self.logits = keras.ops.convert_to_tensor(10.0 * prior_one_hot(labels))

    def reconstruct(self, masks, training=False):
        return self.logits


def _sdnet_masks(labels):
    return np.stack([labels == 2, labels == 3, labels == 1], -1).astype("float32")  # [MYO, LV, RV]


def test_shape_projection_is_the_dice_loss_against_the_prior_reconstruction_without_its_gradient():
    import tensorflow as tf

    from sdnet_tf.training import objectives

    clean = np.stack([heart(), heart(shift=1)])
    prior = _ReconstructsAs(clean)
    assert float(objectives.shape_projection(prior, _sdnet_masks(clean))) == pytest.approx(0.0, abs=1e-6)
    holed = clean.copy()
    holed[:, 14:18, 14:18] = 0  # a hole in the LV blood pool: the reconstruction has none
    predicted = 0.9 * _sdnet_masks(holed) + 0.1 / 4
    # golden value: pooled soft Dice over the foreground channels, per image, averaged
    target = prior_one_hot(clean)[..., 1:]
    ours = keras.ops.convert_to_numpy(losses.to_prior_masks(predicted))[..., 1:]
    expected = 1.0 - np.mean([losses.dice_coefficient(ours[i:i + 1], target[i:i + 1], mode="pooled")
                              for i in range(2)])
    value = float(objectives.shape_projection(prior, predicted))
    assert value == pytest.approx(float(expected), rel=1e-5) and value > 0.05
    variable = tf.Variable(predicted.astype("float32"))
    with tf.GradientTape() as tape:
        loss = objectives.shape_projection(prior, variable)
    gradient = tape.gradient(loss, variable).numpy()
    lv = 1  # filling the hole lowers the loss: the LV channel's gradient there is negative
    assert gradient[:, 15, 15, lv].max() < 0


def test_the_label_free_shape_term_trains_the_segmentor_on_unlabelled_images_and_leaves_the_prior():
    from support.helpers import small_config

    config = small_config()
    config.loss.shape_prior, config.loss.shape_projection = "prior-run", 2.0
    model, engine, prior = _sdnet_with_a_tiny_prior(config)
    before, segmentor = variable_values(prior), variable_values(model.segmentor)
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype("float32")
    step = next(s for s in engine.schedule if s.objective == "unsupervised")
    terms = engine.run_step(step, images)
    assert 0 < terms["shape_projection"] <= 1
    assert terms["total"] == pytest.approx(terms["reconstruction"] + 0.01 * terms["kl"] + 10 * terms["adversarial"]
                                           + 2.0 * terms["shape_projection"], rel=1e-4)
    after = variable_values(prior)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    moved = variable_values(model.segmentor)
    assert any(not np.array_equal(segmentor[k], moved[k]) for k in segmentor)


def test_without_the_adversarial_term_the_label_free_shape_term_still_trains_the_segmentor():
    from sdnet_tf.training.schedule import sdnet_schedule

    def unlabelled_trains(**kwargs):
        return next(s for s in sdnet_schedule(**kwargs) if s.objective == "unsupervised").trains

    assert "segmentor" not in unlabelled_trains(adversarial=0.0)
    assert "segmentor" in unlabelled_trains(adversarial=0.0, shape_projection=1.0)
    assert unlabelled_trains(adversarial=10.0, shape_projection=1.0) == unlabelled_trains(adversarial=10.0)


def test_the_label_free_shape_term_without_a_prior_is_a_config_error(tmp_path):
    from support.helpers import small_config
    from sdnet_tf.apps.train import train_run
    from sdnet_tf.config import ConfigError

    config = small_config()
    config.loss.shape_projection = 1.0
    with pytest.raises(ConfigError, match="loss.shape_projection needs loss.shape_prior"):
        train_run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_prior_table_has_as_many_cells_as_columns_with_or_without_nvae_samples():
    # an ACNN alone has no sampling temperatures: its table had a nameless empty column
    from sdnet_tf.apps.shape_eval import table

    dice = {"RV": 0.8, "MYO": 0.7, "LV": 0.9, "mean": 0.8}
    acnn = {"kind": "acnn", "reconstruction_dice_slices": dice, "reconstruction_dice_frames": dice,
            "pathology": {}, "valid_reconstructions": 1.0, "frechet_shape_distance_training_vs_test": 20.9}
    nvae = dict(acnn, kind="nvae", samples={"1.0": {"valid": 0.5, "frechet_shape_distance": 3.0}})
    with_frds = dict(nvae, frds_training_vs_test=4.5,
                     samples={"1.0": {"valid": 0.5, "frechet_shape_distance": 3.0, "frds": 61.25}})
    for results in ([acnn], [nvae, acnn], [with_frds, nvae, acnn]):
        lines = table(results).strip().splitlines()
        assert len({line.count("|") for line in lines}) == 1, lines
        assert "|  |" not in lines[0], lines[0]
    assert "valid samples T=1.0 (FSD)" in table([nvae, acnn])
    frds_table = table([with_frds, acnn])
    assert "valid samples T=1.0 (FSD, FRDS)" in frds_table and "50.0% (3.0, 61.2)" in frds_table
    assert "| 4.5 |" in frds_table  # FRDS of the training against the test masks


def test_estimate_omega_is_the_ratio_of_mean_terms():
    batches = [(1,), (2,)]
    sizes = {1: {"cross_entropy": 1.0, "shape": 0.01}, 2: {"cross_entropy": 3.0, "shape": 0.03}}
    assert estimate_omega(lambda b: sizes[b], batches) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="shape_omega"):
        estimate_omega(lambda b: {"cross_entropy": 1.0, "shape": 0.0}, batches)


# ------------------------------------------------------------------ training on a phantom
@pytest.fixture(scope="module")
def cohort(phantom_cohort_8):
    return phantom_cohort_8


def _prior_config(cohort, tmp_path, kind="nvae", **train):
    config = PriorConfig()
    config.model.kind = kind
    for key, value in TINY_NVAE.items():
        setattr(config.model, key, list(value) if isinstance(value, tuple) else value)
    config.model.filters, config.model.levels, config.model.code_size = 4, 2, 16
    config.train.batch_size = 4
    config.train.epochs = 1
    config.train.steps_per_epoch = 3
    config.train.validation_samples = 8
    config.train.log_every = 1
    for key, value in train.items():
        setattr(config.train, key, value)
    config.data.path = str(cohort)
    config.data.spacing = SPACING
    config.data.cache_dir = str(tmp_path / "cache")
    return config


# the NVAE case traces the NVAE's update twice (about 30 s); the resume mechanics are the
# same for both kinds, so the default suite keeps the ACNN case
@pytest.mark.parametrize("kind", [pytest.param("nvae", marks=pytest.mark.slow), "acnn"])
def test_train_prior_resumes_and_its_best_weights_reload(cohort, tmp_path, kind):
    config = _prior_config(cohort, tmp_path, kind, spectral_weight=0.1 if kind == "nvae" else 0.0)
    run = tmp_path / "run"
    first = train_prior(config, run, progress=False)
    assert first["epochs"] == 1 and first["steps"] == 3
    config.train.epochs = 2
    second = train_prior(config, run, progress=False)
    assert second["epochs"] == 2 and second["steps"] == 6
    assert "resumed" in (run / "train.log").read_text()
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 3 and history[0].startswith("epoch,step")
    if kind == "nvae":
        assert "train_spectral" in history[0] and "kl_coefficient" in history[0]
    # the saved best weights reproduce the validation Dice recorded when they were saved
    best = json.loads((run / "best.json").read_text())
    model, loaded = load_prior(run)
    assert not model.trainable and loaded.model.kind == kind
    from sdnet_tf.metrics.shape import reconstruction_dice
    from sdnet_tf.data.sources import mask_sets

    validation = mask_sets(loaded, progress=False)[0]["validation"]
    predicted = np.argmax(np.asarray(model.reconstruct(prior_one_hot(validation.labels))), -1)
    assert reconstruction_dice(predicted, validation.labels)["mean"] == pytest.approx(best["dice_mean"], abs=1e-6,
                                                                                       nan_ok=True)
    with pytest.raises(FileExistsError):
        train_prior(config, run, resume=False, progress=False)


def test_a_u_net_stopped_inside_an_epoch_by_max_steps_goes_on_as_an_uninterrupted_run(cohort, tmp_path):
    # --max-steps 2 of a 4-step epoch left a checkpoint at step 2 that no later run could resume
    # ("cannot resume in the middle of epoch 1"); the epoch's random state is now checkpointed
    config = SegmentationConfig()
    config.model.input_size, config.model.filters, config.model.depth = 32, 4, 2
    config.train.batch_size, config.train.epochs, config.train.steps_per_epoch = 4, 1, 4
    config.data.path, config.data.spacing, config.data.cache_dir = str(cohort), SPACING, str(tmp_path / "cache")
    train_unet(config, tmp_path / "whole", progress=False)
    config.train.max_steps = 2
    assert train_unet(config, tmp_path / "stopped", progress=False)["steps"] == 2
    config.train.max_steps = 0
    assert train_unet(config, tmp_path / "stopped", progress=False)["steps"] == 4
    assert "resumed unet" in (tmp_path / "stopped" / "train.log").read_text()
    with np.load(tmp_path / "whole" / "checkpoints" / "ckpt-4.npz") as a, \
            np.load(tmp_path / "stopped" / "checkpoints" / "ckpt-4.npz") as b:
        names = [k for k in a.files if k.startswith("variables/")]
        assert names and all(np.array_equal(a[k], b[k]) for k in names)


def test_prior_validation_with_recomputed_batchnorm_statistics(cohort, tmp_path):
    # train.batchnorm_recalibration = 2: the kept weights carry the statistics of 2 batches of
    # training masks drawn by (seed, step), reconstructed in training mode, not the moving averages
    from sdnet_tf.data.sources import mask_sets
    from sdnet_tf.training.batchnorm import batchnorm_layers, recalibrate, recalibration_batches

    config = _prior_config(cohort, tmp_path, "acnn", batchnorm_recalibration=2)
    train_prior(config, tmp_path / "run", progress=False)
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    kept, _ = load_prior(tmp_path / "run")
    again, _ = load_prior(tmp_path / "run", freeze=False)  # a frozen BatchNorm ignores training=True
    layers = batchnorm_layers(again)
    assert layers
    for layer in layers:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape))
    labels = mask_sets(config, progress=False)[0]["training"].labels
    batches = recalibration_batches(labels, 2, 16, np.random.default_rng([config.train.seed, best["step"], 2]))
    recalibrate(lambda x: again.reconstruct(prior_one_hot(x), training=True), layers, batches)
    for a, b in zip(batchnorm_layers(kept), layers):
        np.testing.assert_allclose(np.asarray(a.moving_mean), np.asarray(b.moving_mean), rtol=1e-5, atol=1e-6)
    unrecalibrated = _prior_config(cohort, tmp_path, "acnn")
    train_prior(unrecalibrated, tmp_path / "plain", progress=False)
    plain, _ = load_prior(tmp_path / "plain")
    assert any(not np.allclose(np.asarray(a.moving_mean), np.asarray(b.moving_mean))
               for a, b in zip(batchnorm_layers(plain), layers))


# slow: a prior and a U-Net trained and evaluated (about 30 s); omega's estimate and the shape
# loss's step stay in the default suite (test_estimate_omega_is_the_ratio_of_mean_terms,
# test_sdnet_supervised_step_with_the_shape_loss_leaves_the_prior_unchanged)
@pytest.mark.slow
def test_train_unet_with_shape_loss_estimates_omega_and_evaluates(cohort, tmp_path):
    from sdnet_tf.apps.shape_eval import evaluate_run, table

    prior_run = tmp_path / "prior"
    train_prior(_prior_config(cohort, tmp_path), prior_run, progress=False)
    config = SegmentationConfig()
    config.model.input_size, config.model.filters, config.model.depth = 32, 4, 2
    config.train.batch_size, config.train.epochs, config.train.steps_per_epoch = 4, 1, 2
    config.loss.shape_prior, config.loss.omega_batches = str(prior_run), 2
    config.data.path, config.data.spacing, config.data.cache_dir = str(cohort), SPACING, str(tmp_path / "cache")
    summary = train_unet(config, tmp_path / "unet", progress=False)
    omega = json.loads((tmp_path / "unet" / "omega.json").read_text())["omega"]
    assert summary["omega"] == omega > 0
    out = tmp_path / "eval"
    unet = evaluate_run(tmp_path / "unet", out)
    from sdnet_tf.training.embedder_trainer import frds_function

    frds = frds_function({"epochs": 1, "batch_size": 16, "width": 8}, progress=False)
    prior = evaluate_run(prior_run, out, samples=100, frds=frds)
    assert set(unet["dice_slices"]) == {"RV", "MYO", "LV", "mean"} and 0 <= unet["valid_slices"] <= 1
    assert set(prior["samples"]) == {"1", "0.8", "0.7", "0.5"}
    assert all(s["count"] == 100 and 0 <= s["valid"] <= 1 and s["frechet_shape_distance"] >= 0 and s["frds"] >= 0
               for s in prior["samples"].values())
    assert prior["frds_embedder"]["steps"] > 0 and prior["frds_training_vs_test"] >= 0
    assert list((tmp_path / "cache" / "frds").glob("frds-*.npz"))  # cached beside the preprocessed cohort
    assert (out / "prior-samples.png").is_file() and prior["sample_figure"] == str(out / "prior-samples.png")
    assert prior["valid_references"] == 1.0  # phantom references are anatomically valid
    assert prior["pixel_mm"] == {"test_median": SPACING, "test_range": [SPACING, SPACING], "samples": SPACING}
    assert "skipped" in prior["pathology"]  # 8 phantom patients: too few for 10 folds, said so
    text = table([prior, unet])
    assert "| nvae |" in text and "| U-Net + shape loss |" in text
    assert "valid samples T=0.5 (FSD, FRDS)" in text and "valid samples T=0.8 (FSD, FRDS)" in text
    # what sdnet-tf shape-eval runs: every readable run, the table and curves, the failures named
    from sdnet_tf.apps.shape_eval import evaluate_runs

    reported = []
    results, failed = evaluate_runs([tmp_path / "unet", tmp_path / "missing"], tmp_path / "eval2",
                                    report=lambda run, error: reported.append((run, error is None)))
    assert len(results) == 1 and failed == [tmp_path / "missing"]
    assert reported == [(tmp_path / "unet", True), (tmp_path / "missing", False)]
    assert "| U-Net + shape loss |" in (tmp_path / "eval2" / "table.md").read_text()
    assert (tmp_path / "eval2" / "learning_curves.png").is_file()
    # a prior trained at another spacing is refused
    config.data.spacing = 3.0
    with pytest.raises(Exception, match="mm per pixel"):
        train_unet(config, tmp_path / "unet2", progress=False)


def test_shape_eval_measures_a_heart_framed_prior_at_each_frames_pixel_size(cohort, tmp_path, monkeypatch):
    # heart-framed masks are magnified, each frame by its own factor: checks in mm (concavity
    # depth) and descriptors (area, perimeter) must read each test slice at its frame's pixel size
    from sdnet_tf.apps import shape_eval
    from sdnet_tf.data.masks import load_mask_sets

    config = _prior_config(cohort, tmp_path, "acnn", spectral_weight=0.0, steps_per_epoch=1)
    config.data.framing = "heart"
    train_prior(config, tmp_path / "run", progress=False)
    measured, compared = [], []
    real_valid_fraction, real_fsd = shape_eval.valid_fraction, shape_eval.frechet_shape_distance
    monkeypatch.setattr(shape_eval, "valid_fraction",
                        lambda labels, spacing: measured.append(np.asarray(spacing)) or real_valid_fraction(labels,
                                                                                                           spacing))
    monkeypatch.setattr(shape_eval, "frechet_shape_distance",
                        lambda real, other, spacing, other_spacing: compared.append((spacing, other_spacing))
                        or real_fsd(real, other, spacing, other_spacing))
    result = shape_eval.evaluate_prior(tmp_path / "run", progress=False)
    sets, _, _ = load_mask_sets(cohort, 32, SPACING, cache_dir=tmp_path / "cache", progress=False, framing="heart")
    pixel, training = sets["test"].pixel_mm, sets["training"].pixel_mm
    assert len(np.unique(pixel)) > 1 and np.all(pixel < SPACING)  # a size per frame, magnified
    assert len(measured) == 2  # the reconstructions and the references
    for spacing in measured:
        np.testing.assert_array_equal(spacing, np.stack([pixel, pixel], axis=1))
    (real, other), = compared  # the training masks against the test masks, each at its own sizes
    np.testing.assert_array_equal(real, np.stack([pixel, pixel], axis=1))
    np.testing.assert_array_equal(other, np.stack([training, training], axis=1))
    assert result["pixel_mm"]["test_range"] == [round(float(pixel.min()), 4), round(float(pixel.max()), 4)]
    assert result["pixel_mm"]["samples"] == round(float(np.median(sets["training"].pixel_mm)), 4)


def test_shape_eval_frds_epochs_without_frds_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["shape-eval", str(tmp_path), "-o", str(tmp_path / "out"), "--frds-epochs", "3"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--frds-epochs goes with --frds" in result.output


def test_cli_train_prior_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["train", "nvae", "--data", str(tmp_path / "missing"), "-o", str(tmp_path / "r")])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = runner.invoke(main, ["train", "nvae", "--shape-prior", "x", "--data", "phantom"])
    assert result.exit_code == 1 and "--shape-prior is for" in result.output
    result = runner.invoke(main, ["shape-eval", str(tmp_path), "-o", str(tmp_path / "e")])
    assert result.exit_code == 1 and "no config.yaml" in result.output
    result = runner.invoke(main, ["train", "synthetic", "-c", "synthetic-quick", "--shape-prior", str(tmp_path / "none"),
                                  "-o", str(tmp_path / "sdnet"), "--quiet"])
    assert result.exit_code == 1 and "no config.yaml" in result.output, result.output


@pytest.mark.slow
def test_tiny_prior_learns_phantom_masks(cohort, tmp_path):
    """A small NVAE (32 x 32 masks, 16 stem channels, one group per scale, KL weight 0.05)
    trained for 1,500 steps on phantom masks reconstructs held-out masks with per-slice Dice
    >= 0.9 (mean of RV, MYO, LV)."""
    config = _prior_config(cohort, tmp_path, epochs=60, steps_per_epoch=25, learning_rate=1e-2,
                           min_learning_rate=1e-3, kl_warmup_epochs=10, kl_betas=[0.05, 0.05, 0.05],
                           validation_samples=0, warmup_epochs=1)
    config.model.stem_channels, config.model.groups_per_scale, config.model.latent_channels = 16, [1, 1, 1], 8
    config.data.augment = False
    summary = train_prior(config, tmp_path / "tiny", progress=False)
    print("small NVAE best validation:", summary["best"])
    assert summary["best"]["dice_mean"] >= 0.9


def test_evaluation_of_a_run_still_training_matches_its_best_record(tmp_path, monkeypatch):
    """A new best epoch saved while a run is evaluated makes the evaluation start again, so
    the figures and the ``best`` record written with them are of the same weights."""
    from sdnet_tf.apps import shape_eval
    from sdnet_tf.atomic import write_json

    run = tmp_path / "nvae-run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {kind: nvae}\n")

    def save_best(epoch):  # as RunFiles.save_best: weights, then the record, each replaced atomically
        np.savez(run / "tmp.npz", w=np.full(3, epoch))
        (run / "tmp.npz").replace(run / "best.npz")
        write_json(run / "best.json", {"epoch": epoch})

    save_best(1)
    evaluated = []

    def fake_evaluate(run_dir, samples, *args, **kwargs):
        with np.load(run_dir / "best.npz") as data:
            evaluated.append(int(data["w"][0]))
        if len(evaluated) == 1:
            save_best(2)  # the training loop finishes a better epoch meanwhile
        return {"weights_epoch": evaluated[-1]}

    monkeypatch.setattr(shape_eval, "evaluate_prior", fake_evaluate)
    result = shape_eval.evaluate_run(run, tmp_path / "out")
    assert evaluated == [1, 2]
    assert result["weights_epoch"] == result["best"]["epoch"] == 2
    assert json.loads((tmp_path / "out" / "nvae-run.json").read_text())["best"]["epoch"] == 2

    def always_changing(run_dir, samples, *args, **kwargs):
        save_best(len(evaluated) + 10)
        evaluated.append(0)
        return {}

    monkeypatch.setattr(shape_eval, "evaluate_prior", always_changing)
    with pytest.raises(RuntimeError, match="changed during each of 3 evaluations"):
        shape_eval.evaluate_run(run, tmp_path / "out")


def test_unet_at_a_labelled_fraction_uses_sdnet_s_subjects_and_sdnet_s_evaluation(cohort, tmp_path):
    # the baseline of the label-fraction table: the same labelled subjects as SDNet at that
    # fraction, predicted and scored on the original grids by the same code as SDNet
    from sdnet_tf.data.acdc import find_patients, labelled_subset, patient_splits
    from sdnet_tf.apps.evaluation import evaluate_run as evaluate_sdnet_style

    config = SegmentationConfig()
    config.model.input_size, config.model.filters, config.model.depth = 32, 4, 2
    config.train.batch_size, config.train.epochs, config.train.steps_per_epoch = 4, 1, 2
    config.data.path, config.data.spacing, config.data.cache_dir = str(cohort), SPACING, str(tmp_path / "cache")
    config.data.labelled_fraction = 0.5
    config.train.batchnorm_recalibration, config.train.weight_average = 2, 0.9
    train_unet(config, tmp_path / "unet", progress=False)
    # the kept weights are the averaged ones, checkpointed beside the raw weights
    (checkpoint_file,) = (tmp_path / "unet" / "checkpoints").glob("ckpt-*.npz")  # the one epoch's end
    with np.load(checkpoint_file) as checkpoint:
        averaged = [checkpoint[k] for k in sorted(checkpoint.files) if k.startswith("variables/extra/")][:-1]
        raw = [checkpoint[k] for k in sorted(checkpoint.files) if k.startswith("variables/unet/")]
    with np.load(tmp_path / "unet" / "best.npz") as best:
        kept = [best[k] for k in sorted(best.files)]
    assert averaged and any(not np.allclose(a, r) for a, r in zip(kept, raw))
    trainable = [k for k, r in zip(kept, raw) if any(np.array_equal(k, a) for a in averaged)]
    assert len(trainable) == len(averaged)
    described = json.loads((tmp_path / "unet" / "data.json").read_text())
    training = patient_splits(find_patients(cohort))[0]["training"]
    assert described["training_patients"] == labelled_subset(training, 0.5, seed=1)
    assert len(described["training_patients"]) == max(1, int(0.5 * len(training)))
    summary = evaluate_sdnet_style(tmp_path / "unet", tmp_path / "eval")
    assert summary["run"]["patients"] == sorted(described["test_patients"])
    assert summary["cases"] == 2 * len(described["test_patients"])
    assert 0.0 <= summary["dice_mean_3d"]["mean"] <= 1.0
    assert (tmp_path / "eval" / "cases.csv").is_file()


SHAPE_LOSS_ON_JAX = """
import json
import sys

import numpy as np

sys.path.insert(0, {tests!r})
from support.helpers import TINY_NVAE, small_config
from sdnet_tf.models import SDNet
from sdnet_tf.models.nvae import NVAE
from sdnet_tf.models.priors import assign_values
from sdnet_tf.training.engines import sdnet_engine
from sdnet_tf.training.run_files import network_variables
from sdnet_tf.training.schedule import SDNET_SCHEDULE

config = small_config(backend="jax", learning_rate=0.0)  # no update: every step sees the same weights
config.loss.shape_prior, config.loss.shape_projection = "prior", 2.0
model = SDNet(**{{k: getattr(config.model, k) for k in ("input_size", "unet_filters", "unet_depth",
                                                       "segmentor_filters", "discriminator_filters")}}, seed=1)
model.build()
prior = NVAE(**TINY_NVAE, seed=1).build_default()
prior.trainable = False
with np.load({weights!r}) as saved:
    for name, variable in network_variables(model.networks()).items():
        variable.assign(saved[name])
    assign_values(prior, {{k[6:]: saved[k] for k in saved.files if k.startswith("prior/")}})
    images, masks = saved["batch/images"], saved["batch/masks"]
engine = sdnet_engine(model, config)
engine.use_shape_prior(prior, 3.0)
sizes = engine.shape_sizes(images, masks)
terms = engine.run_step(next(s for s in SDNET_SCHEDULE if s.objective == "supervised"), images, masks)
unlabelled = engine.run_step(next(s for s in SDNET_SCHEDULE if s.objective == "unsupervised"), images)
json.dump({{"sizes": sizes, "terms": terms, "unlabelled": unlabelled}}, open({out!r}, "w"))
"""


# slow: a JAX subprocess compiling SDNet's supervised step with the prior (about a minute)
@pytest.mark.slow
def test_sdnet_shape_loss_on_jax_matches_tensorflow(tmp_path):
    """The JAX engine's shape loss (omega's measurement and the supervised step) and its
    label-free term (the unlabelled step) equal the TensorFlow engine's from the same SDNet and
    prior weights."""
    from support.helpers import TESTS, run_jax, small_config
    from sdnet_tf.models import SDNet
    from sdnet_tf.training.engines import sdnet_engine
    from sdnet_tf.training.run_files import network_variables
    from sdnet_tf.training.schedule import SDNET_SCHEDULE

    config = small_config(learning_rate=0.0)  # no update: every step sees the same weights
    config.loss.shape_prior, config.loss.shape_projection = "prior", 2.0
    model = SDNet(**{k: getattr(config.model, k) for k in ("input_size", "unet_filters", "unet_depth",
                                                            "segmentor_filters", "discriminator_filters")},
                  seed=1)
    model.build()
    rng = np.random.default_rng(3)
    for variable in model.trainable_variables:  # non-zero biases: the backends' LeakyReLU differ at exactly 0
        variable.assign(variable.value + 0.01 * rng.standard_normal(variable.shape).astype("float32"))
    prior = NVAE(**TINY_NVAE, seed=1).build_default()
    prior.trainable = False
    labels = np.stack([heart(shift=s) for s in range(4)])
    masks = np.stack([labels == 2, labels == 3, labels == 1], -1).astype("float32")
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype("float32")
    np.savez(tmp_path / "weights.npz", **{k: np.asarray(v.value) for k, v in network_variables(model.networks()).items()},
             **{f"prior/{k}": v for k, v in variable_values(prior).items()}, **{"batch/images": images,
                                                                                "batch/masks": masks})
    engine = sdnet_engine(model, config)
    engine.use_shape_prior(prior, 3.0)
    sizes = engine.shape_sizes(images, masks)
    terms = engine.run_step(next(s for s in SDNET_SCHEDULE if s.objective == "supervised"), images, masks)
    unlabelled = engine.run_step(next(s for s in SDNET_SCHEDULE if s.objective == "unsupervised"), images)
    script = SHAPE_LOSS_ON_JAX.format(tests=str(TESTS), weights=str(tmp_path / "weights.npz"),
                                      out=str(tmp_path / "jax.json"))
    run_jax(tmp_path, ["-c", script])
    jax_side = json.loads((tmp_path / "jax.json").read_text())
    assert terms["shape"] > 0
    for key, value in sizes.items():
        assert jax_side["sizes"][key] == pytest.approx(value, rel=1e-4), key
    # the terms that do not depend on z's noise, which each backend draws from its own generator
    for key in ("dice", "shape", "kl"):
        assert jax_side["terms"][key] == pytest.approx(terms[key], rel=1e-4, abs=1e-6), key
    assert unlabelled["shape_projection"] > 0
    for key in ("shape_projection", "kl"):
        assert jax_side["unlabelled"][key] == pytest.approx(unlabelled[key], rel=1e-4, abs=1e-6), key


def test_a_parked_prior_run_restored_elsewhere_resumes_as_the_run_itself(cohort, tmp_path):
    # results/park_run.py keeps an unfinished run in the repository (run folders are not tracked)
    from support.helpers import ROOT, load_script

    park_run = load_script(ROOT / "results" / "park_run.py")
    config = _prior_config(cohort, tmp_path, "acnn", spectral_weight=0.0)
    run = tmp_path / "runs" / "acnn"
    train_prior(config, run, progress=False)
    park_run.park(run, tmp_path / "parked")
    parked = sorted(p.relative_to(tmp_path / "parked" / "acnn").as_posix()
                    for p in (tmp_path / "parked" / "acnn").rglob("*") if p.is_file())
    assert parked == sorted(["best.json", "best.npz", "checkpoints/ckpt-3.npz", "config.yaml", "data.json",
                             "history.csv", "scalars.jsonl", "summary.json", "train.log"])
    park_run.restore(tmp_path / "parked" / "acnn", tmp_path / "elsewhere")
    config.train.epochs = 2
    train_prior(config, run, progress=False)
    train_prior(config, tmp_path / "elsewhere" / "acnn", progress=False)
    ours, theirs = (np.load(park_run.newest_checkpoint(r)[1]) for r in (run, tmp_path / "elsewhere" / "acnn"))
    assert park_run.newest_checkpoint(run)[0] == 6 and sorted(ours.files) == sorted(theirs.files)
    for key in ours.files:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    # a run folder already at or past the parked step is left alone
    park_run.restore(tmp_path / "parked" / "acnn", tmp_path / "elsewhere")
    assert park_run.newest_checkpoint(tmp_path / "elsewhere" / "acnn")[0] == 6


def test_a_finished_prior_parked_with_its_weights_only_is_restored_for_use(cohort, tmp_path):
    # a finished prior that later trainings load (--shape-prior) is kept without its checkpoint
    from support.helpers import ROOT, load_script

    park_run = load_script(ROOT / "results" / "park_run.py")
    config = _prior_config(cohort, tmp_path, "acnn", spectral_weight=0.0)
    run = tmp_path / "runs" / "acnn"
    train_prior(config, run, progress=False)
    park_run.park(run, tmp_path / "parked", weights_only=True)
    parked = tmp_path / "parked" / "acnn"
    assert not (parked / "checkpoints").exists() and (parked / "best.npz").is_file()
    park_run.restore(parked, tmp_path / "elsewhere")
    here, there = np.load(run / "best.npz"), np.load(tmp_path / "elsewhere" / "acnn" / "best.npz")
    assert sorted(here.files) == sorted(there.files)
    for key in here.files:
        np.testing.assert_array_equal(here[key], there[key], err_msg=key)
    with pytest.raises(SystemExit, match="no best weights to park"):
        park_run.park(tmp_path / "nothing", tmp_path / "parked", weights_only=True)
