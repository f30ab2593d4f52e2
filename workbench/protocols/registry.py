"""The registered protocols: importing this module imports every protocol module of this package
(each registers its protocols with `register_protocol`)."""
from __future__ import annotations

import importlib
import pkgutil

from .base import PROTOCOLS, ProtocolInfo, UnknownProtocolError

_NOT_PROTOCOLS = {"base", "builder", "registry", "runspec", "settings"}

for _info in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
    if _info.name not in _NOT_PROTOCOLS and not _info.name.startswith("_"):
        importlib.import_module(f"{__package__}.{_info.name}")


def get_protocol(name: str) -> ProtocolInfo:
    if name not in PROTOCOLS:
        raise UnknownProtocolError(f"unknown protocol {name!r}; available: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]
