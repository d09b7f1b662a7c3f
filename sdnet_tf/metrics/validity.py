"""Anatomical validity of 2-D cardiac short-axis label maps: the 7 thesis checks and
Painchaud et al.'s full set.

The checks live in the runtime package (``sdnet_infer.validity``), whose quality control runs
them on every prediction; evaluation scores with the same code through this module.
"""

from sdnet_infer.validity import (CHECKS, HOLE_CHECKS, MAX_CONCAVITY_MM, MIN_CIRCULARITY, PAINCHAUD_CHECKS,
                                  SEVEN_CHECKS, SHAPE_CHECKS, VolumeValidity, check_slice, circularity,
                                  concavity_depth, convex_hull_mask, is_valid, perimeter, volume_validity)

__all__ = ["CHECKS", "HOLE_CHECKS", "MAX_CONCAVITY_MM", "MIN_CIRCULARITY", "PAINCHAUD_CHECKS", "SEVEN_CHECKS",
           "SHAPE_CHECKS", "VolumeValidity", "check_slice", "circularity", "concavity_depth", "convex_hull_mask",
           "is_valid", "perimeter", "volume_validity"]
