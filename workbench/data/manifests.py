"""Dataset manifests: one YAML file per dataset in `data_manifests/datasets/<name>.yaml`.

A manifest says where a dataset lives under a data root (CoOp layout), how its splits are built,
which prompt templates and class-name renames apply, which counts to expect, and how to obtain it.
The folder is `<repo>/data_manifests/datasets`; `WORKBENCH_MANIFESTS` overrides it (point it at a
folder holding `<name>.yaml` files, or at a folder with a `datasets/` sub-folder).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

SPLIT_KINDS = ("split_file", "imagenet", "fgvc_aircraft", "variant_folders")
TOY_ROOT = "toy"  # default_root value that resolves to workbench.paths.toy_data_root()
DATA_ENV = "WORKBENCH_DATA"

_REQUIRED = ("name", "display_name", "folder", "image_dir", "split", "templates", "expected", "obtain", "license")
_OPTIONAL = ("classname_renames", "variant_of", "descriptions", "structures", "default_root")


class ManifestError(ValueError):
    """A manifest file is malformed."""


class UnknownDatasetError(KeyError):
    """No manifest has this name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataRootError(ValueError):
    """No data root was given and the dataset has no default one."""


@dataclass(frozen=True)
class SplitSpec:
    """How the train/val/test splits are built.

    kind = split_file:      `file` is a CoOp `split_zhou_*.json` inside the dataset folder.
    kind = imagenet:        class folders under `<image_dir>/<train_dir>` and `<image_dir>/<test_dir>`,
                            names from `classnames_file`; val = test (CoOp evaluates on ImageNet val).
    kind = fgvc_aircraft:   `variants_file` lists class names; `lists` maps split -> image list file.
    kind = variant_folders: a test-only ImageNet variant; `layout` is `wnid_folders` (one folder per
                            WordNet id, only the present ones) or `index_folders` (folders 0..999);
                            `ignore` names entries to skip; `classnames_file` is looked up in the
                            dataset folder first, then in the `variant_of` dataset's folder.
    """

    kind: str
    file: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass(frozen=True)
class Expected:
    classes: int | None = None
    train: int | None = None
    val: int | None = None
    test: int | None = None


@dataclass(frozen=True)
class Obtain:
    official: str = ""
    mirrors: tuple[str, ...] = ()
    instructions: str = ""


@dataclass(frozen=True)
class Manifest:
    name: str
    display_name: str
    folder: str
    image_dir: str
    split: SplitSpec
    templates: tuple[str, ...]
    expected: Expected
    obtain: Obtain
    license: str
    classname_renames: dict[str, str] = field(default_factory=dict)
    variant_of: str | None = None
    descriptions: str | None = None  # {classname: [sentences]} inside the dataset folder (data.knowledge)
    structures: str | None = None  # {classname: [structure]} in HPT's layout, one per description
    default_root: str | None = None
    source: Path | None = None  # the YAML file it came from

    @property
    def is_toy(self) -> bool:
        return self.default_root == TOY_ROOT

    @property
    def test_only(self) -> bool:
        return self.split.kind == "variant_folders"

    def resolve_root(self, root: str | os.PathLike | None = None) -> Path:
        """Explicit root > the manifest's default_root ("toy") > $WORKBENCH_DATA > error."""
        if root is not None and str(root) != "":
            return Path(root).expanduser()
        if self.default_root == TOY_ROOT:
            from workbench.paths import toy_data_root

            return toy_data_root()
        if self.default_root:
            return Path(self.default_root).expanduser()
        env = os.environ.get(DATA_ENV)
        if env:
            return Path(env).expanduser()
        raise DataRootError(
            f"dataset {self.name!r} needs a data root: pass --root DIR (or root=...) or set "
            f"{DATA_ENV}=DIR, where DIR holds {self.folder}/ in the CoOp layout"
        )

    def dataset_dir(self, root: str | os.PathLike | None = None) -> Path:
        return self.resolve_root(root) / self.folder

    def image_root(self, root: str | os.PathLike | None = None) -> Path:
        d = self.dataset_dir(root)
        return d if self.image_dir in ("", ".") else d / self.image_dir

    def fewshot_dir(self, root: str | os.PathLike | None = None) -> Path:
        return self.dataset_dir(root) / "split_fewshot"

    def how_to_obtain(self, root: str | os.PathLike | None = None, official: bool = True) -> str:
        """The manifest's instructions with {root}, {dataset_dir} and {image_dir} filled in, then sources."""
        try:
            r = self.resolve_root(root)
            values = {"root": str(r), "dataset_dir": str(r / self.folder), "image_dir": str(self.image_root(r))}
        except DataRootError:
            values = {"root": "$DATA", "dataset_dir": f"$DATA/{self.folder}", "image_dir": f"$DATA/{self.folder}/{self.image_dir}"}
        text = self.obtain.instructions.strip()
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
        lines = [text] if text else []
        if official and self.obtain.official:
            lines.append(f"official source: {self.obtain.official}")
        for m in self.obtain.mirrors:
            lines.append(f"mirror: {m}")
        return "\n".join(lines)


def manifests_dir() -> Path:
    env = os.environ.get("WORKBENCH_MANIFESTS")
    if env:
        p = Path(env).expanduser()
        return p / "datasets" if (p / "datasets").is_dir() else p
    return Path(__file__).resolve().parents[2] / "data_manifests" / "datasets"


def list_manifests() -> list[str]:
    """Names of all known datasets (sorted)."""
    d = manifests_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_manifest(name: str) -> Manifest:
    path = manifests_dir() / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_manifests()) or "(none)"
        raise UnknownDatasetError(f"unknown dataset {name!r}; known datasets: {known} (manifests in {manifests_dir()})")
    return _load_cached(str(path), path.stat().st_mtime_ns)


def load_all_manifests() -> list[Manifest]:
    return [load_manifest(n) for n in list_manifests()]


@lru_cache(maxsize=128)
def _load_cached(path: str, _mtime: int) -> Manifest:
    return parse_manifest(Path(path))


def parse_manifest(path: Path) -> Manifest:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level")
    return manifest_from_dict(raw, source=path)


def manifest_from_dict(raw: dict[str, Any], source: Path | None = None) -> Manifest:
    where = str(source) if source else "manifest"
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ManifestError(f"{where}: missing required field(s): {', '.join(missing)}")
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ManifestError(f"{where}: unknown field(s): {', '.join(unknown)}")
    if source is not None and raw["name"] != source.stem:
        raise ManifestError(f"{where}: name {raw['name']!r} differs from the file name {source.stem!r}")

    split_raw = raw["split"]
    if not isinstance(split_raw, dict) or "kind" not in split_raw:
        raise ManifestError(f"{where}: split must be a mapping with a 'kind'")
    kind = split_raw["kind"]
    if kind not in SPLIT_KINDS:
        raise ManifestError(f"{where}: split kind {kind!r} is not one of {', '.join(SPLIT_KINDS)}")
    options = {k: v for k, v in split_raw.items() if k not in ("kind", "file")}
    split = SplitSpec(kind=kind, file=split_raw.get("file"), options=options)
    if kind == "split_file" and not split.file:
        raise ManifestError(f"{where}: split kind split_file needs 'file'")

    templates = raw["templates"]
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise ManifestError(f"{where}: templates must be a non-empty list of strings containing '{{}}'")

    exp_raw = raw["expected"] or {}
    if not isinstance(exp_raw, dict):
        raise ManifestError(f"{where}: expected must be a mapping (or null)")
    bad = sorted(set(exp_raw) - {"classes", "train", "val", "test"})
    if bad:
        raise ManifestError(f"{where}: unknown expected field(s): {', '.join(bad)}")
    expected = Expected(**{k: (None if v is None else int(v)) for k, v in exp_raw.items()})

    ob = raw["obtain"] or {}
    if not isinstance(ob, dict):
        raise ManifestError(f"{where}: obtain must be a mapping")
    obtain = Obtain(
        official=str(ob.get("official") or ""),
        mirrors=tuple(str(m) for m in (ob.get("mirrors") or [])),
        instructions=str(ob.get("instructions") or ""),
    )
    renames = raw.get("classname_renames") or {}
    if not isinstance(renames, dict):
        raise ManifestError(f"{where}: classname_renames must be a mapping")

    return Manifest(
        name=str(raw["name"]),
        display_name=str(raw["display_name"]),
        folder=str(raw["folder"]),
        image_dir=str(raw["image_dir"] if raw["image_dir"] is not None else "."),
        split=split,
        templates=tuple(templates),
        expected=expected,
        obtain=obtain,
        license=str(raw["license"] or ""),
        classname_renames={str(k): str(v) for k, v in renames.items()},
        variant_of=raw.get("variant_of"),
        descriptions=raw.get("descriptions"),
        structures=raw.get("structures"),
        default_root=raw.get("default_root"),
        source=source,
    )
