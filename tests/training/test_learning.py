"""Learning checks, one per trained model kind: SDNet, the NVAE and ACNN shape priors and the
U-Net baseline each learn, from tiny sizes and a few hundred steps, to a stated threshold on
held-out data (default suite); SDNet on the README's phantom preset and on synthetic shapes at
full length (slow). The SDNet family's variants: test_learning_variants.py."""

import json

import pytest

from support.helpers import LEARNING_SPACING, best_and_first
from sdnet_tf.config import PriorConfig, SegmentationConfig, load_config
from sdnet_tf.apps.train import train_run
from sdnet_tf.training.prior_trainer import train_prior, train_unet

PHANTOM_THRESHOLD = 0.75
SYNTHETIC_THRESHOLD = 0.85
# the tiny SDNet over train.seed 1-5 (one TensorFlow thread, as the suite runs it): best
# validation Dice 0.621, 0.521, 0.422, 0.415, 0.502 from 0.088-0.089 after the first epoch
TINY_SYNTHETIC_THRESHOLD = 0.35


def test_a_tiny_sdnet_learns_to_segment_synthetic_shapes(tmp_path):
    # configs/synthetic-quick.yaml at 32 x 32 (discs and rings in two intensity styles, 64 of
    # 256 images labelled, the full schedule of five updates) for 200 iterations: from 0.09
    # after the first 25 to a best validation Dice of 0.415-0.621 over five seeds (above)
    config = load_config("synthetic-quick", ["model.input_size=32", "train.epochs=8",
                                             "train.iterations_per_epoch=25", "train.image_summaries=0"])
    summary = train_run(config, tmp_path / "run", progress=False)
    first = float((tmp_path / "run" / "history.csv").read_text().splitlines()[1].split(",")[3])
    assert summary["best_val_dice"] >= TINY_SYNTHETIC_THRESHOLD and first < 0.3, (summary, first)


@pytest.mark.slow
def test_sdnet_reaches_validation_dice_on_held_out_phantom_patients(tmp_path_factory):
    # the README's first command: configs/phantom-quick.yaml on the built-in 20-patient cohort
    # (generated into a fresh cache here), split 0: 14 training patients, all labelled, with the
    # cine frames as unlabelled images; validation on 3 held-out patients, one per scanner
    # style; 800 iterations, about 7 minutes alone on 2 cores. Measured best validation Dice
    # 0.803 and 0.771 in two runs (TensorFlow's multi-threaded CPU kernels do not sum in a fixed
    # order, and validation moves by +-0.07 between epochs at this learning rate).
    config = load_config("phantom-quick", [f"data.cache_dir={tmp_path_factory.mktemp('cache')}"])
    assert config.model.input_size == 64 and config.data.path == "phantom"
    run = tmp_path_factory.mktemp("run")
    summary = train_run(config, run, progress=False)
    data = json.loads((run / "data.json").read_text())
    validation = data["splits"][0]["validation"]
    assert len(validation) == 3 and data["labelled"] == 244 and data["validation"] == 52
    assert summary["best_val_dice"] >= PHANTOM_THRESHOLD, summary


@pytest.mark.slow
def test_sdnet_reaches_validation_dice_on_synthetic_shapes(tmp_path):
    # 64 x 64 discs and rings in two intensity styles, 64 of 256 images labelled,
    # 400 iterations of the full schedule (configs/synthetic-quick.yaml)
    config = load_config("synthetic-quick")
    assert config.data.labelled_fraction == 0.25 and config.model.input_size == 64
    summary = train_run(config, tmp_path / "run", progress=False)
    assert summary["best_val_dice"] >= SYNTHETIC_THRESHOLD, summary


# ------------------------------------------------------------------ the priors and the U-Net
# Each trains for 200 steps (8 epochs of 25, batch 8) on the masks or images of an 8-patient
# phantom cohort at 32 x 32 and 5 mm per pixel, and its best validation Dice (mean of RV, MYO,
# LV, per slice) must reach a threshold about 20% below the value measured when the threshold
# was set (given beside each), from near 0 at the first epoch.


def _prior(cohort, cache, kind, **model):
    config = PriorConfig()
    config.model.kind, config.model.input_size = kind, 32
    for key, value in model.items():
        setattr(config.model, key, value)
    config.train.batch_size, config.train.epochs, config.train.steps_per_epoch = 8, 8, 25
    config.train.learning_rate, config.train.min_learning_rate = 1e-2, 1e-3
    config.train.validation_samples = 0
    config.data.augment = False
    config.data.path, config.data.spacing, config.data.cache_dir = str(cohort), LEARNING_SPACING, str(cache)
    return config


@pytest.mark.parametrize("kind,model,threshold", [
    # measured 0.66 (first epoch 0.27); KL weight 0.05 per scale, warm-up over 2 epochs; over
    # train.seed 1-5 with one TensorFlow thread 0.776-0.821 (first epoch 0.20-0.35)
    ("nvae", dict(stem_channels=8, preprocess_blocks=1, groups_per_scale=[1, 1, 1], latent_channels=8,
                  cells_per_group=1, decoder_expansion=2), 0.55),
    # measured 0.43 (first epoch 0.03); over train.seed 1-5, 0.413-0.545 (first epoch 0.00-0.13)
    ("acnn", dict(filters=16, levels=2, code_size=64), 0.35),
])
def test_a_tiny_prior_learns_to_reconstruct_held_out_masks(phantom_cohort_8, tmp_path, kind, model, threshold):
    config = _prior(phantom_cohort_8, tmp_path / "cache", kind, **model)
    config.train.kl_betas, config.train.kl_warmup_epochs = [0.05, 0.05, 0.05], 2
    train_prior(config, tmp_path / "run", progress=False)
    best, first = best_and_first(tmp_path / "run")
    assert best >= threshold and best - first >= 0.25, (best, first)


def test_a_tiny_unet_learns_to_segment_held_out_patients(phantom_cohort_8, tmp_path):
    # measured 0.56 (first epoch 0.13), with BatchNorm statistics recomputed before each
    # validation (without, the moving averages of 200 steps leave inference mode at Dice 0.0-0.2).
    # Not robust over seeds: train.seed 1-5 gave 0.560, 0.616, 0.639, 0.652 and 0.307. The
    # myocardium has an intensity of its own and is learnt first; LV and RV blood look alike and
    # need the context, and with seed 5 the LV appears only after 325 steps (mean 0.635 at 375;
    # the RV had not appeared by 400)
    config = SegmentationConfig()
    config.model.input_size, config.model.filters, config.model.depth = 32, 8, 3
    config.train.batch_size, config.train.epochs, config.train.steps_per_epoch = 8, 8, 25
    config.train.batchnorm_recalibration = 5
    config.data.path, config.data.spacing = str(phantom_cohort_8), LEARNING_SPACING
    config.data.cache_dir = str(tmp_path / "cache")
    train_unet(config, tmp_path / "run", progress=False)
    best, first = best_and_first(tmp_path / "run")
    assert best >= 0.45 and best - first >= 0.25, (best, first)
