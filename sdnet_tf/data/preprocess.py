"""The original SDNet's ACDC preprocessing and its inverse.

The implementation lives in the TensorFlow-free runtime package (``sdnet_infer.preprocess``,
numpy and scipy only) so that training, ``sdnet-tf predict`` and the deployed
``sdnet-infer`` preprocess every image identically.
"""

from sdnet_infer.preprocess import (SIZE, TARGET_SPACING, Geometry, crop_or_pad, from_one_hot, normalise, one_hot,
                                    preprocess_frame, resample, resize_slice, restore_labels)

__all__ = ["SIZE", "TARGET_SPACING", "Geometry", "crop_or_pad", "from_one_hot", "normalise", "one_hot",
           "preprocess_frame", "resample", "resize_slice", "restore_labels"]
