"""Data code: numpy, nibabel and scipy only (no TensorFlow, no models)."""
