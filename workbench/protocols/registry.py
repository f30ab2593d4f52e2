"""The registered protocols (importing this module registers the standard ones)."""
from __future__ import annotations

from . import standard  # noqa: F401  (registers the protocols)
from .base import PROTOCOLS, ProtocolInfo, UnknownProtocolError


def get_protocol(name: str) -> ProtocolInfo:
    if name not in PROTOCOLS:
        raise UnknownProtocolError(f"unknown protocol {name!r}; available: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]
