"""Learning check: the engine learns to segment seeded synthetic shapes from a quarter of labels."""

from sdnet_tf.config import load_config
from sdnet_tf.train import train_run

THRESHOLD = 0.85


def test_sdnet_reaches_validation_dice_on_synthetic_shapes(tmp_path):
    # 64 x 64 discs and rings in two intensity styles, 64 of 256 images labelled,
    # 400 iterations of the full schedule (configs/synthetic-quick.yaml)
    config = load_config("synthetic-quick")
    assert config.data.labelled_fraction == 0.25 and config.model.input_size == 64
    summary = train_run(config, tmp_path / "run", progress=False)
    assert summary["best_val_dice"] >= THRESHOLD, summary
