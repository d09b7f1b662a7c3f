"""NIfTI input and output honouring ACDC's header quirks.

Shared with the TensorFlow-free runtime package (``sdnet_infer.io``), so predictions from
``sdnet-tf predict`` and ``sdnet-infer`` are written the same way.
"""

from sdnet_infer.io import LABELS, load_labels, load_volume, save_labels, save_volume

__all__ = ["LABELS", "load_labels", "load_volume", "save_labels", "save_volume"]
