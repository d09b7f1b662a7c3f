"""Atomic writes (sdnet_infer.io.atomic_path) when two writers target one file at once."""

import numpy as np

from sdnet_infer.io import atomic_path


def test_two_writers_of_one_file_both_succeed_and_the_last_rename_wins(tmp_path):
    # parallel training runs fill one preprocessing cache: with a shared temporary name the
    # first rename took the other's file away and the second writer failed (ENOENT)
    target = tmp_path / "acdc-cache.npz"
    with atomic_path(target, shared=True) as first:
        with atomic_path(target, shared=True) as second:
            assert first != second and first.parent == second.parent == tmp_path
            np.savez(second, x=np.arange(3))
        np.savez(first, x=np.arange(5))
    with np.load(target) as data:
        assert data["x"].tolist() == [0, 1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["acdc-cache.npz"]


def test_the_temporary_name_keeps_the_full_suffix_and_is_fixed_unless_shared(tmp_path):
    # numpy, nibabel and keras pick the format from the suffix (np.savez appends .npz otherwise);
    # a fixed name means a write killed midway leaves one file, replaced by the next write
    with atomic_path(tmp_path / "case.nii.gz") as tmp:
        assert tmp.name == "case.tmp.nii.gz"
        tmp.write_bytes(b"x")
    assert (tmp_path / "case.nii.gz").read_bytes() == b"x"
    with atomic_path(tmp_path / "case.nii.gz", shared=True) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.name.startswith("case.tmp-")
        tmp.write_bytes(b"y")
    assert (tmp_path / "case.nii.gz").read_bytes() == b"y"


def test_a_shared_write_removes_temporary_files_of_ended_processes_only(tmp_path):
    import subprocess
    import sys

    from sdnet_infer.io import _host_tag

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True).stdout.strip()
    host = _host_tag()
    orphan = tmp_path / f"cache.tmp-{host}-{ended}-0123abcd.npz"  # a write killed midway
    alive = tmp_path / f"cache.tmp-{host}-1-0123abcd.npz"  # process 1 runs: it may still rename
    elsewhere = tmp_path / f"cache.tmp-otherhost-{ended}-0123abcd.npz"  # another host's writer
    other = tmp_path / f"other.tmp-{host}-{ended}-0123abcd.npz"  # another file's
    for leftover in (orphan, alive, elsewhere, other):
        leftover.write_bytes(b"partial")
    with atomic_path(tmp_path / "cache.npz", shared=True) as tmp:
        np.savez(tmp, x=np.arange(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cache.npz", alive.name, elsewhere.name, other.name])
