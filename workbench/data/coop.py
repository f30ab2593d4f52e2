"""Loaders for datasets in the CoOp folder layout (real datasets and the rendered toy world).

Four split kinds (see `manifests.SplitSpec`):
- split_file:      read `split_zhou_<Name>.json` ({"train"|"val"|"test": [[relpath, label, classname]]}).
- imagenet:        class folders under images/train and images/val + classnames.txt; val is the test
                   set and also serves as val (as in CoOp). Image file names are sorted (CoOp keeps
                   the file-system order, which differs between machines).
- fgvc_aircraft:   variants.txt + images_variant_{train,val,test}.txt.
- variant_folders: test-only ImageNet variants. Class names come from ImageNet's classnames.txt;
                   `DatasetSplits.parent_labels` maps each class to its ImageNet label. ImageNet-A/R
                   keep only the 200 folders present, labelled 0..199 in sorted folder order as in
                   CoOp (so scores are 200-way); ImageNetV2's folders 0..999 are ImageNet labels.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

from workbench.data.knowledge import knowledge_files
from workbench.data.manifests import Manifest, load_manifest
from workbench.data.types import DatasetSplits, Sample


class DatasetMissingError(FileNotFoundError):
    """A dataset (or a file it needs) is not where its manifest says; the message says how to get it.

    `path` is the exact path that was expected, `what` names it ("dataset folder", "split file", ...).
    """

    def __init__(self, message: str, path: Path | None = None, what: str = ""):
        super().__init__(message)
        self.path = path
        self.what = what

    def __str__(self) -> str:
        return str(self.args[0])


class DatasetFormatError(ValueError):
    """A dataset's split or class-name file is malformed."""


def load_dataset(name: str, root: str | os.PathLike | None = None) -> DatasetSplits:
    """Load dataset `name` from `root` (None: the manifest's default root, else $WORKBENCH_DATA)."""
    return load_from_manifest(load_manifest(name), root)


def load_from_manifest(m: Manifest, root: str | os.PathLike | None = None) -> DatasetSplits:
    data_root = m.resolve_root(root)
    dataset_dir = data_root / m.folder
    image_root = m.image_root(data_root)
    if not dataset_dir.is_dir():
        raise _missing(m, data_root, dataset_dir, "dataset folder")
    if not image_root.is_dir():
        raise _missing(m, data_root, image_root, "image folder")

    kind = m.split.kind
    parent_labels = None
    if kind == "split_file":
        train, val, test, classnames = _read_split_file(m, data_root, dataset_dir / m.split.file)
    elif kind == "imagenet":
        train, val, test, classnames = _read_imagenet(m, data_root, dataset_dir, image_root)
    elif kind == "fgvc_aircraft":
        train, val, test, classnames = _read_aircraft(m, data_root, dataset_dir)
    elif kind == "variant_folders":
        test, classnames, parent_labels = _read_variant(m, data_root, dataset_dir, image_root)
        train, val = [], []
    else:  # guarded by the manifest parser
        raise DatasetFormatError(f"unknown split kind {kind!r}")

    return DatasetSplits(
        name=m.name,
        image_root=image_root,
        classnames=classnames,
        templates=list(m.templates),
        train=train,
        val=val,
        test=test,
        descriptions=_read_descriptions(m, dataset_dir),
        knowledge_files=knowledge_files(m, dataset_dir) or None,
        parent_labels=parent_labels,
    )


# ----------------------------------------------------------------------------------------------
def _missing(m: Manifest, data_root: Path, path: Path, what: str) -> DatasetMissingError:
    return DatasetMissingError(_missing_message(m, data_root, path, what), path=path, what=what)


def _missing_message(m: Manifest, data_root: Path, path: Path, what: str) -> str:
    return (
        f"{m.display_name} ({m.name}): {what} not found: {path}\n"
        f"expected layout: {data_root}/{m.folder}/{'' if m.image_dir in ('', '.') else m.image_dir + '/'}...\n"
        f"how to obtain it:\n{_indent(m.how_to_obtain(data_root))}"
    )


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _rename(m: Manifest, classname: str) -> str:
    return m.classname_renames.get(classname, classname)


def _read_split_file(m: Manifest, data_root: Path, path: Path):
    if not path.is_file():
        raise _missing(m, data_root, path, "split file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{path}: expected an object with train/val/test lists")
    names: dict[int, str] = {}
    splits = {}
    for split in ("train", "val", "test"):
        items = raw.get(split) or []
        out = []
        for i, entry in enumerate(items):
            try:
                rel, label, cname = entry
                label = int(label)
            except (TypeError, ValueError) as e:
                raise DatasetFormatError(f"{path}: {split}[{i}] is not [relative_path, label, classname]: {entry!r}") from e
            cname = _rename(m, str(cname))
            prev = names.setdefault(label, cname)
            if prev != cname:
                raise DatasetFormatError(f"{path}: label {label} has two class names: {prev!r} and {cname!r}")
            out.append(Sample(path=_posix(rel), label=label, classname=cname))
        splits[split] = out
    classnames = _classnames_from_labels(names, str(path))
    return splits["train"], splits["val"], splits["test"], classnames


def _classnames_from_labels(names: dict[int, str], where: str) -> list[str]:
    if not names:
        return []
    n = max(names) + 1
    missing = [i for i in range(n) if i not in names]
    if missing or min(names) < 0:
        raise DatasetFormatError(f"{where}: labels must be 0..{n - 1}; missing {missing[:10]}")
    return [names[i] for i in range(n)]


def _posix(rel: str) -> str:
    rel = str(rel).replace("\\", "/")
    return rel[1:] if rel.startswith("/") else rel


def read_classnames_file(path: Path) -> "OrderedDict[str, str]":
    """`<folder> <class name with spaces>` per line -> ordered {folder: class name}."""
    out: OrderedDict[str, str] = OrderedDict()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        folder, _, cname = line.partition(" ")
        out[folder] = cname.strip()
    return out


def _list_images(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))


def _list_dirs(folder: Path, ignore=()) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".") and e.name not in ignore)


def _read_imagenet(m: Manifest, data_root: Path, dataset_dir: Path, image_root: Path):
    cn_path = dataset_dir / m.split.get("classnames_file", "classnames.txt")
    if not cn_path.is_file():
        raise _missing(m, data_root, cn_path, "class-name file")
    cnames = read_classnames_file(cn_path)
    train_dir = image_root / m.split.get("train_dir", "train")
    test_dir = image_root / m.split.get("test_dir", "val")
    for d in (train_dir, test_dir):
        if not d.is_dir():
            raise _missing(m, data_root, d, "image folder")
    folders = _list_dirs(train_dir)
    unknown = [f for f in folders if f not in cnames]
    if unknown:
        raise DatasetFormatError(f"{cn_path}: no class name for folder(s) {unknown[:5]} in {train_dir}")
    label_of = {f: i for i, f in enumerate(folders)}
    classnames = [cnames[f] for f in folders]

    def read(split_dir: Path) -> list[Sample]:
        out = []
        for folder in _list_dirs(split_dir):
            if folder not in label_of:
                raise DatasetFormatError(f"{split_dir / folder}: class folder absent from {train_dir}")
            label = label_of[folder]
            prefix = f"{split_dir.name}/{folder}/"
            out.extend(Sample(prefix + f, label, classnames[label]) for f in _list_images(split_dir / folder))
        return out

    train = read(train_dir)
    test = read(test_dir)
    return train, test, test, classnames  # val is the test list (CoOp)


def _read_aircraft(m: Manifest, data_root: Path, dataset_dir: Path):
    vpath = dataset_dir / m.split.get("variants_file", "variants.txt")
    if not vpath.is_file():
        raise _missing(m, data_root, vpath, "class-name file")
    classnames = [line.strip() for line in vpath.read_text(encoding="utf-8").splitlines() if line.strip()]
    label_of = {c: i for i, c in enumerate(classnames)}
    lists = m.split.get("lists") or {s: f"images_variant_{s}.txt" for s in ("train", "val", "test")}
    out = {}
    for split in ("train", "val", "test"):
        lpath = dataset_dir / lists[split]
        if not lpath.is_file():
            raise _missing(m, data_root, lpath, f"{split} list")
        items = []
        for line in lpath.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            image_id, _, cname = line.partition(" ")
            if cname not in label_of:
                raise DatasetFormatError(f"{lpath}: class {cname!r} not in {vpath.name}")
            items.append(Sample(f"{image_id}.jpg", label_of[cname], cname))
        out[split] = items
    return out["train"], out["val"], out["test"], classnames


def _read_variant(m: Manifest, data_root: Path, dataset_dir: Path, image_root: Path):
    cn_name = m.split.get("classnames_file", "classnames.txt")
    candidates = [dataset_dir / cn_name]
    if m.variant_of:
        parent = load_manifest(m.variant_of)
        candidates.append(data_root / parent.folder / parent.split.get("classnames_file", "classnames.txt"))
    cn_path = next((p for p in candidates if p.is_file()), None)
    if cn_path is None:
        raise DatasetMissingError(
            f"{m.display_name} ({m.name}): class-name file not found; looked for "
            + " and ".join(str(p) for p in candidates)
            + f"\ncopy ImageNet's classnames.txt (see `workbench data check --dataset imagenet`) to {candidates[0]}",
            path=candidates[0],
            what="class-name file",
        )
    cnames = read_classnames_file(cn_path)
    wnids = list(cnames)
    parent_index = {w: i for i, w in enumerate(wnids)}
    layout = m.split.get("layout", "wnid_folders")
    ignore = set(m.split.get("ignore") or [])
    test: list[Sample] = []
    if layout == "index_folders":
        classnames = [cnames[w] for w in wnids]
        parent_labels = list(range(len(wnids)))
        for folder in _list_dirs(image_root, ignore):
            try:
                label = int(folder)
            except ValueError as e:
                raise DatasetFormatError(f"{image_root / folder}: expected numeric class folders 0..{len(wnids) - 1}") from e
            if not 0 <= label < len(wnids):
                raise DatasetFormatError(f"{image_root / folder}: label outside 0..{len(wnids) - 1}")
            test.extend(Sample(f"{folder}/{f}", label, classnames[label]) for f in _list_images(image_root / folder))
        test.sort(key=lambda s: (s.label, s.path))
    elif layout == "wnid_folders":
        folders = _list_dirs(image_root, ignore)
        unknown = [f for f in folders if f not in cnames]
        if unknown:
            raise DatasetFormatError(f"{cn_path}: no class name for folder(s) {unknown[:5]} in {image_root}")
        classnames = [cnames[f] for f in folders]
        parent_labels = [parent_index[f] for f in folders]
        for label, folder in enumerate(folders):
            test.extend(Sample(f"{folder}/{f}", label, classnames[label]) for f in _list_images(image_root / folder))
    else:
        raise DatasetFormatError(f"{m.source}: unknown variant layout {layout!r}")
    return test, classnames, parent_labels


def _read_descriptions(m: Manifest, dataset_dir: Path) -> dict[str, list[str]] | None:
    if not m.descriptions:
        return None
    path = dataset_dir / m.descriptions
    if not path.is_file():  # optional: `workbench data check` reports it, methods that need it say where
        return None
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{path}: expected {{classname: [sentences]}}")
    return {str(k): [str(s) for s in (v if isinstance(v, list) else [v])] for k, v in raw.items()}
