"""Evaluation protocols and the one spec builder.

Imports are lazy: `workbench.protocols.runspec` (the RunSpec record) and the builder's setting tables
load without torch; the protocols themselves (and torch) load on first use of `PROTOCOLS`.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "PROTOCOLS": "registry", "ProtocolInfo": "base", "UnknownProtocolError": "base", "RunContext": "base",
    "train_config_for": "base", "get_protocol": "registry",
    "RunSpec": "runspec", "SpecError": "builder", "build_spec": "builder", "build_specs": "builder",
    "resolve_preset": "builder", "current_versions": "builder", "stale_reason": "builder",
    "check_resolved": "builder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'workbench.protocols' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
