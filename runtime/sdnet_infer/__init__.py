"""sdnet-infer: run an exported SDNet with onnxruntime, no TensorFlow needed.

    from sdnet_infer import SDNetRuntime
    from sdnet_infer.io import read_volume, save_labels
    runtime = SDNetRuntime("export-folder")          # checks the SHA-256 of every model file
    volume = read_volume("image.nii.gz", orientation=runtime.orientation)  # voxel size, slice axis
    labels = runtime.segment_volume(volume.data, volume.zooms[:2])  # (H, W, S) -> uint8 ACDC labels
    save_labels(labels, volume.image, "image_pred.nii.gz", volume.geometry)  # back on the file's grid

Every prediction can be quality-controlled (``sdnet_infer.qc``: anatomical validity and
out-of-distribution scores against the thresholds the export was calibrated with):

    from sdnet_infer.predict import predict_files
    from sdnet_infer.qc import QualityControl
    quality = QualityControl(runtime, runtime.meta.get("qc"))
    predict_files("images", "out", runtime.segment, runtime.size, runtime.spacing,
                  orientation=runtime.orientation, quality=quality)   # out/qc.json

Imports numpy, scipy, nibabel and onnxruntime only.
"""

from sdnet_infer.io import DataError
from sdnet_infer.model import ExportError, SDNetRuntime

__version__ = "0.1.0"
__all__ = ["DataError", "ExportError", "SDNetRuntime", "__version__"]
