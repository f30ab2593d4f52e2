"""Evaluation protocols; `execute(spec)` runs one RunSpec into the registry."""
from . import standard  # noqa: F401  (registers the protocols)
from .base import PROTOCOLS, UnknownProtocolError, execute, resolve_preset, train_config_for

__all__ = ["PROTOCOLS", "UnknownProtocolError", "execute", "resolve_preset", "train_config_for"]
