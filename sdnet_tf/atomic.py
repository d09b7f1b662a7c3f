"""Atomic file writes: write beside the target, then rename over it.

A reader (or a resumed run) sees either the old file or the complete new one, never a
half-written file.
"""

import contextlib
import json
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the full suffix (``.nii.gz``, ``.keras``, ``.npz``), which the
    writing libraries use to pick the format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, dot, suffix = path.name.partition(".")
    tmp = path.with_name(f"{stem}.tmp{dot}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_json(path, value):
    return write_text(path, json.dumps(value, indent=2, default=str))
