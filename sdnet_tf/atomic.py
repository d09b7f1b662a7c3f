"""Atomic file writes: write beside the target, then rename over it.

A reader (or a resumed run) sees either the old file or the complete new one, never a
half-written file. ``atomic_path`` is shared with the runtime package.
"""

import json
from pathlib import Path

from sdnet_infer.io import atomic_path

__all__ = ["atomic_path", "write_json", "write_text"]


def write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_json(path, value):
    return write_text(path, json.dumps(value, indent=2, default=str))
