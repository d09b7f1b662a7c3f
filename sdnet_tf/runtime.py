"""Process-level settings applied before TensorFlow is imported.

glibc's allocator returns large freed blocks to the kernel and maps big allocations with
mmap, so every training step pays for page faults on fresh memory; on a 2-core machine that
churn cost 10-25% of a training iteration (see benchmarks/RESULTS.md). ``tune_allocator``
keeps freed memory in the process, the in-process equivalent of
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736``. Set ``SDNET_TF_ALLOCATOR=default``
to leave the allocator alone.
"""

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 64 * 1024 ** 3


def tune_allocator():
    """Apply the allocator settings; returns True when they were applied."""
    if os.environ.get("SDNET_TF_ALLOCATOR", "tuned") == "default":
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


def quiet_tensorflow():
    """Hide TensorFlow's C++ start-up chatter unless the user asked for it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
