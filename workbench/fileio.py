"""Atomic file writes: readers see the old file or the new one, never a partial one.

Each write goes to a temp file beside the target (same folder, so `os.replace` is atomic), is
fsynced, replaces the target, and the folder is fsynced so the rename survives a crash. A writer
killed mid-write leaves at most a temp file (see `temp_files`), never a damaged target. A full disk
raises `DiskFullError` (an OSError with errno ENOSPC) that names the folder and says what to do.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import random
from pathlib import Path
from typing import IO, Any, Callable

_rand = random.SystemRandom()  # never the global RNG: training code checkpoints its state
TEMP_MARK = ".tmp-"
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(OSError):
    """No space left (ENOSPC / EDQUOT) on the device holding `where`."""

    def __init__(self, where: str | os.PathLike, hint: str = "free space and try again"):
        self.where = Path(where)
        super().__init__(errno.ENOSPC, f"no space left on the device holding {self.where}: {hint}")

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(exc: BaseException | None) -> bool:
    """True for an ENOSPC / EDQUOT error, also when it is the cause or context of `exc` (torch.save
    turns a failed write into a RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temp name beside `path`: `.<name>.tmp-<pid>-<random>` (hidden, unique per writer)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{_rand.getrandbits(32):08x}")


def temp_files(folder: str | os.PathLike) -> list[Path]:
    """Temp files `atomic_write` left in `folder` (writers killed mid-write, or still writing)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and TEMP_MARK in p.name and p.is_file())


def remove_temp_files(folder: str | os.PathLike) -> None:
    """Delete `temp_files(folder)`; only safe where no other writer can be mid-write."""
    for p in temp_files(folder):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames in `folder` durable (best effort: not every platform can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write(f)` on a binary temp file beside `path`, then atomically put it in `path`'s place.

    `write` may be `lambda f: np.savez(f, **arrays)` or `lambda f: torch.save(obj, f)`. If it raises,
    the temp file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(path.parent) from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kw: Any) -> Path:
    """`json.dumps(obj, **dumps_kw)` written atomically (the text is built before the file is touched)."""
    return atomic_write_text(path, json.dumps(obj, **dumps_kw))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
