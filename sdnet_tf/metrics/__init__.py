"""Segmentation metrics: overlap, surface distances, anatomical validity, clinical indices (numpy / scipy),
and metrics of shape priors (shape descriptors, Frechet distances, pathology classification; scikit-learn)."""
