"""sdnet-tf: SDNet (Chartsias et al., MedIA 2019) in TensorFlow 2 / Keras 3."""

from setuptools import find_packages, setup

setup(
    name="sdnet-tf",
    version="0.1.0",
    description="SDNet disentangled cardiac MRI segmentation in TensorFlow 2 / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    # sdnet_infer, the TensorFlow-free runtime, is its own distribution (sdnet-infer, in
    # runtime/): training and prediction import its geometry, preprocessing and NIfTI code.
    # Install both: pip install -e ./runtime -e .
    packages=find_packages(include=["sdnet_tf", "sdnet_tf.*", "export"]),
    py_modules=["cli"],
    include_package_data=True,
    install_requires=[
        "sdnet-infer==0.1.0",
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "tensorflow-probability>=0.25,<0.26",
        "tf-keras>=2.21,<2.22",
        "tensorboard>=2.20",
        "tf2onnx>=1.17,<1.18",
        "onnxruntime>=1.31",
        "nibabel>=5.2",
        "numpy>=2.0",
        "scipy>=1.13",
        "click>=8.1",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "scikit-learn>=1.4",
    ],
    extras_require={
        # scikit-image: the reference the resampler is tested against; jax: the JAX engine's
        # parity test against the TensorFlow engine (CPU wheels, about 90 MB); pytest-xdist:
        # the suite in two processes (pytest.ini; 3.8 for --no-loadscope-reorder); filelock:
        # the two processes share the phantom cohorts, written once (tests/conftest.py)
        "test": ["pytest>=8", "pytest-xdist>=3.8", "filelock>=3.12", "scikit-image>=0.24", "jax>=0.10,<0.11"],
        "gpu": ["onnxruntime-gpu>=1.31"],
        # training on the JAX backend (--backend jax); this is the CPU build, a GPU needs
        # e.g. pip install "jax[cuda12]"
        "jax": ["jax>=0.10,<0.11"],
    },
    entry_points={"console_scripts": ["sdnet-tf=cli:main"]},
)
