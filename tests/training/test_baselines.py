"""The U-Net, GAN and self-training baselines (``model.kind unet_gan``) in SDNet's pipeline:
parameter counts, the schedule, pseudo-labels, self-training's rounds and one learning check."""

import json

import keras
import numpy as np
import pytest

from support.helpers import LEARNING_SPACING, assert_step_updates_only_its_networks, best_and_first
from sdnet_tf.apps.self_training import pseudo_masks, with_pseudo_labels
from sdnet_tf.apps.train import build_sdnet, train_run
from sdnet_tf.config import ConfigError, load_config
from sdnet_tf.data.synthetic import synthetic_arrays
from sdnet_tf.models import SDNet, UNetGAN
from sdnet_tf.training.engines import schedule
from sdnet_tf.training.schedule import UNET_GAN_SCHEDULE
from sdnet_tf.training.trainer import TrainerUNet

STRUCTURE_THRESHOLD = 0.3  # the test patient's 3-D Dice of each of LV, RV and MYO
GAN_THRESHOLD = 0.6  # best validation Dice of the tiny GAN baseline on the phantom (measured 0.887)
TINY = ["model.input_size=32", "model.unet_filters=8", "model.discriminator_filters=4", "train.image_summaries=0",
        "train.jit_compile=false"]


def test_parameter_counts_are_sdnets_u_net_with_a_four_channel_head_and_sdnets_discriminator():
    model = UNetGAN()
    model.build()
    sdnet = SDNet()
    sdnet.build()
    counts = {name: net.count_params() for name, net in model.networks().items()}
    # SDNet's anatomy encoder with a 1x1 head of 4 channels instead of 8: 4 * (64 + 1) fewer weights
    assert counts["unet"] == sdnet.anatomy_encoder.count_params() - 4 * 65 == 34_539_780
    assert counts["discriminator"] == sdnet.discriminator.count_params() == 11_346_881
    assert model.count_params() == 45_886_661


def test_segment_gives_the_foreground_channels_of_the_softmax():
    model = UNetGAN(input_size=32, unet_filters=4, discriminator_filters=4)
    model.build()
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
    full = np.asarray(model.unet(images, training=False))
    masks = np.asarray(model.segment(images, training=False))
    assert full.shape == (2, 32, 32, 4) and masks.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(masks, full[..., :3], atol=1e-7)
    np.testing.assert_allclose(full.sum(axis=-1), 1.0, atol=1e-5)


def test_the_schedule_drops_the_adversarial_steps_at_weight_0_and_refuses_sdnet_settings():
    config = load_config("gan-acdc-cpu")
    assert schedule(config) == UNET_GAN_SCHEDULE
    plain = load_config("gan-acdc-cpu", ["loss.adversarial=0"])
    assert [step.name for step in schedule(plain)] == ["supervised"]
    with pytest.raises(ConfigError, match=r"does not read model\.segmentor_filters, loss\.reconstruction"):
        build_sdnet(load_config("gan-acdc-cpu", ["model.segmentor_filters=8", "loss.reconstruction=2"]))
    with pytest.raises(ConfigError, match="self_training_rounds is the self-training baseline"):
        build_sdnet(load_config("sdnet-acdc-cpu", ["train.self_training_rounds=1"]))
    with pytest.raises(ConfigError, match="self_training_threshold is read only with train.self_training_rounds"):
        build_sdnet(load_config("gan-acdc-cpu", ["train.self_training_threshold=0.7"]))
    with pytest.raises(ConfigError, match="self_training_rounds with data.factor_augmentation is not supported"):
        build_sdnet(load_config("self-training-acdc-cpu", ["data.factor_augmentation=runs/x"]))


@pytest.fixture(scope="module")
def trainer_unet(tmp_path_factory):
    config = load_config("gan-phantom-quick", TINY + ["train.iterations_per_epoch=2", "train.epochs=1",
                                                           "data.dataset=synthetic"])
    keras.utils.set_random_seed(1)
    model = build_sdnet(config)
    model.build()
    trainer = TrainerUNet(model, synthetic_arrays(16, 8, 32, 0.5, seed=0), config,
                          tmp_path_factory.mktemp("unet-gan"), progress=False)
    trainer.train_iteration()  # optimiser slots built, the pool filled
    return trainer


@pytest.mark.parametrize("step", UNET_GAN_SCHEDULE, ids=lambda s: s.name)
def test_each_step_updates_exactly_the_networks_it_names(trainer_unet, step):
    trainer = trainer_unet
    batch = trainer.sampler.batches(5)
    if step.objective == "discriminator":
        inputs = (batch["real_masks"], trainer.engine.predict_masks(batch["discriminator_images"]))
    elif step.objective == "supervised_unet":
        inputs = (batch["labelled_images"], batch["labelled_masks"])
    else:
        inputs = (batch["unlabelled_images"],)
    assert_step_updates_only_its_networks(trainer, step, inputs)


def test_pseudo_masks_take_the_likeliest_class_above_the_threshold():
    probabilities = np.array([[[[0.7, 0.1, 0.1], [0.3, 0.4, 0.2], [0.1, 0.1, 0.1], [0.05, 0.05, 0.9]]]], np.float32)
    masks = pseudo_masks(probabilities, threshold=0.5)
    np.testing.assert_array_equal(masks[0, 0], [[1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(pseudo_masks(probabilities, threshold=0.35)[0, 0, 1], [0, 1, 0])


def test_pseudo_labelled_images_join_the_labelled_ones_with_their_vendor():
    arrays = synthetic_arrays(6, 4, 16, 0.5, seed=0)
    arrays = arrays.__class__(**{**arrays.__dict__, "vendors": ("A", "B"),
                                 "labelled_vendors": np.zeros(len(arrays.labelled_images), np.int64),
                                 "unlabelled_vendors": np.ones(len(arrays.unlabelled_images), np.int64),
                                 "validation_vendors": np.zeros(len(arrays.validation_images), np.int64)})
    masks = np.zeros_like(arrays.unlabelled_images[..., :1].repeat(3, axis=-1))
    joined = with_pseudo_labels(arrays, masks)
    n, m = len(arrays.labelled_images), len(arrays.unlabelled_images)
    assert len(joined.labelled_images) == len(joined.labelled_masks) == n + m
    np.testing.assert_array_equal(joined.labelled_images[n:], arrays.unlabelled_images)
    np.testing.assert_array_equal(joined.labelled_vendors, [0] * n + [1] * m)
    assert joined.unlabelled_images is arrays.unlabelled_images and joined.validation_images is arrays.validation_images
    joined.check()


def test_a_tiny_gan_baseline_learns_and_is_scored_by_evaluate(phantom_cohort_8, tmp_path):
    # configs/gan-phantom-quick.yaml at 32 x 32 on the 8-patient phantom, 200 iterations;
    # measured best validation Dice 0.887 (first epoch 0.22); test 3-D Dice LV 0.93, RV 0.91, MYO 0.64
    overrides = TINY + ["train.epochs=8", "train.iterations_per_epoch=25", "train.learning_rate=3e-3",
                        f"data.path={phantom_cohort_8}", f"data.spacing={LEARNING_SPACING}",
                        f"data.cache_dir={tmp_path / 'cache'}"]
    summary = train_run(load_config("gan-phantom-quick", overrides), tmp_path / "run", progress=False)
    best, first = best_and_first(tmp_path / "run", "val_dice")
    history = (tmp_path / "run" / "history.csv").read_text()
    assert "train_unsupervised/adversarial" in history and "train_discriminator/discriminator" in history
    assert best >= GAN_THRESHOLD and best - first >= 0.2, (best, first, summary)
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, ["evaluate", "--run", str(tmp_path / "run"), "-o", str(tmp_path / "test"),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    scored = json.loads((tmp_path / "test" / "summary.json").read_text())
    assert scored["dice_mean_3d"]["mean"] > 0.4, scored["dice_mean_3d"]
    # every structure is learnt: with Dice alone a channel could settle over the background
    per_class = {c: scored["per_class"][c]["all"]["Dice"]["mean"] for c in ("LV", "RV", "MYO")}
    print("GAN baseline, test 3-D Dice per structure:", per_class)
    assert min(per_class.values()) > STRUCTURE_THRESHOLD, per_class
    refused = CliRunner().invoke(main, ["figures", str(tmp_path / "run"), "-o", str(tmp_path / "figures")])
    assert refused.exit_code != 0 and "a U-Net baseline run" in refused.output


# slow: four short runs, each traced anew (about 44 s); the default run checks the pseudo-labels
# and how they join the labelled images (above)
@pytest.mark.slow
def test_self_training_rounds_start_from_the_previous_round_and_resume(phantom_cohort_8, tmp_path):
    overrides = TINY + ["loss.adversarial=0", "train.self_training_rounds=1", "train.epochs=1",
                        "train.iterations_per_epoch=3", f"data.path={phantom_cohort_8}",
                        f"data.spacing={LEARNING_SPACING}", f"data.cache_dir={tmp_path / 'cache'}"]
    config = load_config("gan-phantom-quick", overrides)
    run = tmp_path / "run"
    # max_iterations counts every round's iterations; a round it stops is resumed, not kept
    stopped = train_run(config, run, max_iterations=4, progress=False)
    assert stopped["iteration"] == 4 and not stopped["complete"] and not (run / "round-2").exists()
    assert json.loads((run / "round-1" / "summary.json").read_text())["complete"] is False
    summary = train_run(config, run, progress=False)
    assert "resumed unet_gan" in (run / "round-1" / "train.log").read_text()
    # the run's own log has every round and the pseudo-labelling between them
    assert "self-training round 1 of 1" in (run / "train.log").read_text()
    rounds = json.loads((run / "self_training.json").read_text())["rounds"]
    labelled = json.loads((run / "data.json").read_text())["labelled"]
    assert [r["pseudo_labelled"] > 0 for r in rounds] == [False, True]
    scores = [r["val_dice"] for r in rounds]
    assert summary["kept_round"] == int(np.argmax(scores)) and summary["iteration"] == 6 and summary["complete"]
    assert (run / "model.keras").is_file() and labelled > 0
    # round 1 read round 0's kept weights before its first step
    log = (run / "round-1" / "train.log").read_text()
    assert f"networks start from the kept weights of {run / 'round-0'}" in log
    # a finished run is kept as it is; a killed one resumes in its round
    (run / "round-1" / "summary.json").unlink()
    again = train_run(config, run, progress=False)
    assert [r["val_dice"] for r in again["rounds"]][:1] == scores[:1]
    assert "resumed" in (run / "round-1" / "train.log").read_text()


def test_image_summaries_of_a_u_net_are_its_masks(trainer_unet, monkeypatch):
    from support.helpers import logged_image_summaries

    logged = logged_image_summaries(trainer_unet, monkeypatch)
    assert sorted(logged) == ["input", "predicted_masks", "true_masks"]
    assert logged["predicted_masks"].shape == (2, 32, 32, 3)


def test_a_non_finite_loss_stops_training_naming_the_run(trainer_unet, monkeypatch):
    from sdnet_tf.training.guard import NonFiniteError

    monkeypatch.setattr(trainer_unet, "_run_iteration", lambda i: {"supervised": {"dice": float("nan"), "total": 1.0}})
    with pytest.raises(NonFiniteError, match=r"a non-finite loss at iteration 8 \(supervised/dice = nan\)"):
        trainer_unet.step(7, 7)
