"""sdnet-infer: run an exported SDNet with onnxruntime, no TensorFlow needed.

    from sdnet_infer import SDNetRuntime
    runtime = SDNetRuntime("export-folder")          # checks the SHA-256 of every model file
    labels = runtime.segment_volume(volume, spacing)  # (H, W, S) -> uint8 ACDC labels

Imports numpy, scipy, nibabel and onnxruntime only.
"""

from sdnet_infer.io import DataError
from sdnet_infer.model import ExportError, SDNetRuntime

__version__ = "0.1.0"
__all__ = ["DataError", "ExportError", "SDNetRuntime", "__version__"]
