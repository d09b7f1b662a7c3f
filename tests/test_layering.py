"""Layering, read from the real import graph: every ``import`` statement of every module of
``sdnet_tf``, the runtime ``sdnet_infer`` and ``cli.py`` (module level and inside functions,
absolute and relative) is an edge, and the rules are checked on what each module reaches
through first-party imports, not on a hand-written list of files:

- no import loops;
- models know neither files nor training, data, scoring or applications;
- data code knows no models, no training and no ML framework;
- scoring (metrics, evaluation, shape evaluation) knows no training;
- TensorFlow only in the TensorFlow engines, JAX only in the JAX engines; models, layers,
  losses and the training schedule import neither;
- the runtime imports neither TensorFlow nor ``sdnet_tf``: numpy, scipy, nibabel and
  onnxruntime only.
"""

import ast
import sys
from functools import cache

import pytest
from support.helpers import ROOT

RUNTIME_ROOT = ROOT / "runtime"
RUNTIME_ALLOWED = {"numpy", "scipy", "nibabel", "onnxruntime", "sdnet_infer", "__future__"}
FRAMEWORKS = {"tensorflow", "tf_keras", "tensorflow_probability", "tf2onnx", "jax", "torch"}
TF_ENGINES = {"sdnet_tf.training.tf_engine", "sdnet_tf.training.distribute", "sdnet_tf.training.prior_engine"}
JAX_ENGINES = {"sdnet_tf.training.jax_engine", "sdnet_tf.training.prior_jax_engine"}
FILE_MODULES = {"pathlib", "json", "yaml", "os", "io", "shutil", "pickle", "h5py", "nibabel", "csv"}


def _modules():
    """{dotted name: path} of every first-party module."""
    found = {"cli": ROOT / "cli.py"}
    for base, package in ((ROOT, "sdnet_tf"), (RUNTIME_ROOT, "sdnet_infer")):
        for path in (base / package).rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


@cache
def _tree(name):
    path = MODULES[name]
    return ast.parse(path.read_text(), filename=str(path))


def _imported_names(name):
    """Every dotted name an import statement of module ``name`` names (relative ones resolved)."""
    is_package = MODULES[name].name == "__init__.py"
    names = set()
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _first_party(dotted):
    """The first-party module a dotted name refers to (``a.b.func`` -> ``a.b``), or None."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


@cache
def _edges(name):
    return frozenset(m for m in map(_first_party, _imported_names(name)) if m and m != name)


@cache
def _external(name):
    """Top-level names of the third-party and standard-library packages ``name`` imports."""
    return frozenset(d.split(".")[0] for d in _imported_names(name) if not _first_party(d))


def _reach(name):
    """First-party modules reachable from ``name`` (itself included)."""
    seen, todo = {name}, [name]
    while todo:
        for other in _edges(todo.pop()):
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def _package(prefix):
    return sorted(m for m in MODULES if m == prefix or m.startswith(prefix + "."))


def _loops(edges=_edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, loops = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while not component or v not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                loops.append(sorted(component))

    for module in MODULES:
        if module not in index:
            visit(module)
    return loops


def _reaching(name, forbidden_prefixes):
    hits = set()
    for module in _reach(name):
        if any(module == p or module.startswith(p + ".") for p in forbidden_prefixes):
            hits.add(module)
    return hits


def test_the_graph_sees_the_packages():
    assert len(_package("sdnet_tf")) >= 50 and len(_package("sdnet_infer")) >= 6
    assert "sdnet_tf.training.trainer" in _reach("cli")
    # a function-level import is an edge too
    assert "sdnet_tf.models.unet" in _edges("sdnet_tf.inference")


def test_no_import_loops():
    assert _loops() == []


def test_the_loop_finder_finds_a_loop():
    # the check above can fail: a made-up import of SDNet by the layers it is built from
    assert "sdnet_tf.layers" in _edges("sdnet_tf.models.sdnet")

    def with_back_edge(name):
        return _edges(name) | ({"sdnet_tf.models.sdnet"} if name == "sdnet_tf.layers" else set())

    (loop,) = _loops(with_back_edge)
    assert {"sdnet_tf.layers", "sdnet_tf.models.sdnet", "sdnet_tf.models.anatomy_encoder"} <= set(loop)


@pytest.mark.parametrize("module", _package("sdnet_tf.models"))
def test_models_know_neither_files_nor_training(module):
    reached = _reaching(module, ["sdnet_tf.training", "sdnet_tf.apps", "sdnet_tf.data", "sdnet_tf.config",
                                 "sdnet_tf.inference", "sdnet_tf.metrics",
                                 "sdnet_infer", "cli"])
    assert not reached, reached
    files = set().union(*(_external(m) for m in _reach(module))) & FILE_MODULES
    assert not files, files
    calls = {node.func.id for m in _reach(module) for node in ast.walk(_tree(m))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open"}
    loads = {node.attr for m in _reach(module) for node in ast.walk(_tree(m))
             if isinstance(node, ast.Attribute) and node.attr in {"load", "save", "savez", "loadtxt", "savetxt"}
             and isinstance(node.value, ast.Name) and node.value.id == "np"}
    assert not calls and not loads, (calls, loads)


@pytest.mark.parametrize("module", _package("sdnet_tf.data"))
def test_data_code_knows_no_models_training_or_framework(module):
    reached = _reaching(module, ["sdnet_tf.models", "sdnet_tf.training", "sdnet_tf.apps", "sdnet_tf.inference",
                                 "sdnet_tf.layers", "sdnet_tf.losses"])
    assert not reached, reached
    frameworks = set().union(*(_external(m) for m in _reach(module))) & (FRAMEWORKS | {"keras"})
    assert not frameworks, frameworks


@pytest.mark.parametrize("module", _package("sdnet_tf.metrics") + ["sdnet_tf.apps.evaluation",
                                                                   "sdnet_tf.apps.shape_eval"])
def test_scoring_knows_no_training(module):
    reached = _reaching(module, ["sdnet_tf.training", "sdnet_tf.apps.train"])
    assert not reached, reached


@pytest.mark.parametrize("module", [m for m in _package("sdnet_tf") if not m.startswith("sdnet_tf.apps")])
def test_the_core_knows_no_application(module):
    # applications (sdnet_tf.apps) use the core; nothing of the core reaches them
    reached = _reaching(module, ["sdnet_tf.apps", "cli"])
    assert not reached, reached


def _users(framework):
    return {m for m in _package("sdnet_tf") if framework in _external(m)}


def test_tensorflow_only_in_the_engines():
    assert _users("tensorflow") == TF_ENGINES
    assert not _users("tf_keras") and not _users("tensorflow_probability") and not _users("torch")


def test_jax_only_in_the_jax_engines():
    assert _users("jax") == JAX_ENGINES


@pytest.mark.parametrize("module", _package("sdnet_tf.models") + [
    "sdnet_tf.layers", "sdnet_tf.losses", "sdnet_tf.distributions", "sdnet_tf.training.objectives",
    "sdnet_tf.training.optimizers", "sdnet_tf.training.schedule", "sdnet_tf.training.trainer",
    "sdnet_tf.training.prior_objectives", "sdnet_tf.training.prior_trainer", "sdnet_tf.training.guard",
    "sdnet_tf.training.loop", "sdnet_tf.training.run_files", "sdnet_tf.training.engines",
    "sdnet_tf.apps.shape_eval", "sdnet_tf.apps.train"])
def test_no_framework_in_models_layers_losses_and_loops(module):
    # the loops reach an engine only through a function-level import chosen by the backend
    assert not _external(module) & FRAMEWORKS, _external(module) & FRAMEWORKS


@pytest.mark.parametrize("module", _package("sdnet_infer"))
def test_runtime_imports_only_its_dependencies(module):
    reached = _reaching(module, ["sdnet_tf", "cli"])
    assert not reached, reached
    roots = set().union(*(_external(m) for m in _reach(module))) - set(sys.stdlib_module_names)
    assert roots <= RUNTIME_ALLOWED, roots - RUNTIME_ALLOWED


def test_one_label_table():
    # the default spacing and SDNet's channel order are written once, in sdnet_infer/labels.py
    files = [ROOT / "export" / "onnx_export.py"] + [MODULES[m] for m in MODULES]
    spacing, orders = [], []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == 1.37:
                spacing.append(path.name)
            if isinstance(node, (ast.List, ast.Tuple)) and all(isinstance(e, ast.Constant) for e in node.elts):
                values = [e.value for e in node.elts]
                if values[:3] in ([2, 3, 1], [2.0, 3.0, 1.0], ["MYO", "LV", "RV"]) or values == ["background", "RV", "MYO", "LV"]:
                    orders.append(path.name)
    assert spacing == ["labels.py"] and orders == ["labels.py"], (spacing, orders)
