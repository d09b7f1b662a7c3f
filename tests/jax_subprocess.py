"""Running code on the JAX backend from the (TensorFlow) pytest process.

Keras picks its backend once per process, so the tests run JAX code in a subprocess whose
environment blocks TensorFlow, as on a machine that has JAX only.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def jax_env(tmp_path):
    """A JAX subprocess' environment: the worktree's code, CPU only, TensorFlow blocked.

    XLA's CPU compile time dominates these tests; the classic threefry and LLVM without
    optimisation (code generation only: the same float32 operations) cut it by about half.
    """
    blocker = tmp_path / "block"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "tf_keras", "tensorboard"):
                    raise ImportError(f"{name} is blocked in this test")
                return None
        sys.meta_path.insert(0, _Block())
    """))
    path = [str(blocker), str(ROOT), str(ROOT / "export" / "runtime"), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", JAX_THREEFRY_PARTITIONABLE="0",
                XLA_FLAGS="--xla_backend_optimization_level=0", PYTHONPATH=os.pathsep.join(p for p in path if p))


def run_jax(tmp_path, args, timeout=900, env=None):
    result = subprocess.run([sys.executable, *args], env=env or jax_env(tmp_path), capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result
