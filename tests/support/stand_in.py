"""A stand-in for an exported or Keras model (``SDNetRuntime``, ``KerasRuntime``) that segments
nothing: for tests of what the commands do around the model. numpy only, so a subprocess that
blocks TensorFlow can import it."""

import numpy as np


class StandIn:
    """The model interface the predictors use; every slice comes back as background.

    ``segment`` takes slices (n, H, W, 1) and returns zeros (n, H, W, 3).
    """

    precision, provider, meta, label_convention, size, spacing, orientation = (
        "fp32", "CPUExecutionProvider", {}, "acdc", 32, 2.5, "LPS")

    def __init__(self, *args, **kwargs):
        pass

    def segment(self, slices):
        return np.zeros((*slices.shape[:3], 3), np.float32)
