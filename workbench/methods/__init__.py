"""Adaptation methods; each module registers one method with `register_method`."""
from __future__ import annotations

import importlib
import pkgutil

_NOT_METHODS = {"base", "common", "catalog"}
_BASE_EXPORTS = ("DOMAINS", "METHODS", "ClassTask", "LossOutput", "Method", "Preset", "UnknownMethodError",
                 "build_method", "get_method_class", "list_methods", "register_method", "resolve_config")
_loaded = False


def _load_all() -> None:
    """Import every method module in this package (each registers itself)."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_METHODS and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


def __getattr__(name: str):  # lazy: `workbench.methods.catalog` answers without importing torch
    if name in _BASE_EXPORTS:
        from . import base

        value = getattr(base, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'workbench.methods' has no attribute {name!r}")


__all__ = ["DOMAINS", "METHODS", "ClassTask", "LossOutput", "Method", "Preset", "UnknownMethodError",
           "build_method", "get_method_class", "list_methods", "register_method", "resolve_config"]
