"""Atomic file writes: write beside the target, then rename over it.

A reader (or a resumed run) sees either the old file or the complete new one, never a
half-written file. The helpers live in the runtime package, which shares them.
"""

from sdnet_infer.io import atomic_path, write_json, write_text

__all__ = ["atomic_path", "write_json", "write_text"]
