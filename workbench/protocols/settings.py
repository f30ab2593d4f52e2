"""Settings as flat namespaced keys (`method.n_ctx`, `train.lr`, `<protocol namespace>.steps`), checked
against the declared type of the dataclass field they set.

    flatten_settings({"train": {"epochs": 1}, "method.n_ctx": 4})  -> {"train.epochs": 1, "method.n_ctx": 4}
    parse_setting_strings(["train.lr=1e-3"])                       -> {"train.lr": "1e-3"}  (YAML scalars)
    coerce("1e-3", float, "train.lr")                               -> 0.001
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Iterable, Mapping


class SettingError(ValueError):
    """A setting is unknown or has a value of the wrong type; the message names the setting."""


def parse_setting_strings(items: Iterable[str]) -> dict[str, Any]:
    """"KEY=VALUE" strings -> {KEY: value}; values are parsed as YAML (numbers, lists, true/false)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise SettingError(f"a setting must be KEY=VALUE (e.g. train.epochs=5), got {item!r}")
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise SettingError(f"{key}: cannot read the value {raw!r} ({exc.__class__.__name__})") from None
    return out


def flatten_settings(settings: Mapping[str, Any] | Iterable[str] | None, namespaces: Iterable[str]) -> dict[str, Any]:
    """A flat {"ns.field": value} dict from a flat or nested dict, or from "KEY=VALUE" strings. Only a
    namespace's own dict is flattened ({"train": {"epochs": 1}}); any other dict stays a value."""
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        if isinstance(settings, str):
            settings = [settings]
        return parse_setting_strings(settings)
    namespaces = set(namespaces)
    out: dict[str, Any] = {}
    for key, value in settings.items():
        key = str(key)
        if key in namespaces and isinstance(value, Mapping):
            for sub, v in value.items():
                out[f"{key}.{sub}"] = v
        else:
            out[key] = value
    return out


def field_types(config_cls: type) -> dict[str, Any]:
    """{field name: resolved type hint} of a dataclass."""
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(config_cls)}


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if isinstance(hint, type):
        return {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string"}.get(
            hint.__name__, hint.__name__)
    return str(hint).replace("typing.", "")


def coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` as the type `hint` declares, or SettingError naming `key`. Accepts what YAML and JSON
    produce for it: "1e-3" for a float, a list for a tuple, an integral float for an int."""
    try:
        return _coerce(value, hint)
    except (TypeError, ValueError):
        raise SettingError(f"{key} expects {_describe(hint)}, got {value!r}") from None


def _coerce(value: Any, hint: Any) -> Any:
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            raise TypeError
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError):
                continue
        raise TypeError
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise ValueError
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise TypeError
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError
            return tuple(_coerce(v, a) for v, a in zip(value, args))
        item = args[0] if args else Any
        items = [_coerce(v, item) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise TypeError
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if hint is int:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise TypeError
    if hint is float:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value)  # "1e-3": YAML 1.1 reads it as a string
        raise TypeError
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise TypeError
