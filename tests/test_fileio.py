"""Atomic writes: the target is the old file or the new one, never partial, and no temp file stays."""
from __future__ import annotations

import json

import numpy as np
import pytest

from workbench import fileio


def test_writes_leave_only_the_target(tmp_path):
    fileio.atomic_write_text(tmp_path / "a.txt", "héllo\n")
    fileio.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    fileio.atomic_write_json(tmp_path / "c.json", {"x": [1, 2]}, indent=2)
    fileio.atomic_write(tmp_path / "d.npz", lambda f: np.savez(f, w=np.arange(3)))
    fileio.atomic_write_text(tmp_path / "a.txt", "replaced")  # over an existing file
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "replaced"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2]}
    with np.load(tmp_path / "d.npz") as z:
        np.testing.assert_array_equal(z["w"], [0, 1, 2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.json", "d.npz"]
    assert fileio.temp_files(tmp_path) == []


def test_crash_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.npz"
    fileio.atomic_write(path, lambda f: np.savez(f, w=np.zeros(4)))
    before = path.read_bytes()

    def half_then_crash(f):
        f.write(before[: len(before) // 2])
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write(path, half_then_crash)
    with pytest.raises(TypeError):  # an unserializable object fails before the file is touched
        fileio.atomic_write_json(path, {"x": object()})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["state.npz"]
    with pytest.raises(FileNotFoundError):  # no folder: nothing is created
        fileio.atomic_write_text(tmp_path / "missing" / "x.txt", "x")


def test_temp_files_of_killed_writers(tmp_path):
    stray = fileio.temp_path(tmp_path / "epoch_0001.pt")
    stray.write_bytes(b"half")
    (tmp_path / "epoch_0001.pt").write_bytes(b"whole")
    (tmp_path / ".lock").touch()
    assert stray.parent == tmp_path and stray.name.startswith(".epoch_0001.pt")
    assert fileio.temp_files(tmp_path) == [stray]
    fileio.remove_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "epoch_0001.pt"]
    assert fileio.temp_files(tmp_path / "nothing") == []
