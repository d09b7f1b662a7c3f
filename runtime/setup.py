"""sdnet-infer: the TensorFlow-free onnxruntime runtime for exported SDNet models.

Install it alone for deployment: ``pip install ./runtime`` (add ``[gpu]`` for
onnxruntime-gpu). ``sdnet-tf`` requires it: training and prediction import its geometry,
preprocessing and NIfTI code (``pip install -e ./runtime -e .``).
"""

from setuptools import setup

setup(
    name="sdnet-infer",
    version="0.1.0",
    description="Run exported SDNet cardiac MRI models with onnxruntime (no TensorFlow)",
    python_requires=">=3.10",
    packages=["sdnet_infer"],
    install_requires=["numpy>=1.24", "scipy>=1.10", "nibabel>=5.0", "onnxruntime>=1.17"],
    extras_require={"gpu": ["onnxruntime-gpu>=1.17"]},
    entry_points={"console_scripts": ["sdnet-infer=sdnet_infer.cli:main"]},
)
