"""Segmentation metrics: overlap, surface distances, anatomical validity, clinical indices (numpy / scipy)."""
