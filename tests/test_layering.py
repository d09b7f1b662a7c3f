"""Layering: models, layers and losses import no TensorFlow; data code imports no ML framework."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sdnet_tf"
BACKEND_FREE = sorted(PACKAGE.glob("models/*.py")) + [PACKAGE / "layers.py", PACKAGE / "losses.py",
                                                        PACKAGE / "training" / "objectives.py",
                                                        PACKAGE / "training" / "schedule.py"]
DATA = sorted(PACKAGE.glob("data/*.py"))


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


def test_tensorflow_only_in_the_engine():
    users = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
             if "tensorflow" in _roots(_imports(p))}
    assert users == {"training/tf_engine.py"}


def test_the_checks_see_the_files():
    assert len(BACKEND_FREE) >= 10 and DATA
