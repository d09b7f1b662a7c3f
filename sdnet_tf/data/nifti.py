"""NIfTI input and output through one geometry reader (voxel size, slice axis, orientation).

Shared with the TensorFlow-free runtime package (``sdnet_infer.io`` and
``sdnet_infer.geometry``), so training, ``sdnet-tf predict``, ``evaluate`` and ``sdnet-infer``
read every file the same way and write predictions the same way.
"""

from sdnet_infer.geometry import TRAINING_ORIENTATION, VolumeGeometry, read_geometry
from sdnet_infer.io import (LABELS, Volume, load_labels, load_volume, parse_label_map, read_volume, save_labels,
                            save_volume)

__all__ = ["LABELS", "TRAINING_ORIENTATION", "Volume", "VolumeGeometry", "load_labels", "load_volume",
           "parse_label_map", "read_geometry", "read_volume", "save_labels", "save_volume"]
