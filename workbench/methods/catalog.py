"""What the registered methods are, for people: `workbench methods` and `workbench methods show NAME`.

`method_index()` answers without importing torch once it has been computed: the list (names, presets,
versions, paper names) is kept in `<cache>/method_index.json`, keyed by the size and modification time
of every file of this package, and recomputed when any of them changes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import sys
import tokenize
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _source_key() -> str:
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.glob("*.py")):
        st = path.stat()
        h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _index_path() -> Path:
    from ..paths import cache_dir

    return cache_dir() / "method_index.json"


def _compute_index() -> list[dict]:
    from . import get_method_class, list_methods

    out = []
    for name in list_methods():
        cls = get_method_class(name)
        out.append({"name": name, "presets": sorted(cls.presets), "default_preset": cls.default_preset,
                    "version": cls.version, "paper_names": list(getattr(cls, "paper_names", ())),
                    "trainable": bool(cls.trainable)})
    return out


def method_index() -> list[dict]:
    """[{name, presets, default_preset, version, paper_names, trainable}] of every registered method."""
    key = _source_key()
    path = _index_path()
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["methods"]
    except (OSError, ValueError, KeyError):
        pass
    methods = _compute_index()
    try:
        from ..fileio import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"key": key, "methods": methods}))
    except OSError:
        pass  # a read-only cache only costs speed
    return methods


def field_help(config_cls) -> dict[str, str]:
    """{field: meaning}: a field's `metadata["help"]`, else the comment at the end of its line."""
    import inspect

    comments: dict[str, str] = {}
    try:
        source = inspect.getsource(config_cls)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (OSError, TypeError, tokenize.TokenError):
        tokens = []
    line_name: dict[int, str] = {}
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.NAME and i + 1 < len(tokens) and tokens[i + 1].string == ":" \
                and tok.start[1] == 4 and tok.start[0] not in line_name:
            line_name[tok.start[0]] = tok.string
        if tok.type == tokenize.COMMENT and tok.start[0] in line_name:
            comments[line_name[tok.start[0]]] = tok.string.lstrip("#").strip()
    out = {}
    for f in dataclasses.fields(config_cls):
        out[f.name] = f.metadata.get("help") or comments.get(f.name, "")
    return out


def describe_method(name: str, backbone: str | None = None, classes: int = 10) -> str:
    """The settings of a method (type, default, meaning), its presets (description, values) and its
    trainable-parameter count on `backbone` at random init (no download)."""
    import typing

    from ..engine.train import TrainConfig
    from . import get_method_class

    cls = get_method_class(name)
    lines = [f"{cls.name} (behaviour version {cls.version})"]
    doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
    if doc:
        lines.append("  " + doc.splitlines()[0])
    if cls.paper_names:
        lines.append(f"  paper names: {', '.join(cls.paper_names)}")
    for title, config_cls, prefix in (("method settings", cls.Config, "method"),
                                      ("training settings", TrainConfig, "train")):
        lines.append(f"{title} (--set {prefix}.<name>=VALUE):")
        hints = typing.get_type_hints(config_cls)
        helps = field_help(config_cls)
        for f in dataclasses.fields(config_cls):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
            kind = str(hints.get(f.name, "")).replace("<class '", "").replace("'>", "")
            meaning = f"  # {helps[f.name]}" if helps.get(f.name) else ""
            lines.append(f"  {prefix}.{f.name}: {kind} = {default!r}{meaning}")
    lines.append(f"presets (default: {cls.default_preset}):")
    for preset_name, preset in sorted(cls.presets.items()):
        lines.append(f"  {preset_name}: {preset.description or '(no description)'}")
        values = {**{f"method.{k}": v for k, v in preset.method.items()},
                  **{f"train.{k}": v for k, v in preset.train.items()}}
        if values:
            lines.append("      " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
    lines.append(_parameter_line(cls, backbone, classes))
    return "\n".join(lines)


def _parameter_line(cls, backbone: str | None, classes: int) -> str:
    import torch

    from ..backbone import CLIPBackbone, trainable_parameter_report
    from .base import ClassTask, resolve_config

    import tempfile

    from ..data.knowledge import write_placeholder_files

    arch = backbone or "wb-tiny-vit"
    torch.manual_seed(0)
    try:
        bb = CLIPBackbone.from_pretrained(arch)
        names = tuple(f"class {i}" for i in range(classes))
        preset = cls.default_preset if cls.default_preset in cls.presets else None
        with tempfile.TemporaryDirectory() as folder:  # stand-in class knowledge for methods that read it (HPT)
            task = ClassTask("count", names, knowledge_files=write_placeholder_files(folder, names))
            method = cls(bb, task, resolve_config(cls, preset))
    except Exception as exc:  # noqa: BLE001 - e.g. a preset that does not fit this architecture
        return f"trainable parameters on {arch}: not counted ({type(exc).__name__}: {exc})"
    report = trainable_parameter_report(method)
    return (f"trainable parameters on {arch} (random init, {classes} classes, preset {preset}): "
            f"{report['trainable']:,} of {report['total']:,} ({report['trainable_percent']:.3f}%)")


def cached_index_is_fresh() -> bool:
    """True when `method_index()` would answer from the cache (no torch import)."""
    try:
        return json.loads(_index_path().read_text()).get("key") == _source_key()
    except (OSError, ValueError):
        return False


__all__ = ["cached_index_is_fresh", "describe_method", "field_help", "method_index"]
