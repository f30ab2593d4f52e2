"""The embedded offline default: a procedurally generated toy world and a tiny CLIP pretrained on it.

- `ensure_toy_data()` renders the toy datasets (CoOp layout) under `workbench.paths.toy_data_root()`.
- `ensure_embedded_model()` returns the `local-dir:` folder of the tiny CLIP under
  `workbench.paths.models_dir()/toy-clip`, pretraining it first if it is missing or stale.

Heavy imports (torch, open_clip) happen only when a model is needed.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from .datasets import (DEFAULT_DATA_SEED, SPECS, TOY_OBJECTS, TOY_OBJECTS_SHIFTED, TOY_VOCAB, build_all,
                       dataset_is_current, knowledge_is_current)
from .world import WORLD_VERSION

EMBEDDED_MODEL_DIRNAME = "toy-clip"
TOY_DATASETS = (TOY_OBJECTS, TOY_OBJECTS_SHIFTED, TOY_VOCAB)

__all__ = [
    "EMBEDDED_MODEL_DIRNAME",
    "TOY_DATASETS",
    "TOY_OBJECTS",
    "TOY_OBJECTS_SHIFTED",
    "TOY_VOCAB",
    "WORLD_VERSION",
    "embedded_model_dir",
    "embedded_model_status",
    "ensure_embedded_model",
    "ensure_toy_data",
    "toy_data_is_current",
]


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive inter-process lock (no-op where fcntl is unavailable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def toy_data_is_current(root: Path | None = None) -> bool:
    from workbench.paths import toy_data_root

    root = Path(root) if root is not None else toy_data_root()
    return all(dataset_is_current(root / name, DEFAULT_DATA_SEED) and knowledge_is_current(root / name) for name in SPECS)


def ensure_toy_data(force: bool = False) -> Path:
    """Render the toy datasets if missing (or stale, or `force`); returns `toy_data_root()`."""
    from workbench.paths import toy_data_root

    root = toy_data_root()
    if force or not toy_data_is_current(root):
        with _file_lock(root / ".build.lock"):
            build_all(root, DEFAULT_DATA_SEED, force=force)
    return root


def embedded_model_dir() -> Path:
    from workbench.paths import models_dir

    return models_dir() / EMBEDDED_MODEL_DIRNAME


def embedded_model_status(path: Path | None = None, verify_hash: bool = True) -> tuple[bool, str, dict | None]:
    """(usable, reason, metadata) of the embedded model folder.

    Usable means: config, weights and workbench_model.json exist, the world version and the model
    config match the current code, and (if `verify_hash`) the weights' sha256 matches the record.
    """
    from .pretrain import CONFIG_FILE, PRETRAIN_VERSION, WEIGHTS_FILE, model_config, read_meta, sha256_file

    path = Path(path) if path is not None else embedded_model_dir()
    meta = read_meta(path)
    if meta is None or not (path / WEIGHTS_FILE).is_file() or not (path / CONFIG_FILE).is_file():
        return False, "missing", meta
    if meta.get("world_version") != WORLD_VERSION:
        return False, f"world version {meta.get('world_version')} != {WORLD_VERSION}", meta
    if meta.get("pretrain_version") != PRETRAIN_VERSION:
        return False, f"pretraining recipe {meta.get('pretrain_version')} != {PRETRAIN_VERSION}", meta
    try:
        saved_cfg = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))["model_cfg"]
    except (OSError, ValueError, KeyError):
        return False, "unreadable open_clip_config.json", meta
    if saved_cfg != model_config():
        return False, "model config changed", meta
    if verify_hash and sha256_file(path / WEIGHTS_FILE) != meta.get("weights_sha256"):
        return False, "weights hash mismatch", meta
    return True, "ok", meta


def ensure_embedded_model(force: bool = False, steps: int | None = None, seed: int | None = None,
                          progress: bool = True, measure: bool = True) -> Path:
    """The `local-dir:` folder of the embedded toy CLIP, pretrained first if needed.

    Pretrains when the folder is missing or stale (hash, world version or model config), when
    `force`, or when an explicit `steps`/`seed` differs from the stored model's.
    """
    from .pretrain import DEFAULT_SEED, pretrain

    path = embedded_model_dir()

    def usable() -> bool:
        ok, _, meta = embedded_model_status(path)
        if not ok or meta is None:
            return False
        if steps is not None and meta.get("steps") != steps:
            return False
        return seed is None or meta.get("seed") == seed

    if not force and usable():
        return path
    with _file_lock(path.parent / f".{EMBEDDED_MODEL_DIRNAME}.lock"):
        if not force and usable():  # someone else built it meanwhile
            return path
        data_root = ensure_toy_data() if measure else None
        pretrain(path, steps=steps, seed=DEFAULT_SEED if seed is None else seed, progress=progress,
                 measure=measure, data_root=data_root)
    return path
