"""The benchmarks' shared model builder (benchmarks/common.py): it builds SDNet as ``sdnet-tf
train`` does, so a precision override really changes what the convolutions run in."""

import sys

import keras
import pytest

from support.helpers import ROOT, small_config


@pytest.mark.parametrize("precision,dtype", [("float32", "float32"), ("mixed_bfloat16", "bfloat16")])
def test_seeded_sdnet_is_built_in_the_configs_precision(monkeypatch, precision, dtype):
    # it once built the model before any policy was set, so `train_step.py --set
    # train.precision=mixed_bfloat16` timed a float32 network
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("common", None)
    from common import seeded_sdnet

    config = small_config(precision=precision)
    model, _ = seeded_sdnet(config)
    assert model.anatomy_encoder.compute_dtype == dtype
    assert model.anatomy_encoder.variable_dtype == "float32"
    assert keras.config.dtype_policy().name == precision  # the suite's fixture puts float32 back
