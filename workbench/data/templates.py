"""Named prompt-template sets: the templates a method's released code uses instead of the dataset's own
(CoOp's, in the manifests). One YAML file per set in `data_manifests/templates/<name>.yaml`:

    name: prograd
    source: "<repository> <file>, <variable>"   # where the released code defines them
    note: "..."                                 # what the method uses them for
    all: [...]                                  # the same templates for every dataset, or
    datasets: {oxford_pets: [...], ...}         # per dataset; others fall back to the manifest's templates
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from .manifests import ManifestError


def templates_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "data_manifests" / "templates"


@dataclass(frozen=True)
class TemplateSet:
    name: str
    source: str
    note: str = ""
    all: tuple[str, ...] | None = None
    datasets: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def for_dataset(self, dataset: str) -> tuple[str, ...] | None:
        """This set's templates for `dataset` (a manifest name), or None where the set has none."""
        return self.all if self.all is not None else self.datasets.get(dataset)


def list_template_sets() -> list[str]:
    return sorted(p.stem for p in templates_dir().glob("*.yaml"))


@lru_cache(maxsize=32)
def load_template_set(name: str) -> TemplateSet:
    path = templates_dir() / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown template set {name!r}; known: {', '.join(list_template_sets())}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or raw.get("name") != name or not raw.get("source"):
        raise ManifestError(f"{path}: needs 'name' (= the file name) and 'source'")
    if (raw.get("all") is None) == (raw.get("datasets") is None):
        raise ManifestError(f"{path}: give exactly one of 'all' and 'datasets'")

    def checked(templates, where):
        if not isinstance(templates, list) or not templates or not all(
                isinstance(t, str) and "{}" in t for t in templates):
            raise ManifestError(f"{path}: {where} must be a non-empty list of strings containing '{{}}'")
        return tuple(templates)

    every = checked(raw["all"], "all") if raw.get("all") is not None else None
    per = {str(k): checked(v, k) for k, v in (raw.get("datasets") or {}).items()}
    return TemplateSet(name, str(raw["source"]), str(raw.get("note") or ""), every, per)
