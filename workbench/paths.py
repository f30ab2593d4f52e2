"""Where the workbench keeps caches, toy data, models and runs (each overridable by env var)."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """Root of every cache; `WORKBENCH_CACHE` overrides `~/.cache/workbench`."""
    return Path(os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench").expanduser()


def models_dir() -> Path:
    return cache_dir() / "models"


def toy_data_root() -> Path:
    """Data root holding the rendered toy datasets (CoOp layout)."""
    return Path(os.environ.get("WORKBENCH_TOY_DATA") or cache_dir() / "toy_data").expanduser()


def features_dir() -> Path:
    return cache_dir() / "features"


def runs_dir() -> Path:
    """Run registry root; `WORKBENCH_RUNS` overrides `<cache>/runs`."""
    return Path(os.environ.get("WORKBENCH_RUNS") or cache_dir() / "runs").expanduser()


@contextmanager
def staged_dir(final: Path):
    """Yields an empty temporary folder beside `final`; on success it replaces `final` (removed
    first if present), on error it is deleted, so readers never see a half-written folder."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
