"""Learning checks: the engine learns to segment held-out phantom patients (default suite) and
seeded synthetic shapes from a quarter of labels (slow)."""

import json

import pytest

from sdnet_tf.config import load_config
from sdnet_tf.train import train_run

PHANTOM_THRESHOLD = 0.80
SYNTHETIC_THRESHOLD = 0.85


def test_sdnet_reaches_validation_dice_on_held_out_phantom_patients(tmp_path_factory):
    # the README's first command: configs/phantom-quick.yaml on the built-in 20-patient cohort
    # (generated into a fresh cache here), split 0: 14 training patients, all labelled, with the
    # cine frames as unlabelled images; validation on 3 held-out patients, one per scanner style; 800 iterations
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
