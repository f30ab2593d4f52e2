"""`RunSpec`: the complete, hashable description of one run (a plain record; no imports of ours).

A spec carries the *resolved* settings a run uses: every field of the method's config, every training
setting, the protocol's own settings and the behaviour versions of the engine, method, protocol and
few-shot splits. Build specs with `workbench.protocols.build_spec` (it resolves presets and validates
every setting); `execute` refuses a spec that is not fully resolved.

Two specs that describe the same experiment get the same `hash`, no matter how they were written:
dict key order, tuples vs lists, numpy vs Python numbers and `1.0` vs `1` do not matter; the display
`name` and the record of what the user set explicitly (`settings`) are not part of the hash. Every
other field is.

Specs written by older versions (with an `overrides` field and only a preset name) still load: they
keep their stored hash, have no `versions`, and count as stale (`is_legacy`).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from dataclasses import InitVar, dataclass, field
from pathlib import PurePath
from typing import Any, Mapping

SHORT_HASH_LEN = 12


def canonicalize(obj: Any) -> Any:
    """Normalize `obj` into plain JSON types so that equal values encode identically.

    dicts → dicts with str keys (sorted on dump); tuples/lists → lists; sets → sorted lists;
    integral floats → int (so `1.0` and `1` agree); -0.0 → 0; NaN/±inf → the strings "nan"/"inf"/"-inf";
    numpy/torch scalars → Python numbers; numpy arrays/tensors → nested lists; paths → str.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        if obj.is_integer() and abs(obj) < 2**53:
            return int(obj)
        return float(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            key = k if isinstance(k, str) else json.dumps(canonicalize(k), sort_keys=True)
            if key in out:
                raise ValueError(f"keys collide after canonicalization: {key!r}")
            out[key] = canonicalize(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [canonicalize(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [canonicalize(v) for v in obj]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, PurePath):
        return str(obj)
    # numpy / torch scalars and arrays, without importing either
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return canonicalize(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return canonicalize(obj.item())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return canonicalize(dataclasses.asdict(obj))
    raise TypeError(f"cannot canonicalize value of type {type(obj).__name__}: {obj!r}")


def canonical_json(obj: Any) -> str:
    """Deterministic compact JSON of `canonicalize(obj)` (sorted keys, ASCII only)."""
    return json.dumps(canonicalize(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Everything that determines a run's result. Construct with keywords (or `build_spec`).

    datasets: source dataset first, then the evaluation targets (may be just the source).
    shots: shots per class, None for full data / zero-shot.
    preset: the method preset the settings were resolved from (recorded; its values are in the configs).
    method_config / train_config / protocol_settings: the resolved settings (flat dicts of fields).
    versions: behaviour versions {"engine", "method", "protocol", "splits"} at build time.
    data: the data's identity: {"root": the resolved data root (None for toy data only), "datasets":
        {name: {"toy": world version} or {"split": sha256 of its split/class files}}}.
    settings: the flat settings the user gave explicitly (display only; not hashed).
    name: free display label; not hashed.
    """

    method: str
    protocol: str
    datasets: tuple[str, ...]
    shots: int | None = None
    seed: int = 1
    backbone: str = "toy"
    pretrained: str | None = None
    preset: str | None = None
    method_config: dict = field(default_factory=dict)
    train_config: dict = field(default_factory=dict)
    protocol_settings: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict, compare=False)
    name: str | None = field(default=None, compare=False)
    legacy: dict | None = field(default=None, compare=False, repr=False)  # payload of an old-format spec
    overrides: InitVar[dict | None] = None

    def __post_init__(self, overrides) -> None:
        def _set(attr, value):
            object.__setattr__(self, attr, value)

        if overrides:
            raise ValueError("RunSpec takes no `overrides`: build specs with workbench.protocols.build_spec("
                             "method, protocol, datasets, settings={'train.epochs': 1, 'method.n_ctx': 4}), "
                             "which resolves the preset and checks every setting")
        if not isinstance(self.method, str) or not self.method:
            raise ValueError("RunSpec.method must be a non-empty string")
        if not isinstance(self.protocol, str) or not self.protocol:
            raise ValueError("RunSpec.protocol must be a non-empty string")
        datasets = (self.datasets,) if isinstance(self.datasets, str) else tuple(self.datasets)
        if not datasets or not all(isinstance(d, str) and d for d in datasets):
            raise ValueError(f"RunSpec.datasets must be a non-empty sequence of names, got {self.datasets!r}")
        _set("datasets", datasets)
        for attr in ("shots", "seed"):
            value = getattr(self, attr)
            if value is None and attr == "shots":
                continue
            if isinstance(value, bool) or not isinstance(canonicalize(value), int):
                raise ValueError(f"RunSpec.{attr} must be an int, got {value!r}")
            _set(attr, int(canonicalize(value)))
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError("RunSpec.backbone must be a non-empty string")
        for attr in ("pretrained", "preset"):
            if getattr(self, attr) is not None and not isinstance(getattr(self, attr), str):
                raise ValueError(f"RunSpec.{attr} must be a string or None")
        for attr in ("method_config", "train_config", "protocol_settings", "versions", "data", "settings"):
            value = getattr(self, attr)
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ValueError(f"RunSpec.{attr} must be a dict, got {type(value).__name__}")
            canonicalize(value)  # fail early on values that cannot be hashed
            _set(attr, copy.deepcopy(dict(value)))

    # -- identity -------------------------------------------------------------------------------
    def hash_payload(self) -> dict:
        """The canonical dict that is hashed (everything but `name` and `settings`)."""
        if self.legacy is not None:
            return canonicalize({k: v for k, v in self.legacy.items() if k != "name"})
        d = self.to_dict()
        d.pop("name")
        d.pop("settings")
        return canonicalize(d)

    @property
    def hash(self) -> str:
        return hashlib.sha256(canonical_json(self.hash_payload()).encode("ascii")).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.hash[:SHORT_HASH_LEN]

    @property
    def data_root(self) -> str | None:
        """The data root the run reads its (non-toy) datasets from, as resolved when it was built."""
        return self.data.get("root")

    @property
    def is_legacy(self) -> bool:
        """Written by a version before resolved settings were recorded (its identity is the old one)."""
        return self.legacy is not None

    def __hash__(self) -> int:  # dict fields make the generated __hash__ unusable
        return hash(self.hash)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunSpec):
            return NotImplemented
        return self.hash == other.hash

    # -- conveniences ---------------------------------------------------------------------------
    @property
    def source(self) -> str:
        return self.datasets[0]

    @property
    def targets(self) -> tuple[str, ...]:
        return self.datasets[1:]

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        shots = "full" if self.shots is None else f"{self.shots}shot"
        return f"{self.method}/{self.protocol}/{self.source}/{shots}/seed{self.seed}"

    def replace(self, **changes: Any) -> "RunSpec":
        return dataclasses.replace(self, legacy=None, **changes)

    def resolved_settings(self) -> dict:
        """Every setting the run used, as flat namespaced keys (`method.*`, `train.*`, `<protocol>.*`)."""
        out = {f"method.{k}": v for k, v in self.method_config.items()}
        out.update({f"train.{k}": v for k, v in self.train_config.items()})
        out.update({f"{self.protocol}.{k}": v for k, v in self.protocol_settings.items()})
        return out

    # -- (de)serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        if self.legacy is not None:
            return {**copy.deepcopy(self.legacy), "name": self.name}
        return {
            "method": self.method,
            "protocol": self.protocol,
            "datasets": list(self.datasets),
            "shots": self.shots,
            "seed": self.seed,
            "backbone": self.backbone,
            "pretrained": self.pretrained,
            "preset": self.preset,
            "method_config": copy.deepcopy(self.method_config),
            "train_config": copy.deepcopy(self.train_config),
            "protocol_settings": copy.deepcopy(self.protocol_settings),
            "versions": copy.deepcopy(self.versions),
            "data": copy.deepcopy(self.data),
            "settings": copy.deepcopy(self.settings),
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunSpec":
        """Inverse of `to_dict`. Keys "hash"/"short_hash" (as stored in spec.json) are ignored; an
        old-format dict (with `overrides`) loads as a legacy spec with its old hash."""
        d = dict(d)
        d.pop("hash", None)
        d.pop("short_hash", None)
        if "overrides" in d:
            return cls._from_legacy(d)
        names = {f.name for f in dataclasses.fields(cls)} - {"legacy"}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown RunSpec fields: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def _from_legacy(cls, d: dict) -> "RunSpec":
        payload = {k: copy.deepcopy(v) for k, v in d.items() if k != "name"}
        config = dict(d.get("method_config") or {})
        preset = config.pop("preset", None)
        train = {k.removeprefix("train."): v for k, v in (d.get("overrides") or {}).items()}
        return cls(method=d["method"], protocol=d["protocol"], datasets=tuple(d["datasets"]), shots=d.get("shots"),
                   seed=d.get("seed", 1), backbone=d.get("backbone", "toy"), pretrained=d.get("pretrained"),
                   preset=preset if isinstance(preset, str) else None, method_config=config, train_config=train,
                   name=d.get("name"), legacy=payload)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        return cls.from_dict(json.loads(text))
