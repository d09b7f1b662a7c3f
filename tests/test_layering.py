"""Layering: models, layers, losses and the training schedule import no TensorFlow or JAX; only
each backend's engines (SDNet's and the priors') import its framework; data code imports no ML
framework; the runtime package imports numpy, scipy, nibabel and onnxruntime only."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sdnet_tf"
RUNTIME = sorted((ROOT / "export" / "runtime" / "sdnet_infer").glob("*.py"))
RUNTIME_ALLOWED = {"numpy", "scipy", "nibabel", "onnxruntime", "sdnet_infer", "__future__"}
BACKEND_FREE = sorted(PACKAGE.glob("models/*.py")) + [PACKAGE / "layers.py", PACKAGE / "losses.py",
                                                        PACKAGE / "distributions.py",
                                                        PACKAGE / "training" / "objectives.py",
                                                        PACKAGE / "training" / "optimizers.py",
                                                        PACKAGE / "training" / "schedule.py",
                                                        PACKAGE / "training" / "trainer.py",
                                                        PACKAGE / "training" / "prior_objectives.py",
                                                        PACKAGE / "training" / "prior_trainer.py",
                                                        PACKAGE / "training" / "guard.py",
                                                        PACKAGE / "shape_eval.py",
                                                        PACKAGE / "train.py"]
DATA = sorted(PACKAGE.glob("data/*.py")) + sorted(PACKAGE.glob("metrics/*.py"))


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _roots(names):
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("path", BACKEND_FREE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_tensorflow_in_models_layers_losses(path):
    roots = _roots(_imports(path))
    assert not roots & {"tensorflow", "tf_keras", "tensorflow_probability", "jax", "torch"}, roots


@pytest.mark.parametrize("path", DATA, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_data_code_is_numpy_only(path):
    roots = _roots(_imports(path))
    assert not roots & {"tensorflow", "keras", "jax", "torch"}, roots


def _users(framework):
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if framework in _roots(_imports(p))}


def test_tensorflow_only_in_the_engine():
    assert _users("tensorflow") == {"training/tf_engine.py", "training/distribute.py", "training/prior_engine.py"}


def test_jax_only_in_the_jax_engine():
    assert _users("jax") == {"training/jax_engine.py", "training/prior_jax_engine.py"}


@pytest.mark.parametrize("path", RUNTIME, ids=lambda p: p.name)
def test_runtime_imports_only_its_dependencies(path):
    roots = _roots(_imports(path)) - set(sys.stdlib_module_names)
    assert roots <= RUNTIME_ALLOWED, roots - RUNTIME_ALLOWED


def test_the_checks_see_the_files():
    assert len(BACKEND_FREE) >= 10 and DATA and len(RUNTIME) >= 5
