"""Process-level settings applied before TensorFlow, Keras or JAX is imported.

Keras reads its backend from ``KERAS_BACKEND`` once, when it is first imported, and a
process can hold only one; ``select_backend`` sets it for a run (see its docstring).

glibc's allocator returns large freed blocks to the kernel and maps big allocations with
mmap, so every training step can pay for page faults on fresh memory. ``tune_allocator``
keeps freed memory in the process, the in-process equivalent of
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` (the trim threshold capped at 2 GiB, the
largest value ``mallopt`` takes). Whether that helps depends on the iteration
(benchmarks/RESULTS.md): with XLA at 224 x 224 it made an iteration 9% faster; with XLA at 128
it made it 12% slower, and with plain ``tf.function`` at 64 and 128 15% and 4% slower (medians
of three invocations on an AVX-512 machine). So by default (``SDNET_TF_ALLOCATOR=auto``) the
TensorFlow engine tunes it only where it measured faster (``speed.choose_allocator_tuning``:
XLA, when asked for, on a CPU from 192 x 192 up), and nothing else does; ``SDNET_TF_ALLOCATOR=tuned`` tunes it
for every command from start-up and ``default`` never.
"""

import ctypes
import ctypes.util
import importlib.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 64 * 1024 ** 3


ALLOCATOR_SETTINGS = ("auto", "tuned", "default")


def allocator_setting():
    """``SDNET_TF_ALLOCATOR`` (``auto`` when unset).

    Raises:
        ValueError: a value other than ``auto``, ``tuned`` or ``default``, naming the variable.
    """
    value = os.environ.get("SDNET_TF_ALLOCATOR", "auto").strip().lower() or "auto"
    if value not in ALLOCATOR_SETTINGS:
        raise ValueError(f"SDNET_TF_ALLOCATOR={value!r}: use one of {', '.join(ALLOCATOR_SETTINGS)}")
    return value


def tune_allocator(when_auto=True):
    """Apply the allocator settings as ``SDNET_TF_ALLOCATOR`` says: always for ``tuned``,
    never for ``default``, and for ``auto`` when ``when_auto`` (the TensorFlow engine passes
    whether it compiles with XLA). Returns True when they were applied.

    Raises:
        ValueError: an unknown ``SDNET_TF_ALLOCATOR`` (``allocator_setting``).
    """
    setting = allocator_setting()
    if setting == "default" or (setting == "auto" and not when_auto):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(_TRIM_THRESHOLD, 2 ** 31 - 1))) == 1 and ok
    except (OSError, AttributeError):
        return False
    return ok


QUIET_LOGGERS = ("absl", "tensorflow", "h5py", "jax", "tf2onnx", "onnx", "onnxruntime")


def quiet_tensorflow(verbose=False):
    """Hide TensorFlow's, absl's, XLA's, JAX's and tf2onnx's log lines unless ``verbose``.

    Call it before TensorFlow is imported: ``TF_CPP_MIN_LOG_LEVEL`` (3: none of TensorFlow's C++
    messages, the cuInit error of a CPU machine included) is read when TensorFlow loads; a value
    already in the environment is kept. The Python loggers of these libraries are set to show
    errors only. With ``verbose`` everything is shown.
    """
    import logging

    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def import_tensorflow_quietly():
    """Import TensorFlow with the process's stderr (file descriptor 2) muted.

    TensorFlow 2.21's C++ code writes a few lines (oneDNN, "Could not find cuda drivers")
    through absl before its logging is initialised, which no environment variable silences;
    they are written while TensorFlow loads, so muting descriptor 2 for the import hides them.
    A failing import is raised as usual once stderr is back. Does nothing when TensorFlow is
    already imported or not installed.
    """
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                importlib.import_module("tensorflow")  # loads it only; no code here uses TensorFlow
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


BACKENDS = ("tensorflow", "jax")


def select_backend(name):
    """Make Keras run on ``name`` ("tensorflow" or "jax"); call it before Keras is imported.

    Sets ``KERAS_BACKEND``. A conflicting ``KERAS_BACKEND`` in the environment, or Keras
    already imported on the other backend, is refused rather than silently overridden. For
    JAX it also defaults ``JAX_THREEFRY_PARTITIONABLE`` to 0: the partitionable threefry
    generator (JAX's default) only matters for arrays sharded over several devices, and
    XLA's CPU compiler takes 5-15 s per weight shape to compile it (80 s to initialise even
    the tiny test SDNet on 2 cores) against under 1 s for the classic one.

    Raises:
        ValueError: an unknown backend, or a conflicting ``KERAS_BACKEND``.
        ImportError: "jax" when jax is not installed.
        RuntimeError: Keras was already imported on another backend.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r}: expected one of {', '.join(BACKENDS)}")
    if "keras" in sys.modules:
        loaded = sys.modules["keras"].backend.backend()
        if loaded != name:
            raise RuntimeError(f"Keras was already imported on the {loaded!r} backend; "
                               f"the {name!r} backend needs a fresh process")
        return
    if name == "jax" and importlib.util.find_spec("jax") is None:
        raise ImportError("the JAX backend needs jax: install with pip install 'sdnet-tf[jax]'")
    current = os.environ.get("KERAS_BACKEND")
    if current and current != name:
        raise ValueError(f"KERAS_BACKEND={current} is set in the environment but the {name!r} backend is needed: "
                         f"unset KERAS_BACKEND, or for training pass --backend {current}")
    os.environ["KERAS_BACKEND"] = name
    if name == "jax":
        os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")


def require_backend(name):
    """Check that Keras runs on ``name``, a run's ``train.backend``.

    Keras fixes its backend when it is first imported (``KERAS_BACKEND``), so an engine
    cannot switch it; a mismatch is refused rather than training on the other backend.

    Raises:
        ValueError: an unknown backend.
        RuntimeError: Keras runs on another backend.
    """
    if name not in BACKENDS:
        raise ValueError(f"train.backend {name!r}: expected one of {', '.join(BACKENDS)}")
    import keras

    running = keras.backend.backend()
    if running != name:
        raise RuntimeError(f"train.backend is {name!r} but Keras runs on {running!r}: set KERAS_BACKEND={name} "
                           "before Keras is imported (the sdnet-tf command does this for --backend)")
