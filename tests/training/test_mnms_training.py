"""SDNet trained on the four-vendor phantom (M&Ms layout) with the resolution augmentation, as
configs/sdnet-mnms-phantom-quick.yaml at tiny sizes: vendors A and B labelled, C unlabelled, D
held out, through the ordinary trainer (a smoke run: it checks the data the run used, not what it
learned; the README gives the preset's own result)."""

import json

import numpy as np
import pytest

from sdnet_tf.apps.train import train_run
from sdnet_tf.config import load_config

pytestmark = pytest.mark.slow


def test_a_tiny_sdnet_trains_on_two_vendors_and_never_sees_the_held_out_one(mnms_cohort_12, tmp_path):
    overrides = ["model.input_size=32", "model.unet_filters=8", "model.segmentor_filters=8",
                 "model.discriminator_filters=4", "train.epochs=2", "train.iterations_per_epoch=10",
                 "train.image_summaries=0", f"data.path={mnms_cohort_12}", "data.spacing=6.0",
                 "data.resolution_range=[4.278, 7.187]", f"data.cache_dir={tmp_path / 'cache'}"]
    config = load_config("sdnet-mnms-phantom-quick", overrides)
    summary = train_run(config, tmp_path / "run", progress=False)
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["dataset"] == "mnms" and data["vendors"] == ["A", "B", "C", "D"]
    assert data["vendor_roles"] == {"A": "labelled", "B": "labelled", "C": "unlabelled", "D": "test"}
    vendor = {p: v for v, patients in (("A", (1, 5, 9)), ("B", (2, 6, 10)), ("C", (3, 7, 11)), ("D", (4, 8, 12)))
              for p in (f"PH{n:04d}" for n in patients)}
    assert {vendor[p] for p in data["labelled_patients"] + data["validation_patients"]} == {"A", "B"}
    assert sorted(data["held_out_patients"]) == ["PH0004", "PH0008", "PH0012"]
    assert data["per_vendor"]["C"]["unlabelled"] > 0 and data["per_vendor"]["D"]["unlabelled"] == 0
    assert summary["iteration"] == 20 and np.isfinite(summary["best_val_dice"])
