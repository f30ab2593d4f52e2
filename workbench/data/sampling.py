"""Few-shot, base/new and long-tailed sampling.

Few-shot follows CoOp/Dassl exactly: CoOp's train.py seeds Python's `random` with the run seed, the
dataset then groups the train items by label (a dict in order of first appearance) and takes
`random.sample(items, k)` per group; a class with fewer than k items keeps all of them once and
draws nothing from the stream (Dassl's default `repeat=False` since Oct 2021); val is sampled next from
the same random stream with min(k, 4) per class. ImageNet has no
val of its own (val is the test set) and only its train split is sampled. We use a private
`random.Random(seed)`, which yields the same stream as `random.seed(seed)` without touching the
global state.

Splits are stored as JSON at `<dataset folder>/split_fewshot/shot_{k}-seed_{s}.json` with paths
relative to the image folder, and reused when present. The file records FEW_SHOT_SPLIT_VERSION (the
sampling rule's version): a file of an older rule is rewritten, one of a newer rule is an error.
"""
from __future__ import annotations

import json
import math
import os
import random
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from workbench.data.types import DatasetSplits, Sample

# 1: classes with fewer than k items were filled up with random.choices; 2: they keep their items once
FEW_SHOT_SPLIT_VERSION = 2
VAL_SHOTS_MAX = 4


class FewShotCacheError(ValueError):
    """A stored few-shot split does not fit the dataset it is loaded for."""


# ---------------------------------------------------------------------------------------- few-shot
def group_by_label(samples: Sequence[Sample]) -> dict[int, list[Sample]]:
    """Label -> items, labels in order of first appearance (as Dassl's split_dataset_by_label)."""
    groups: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.label].append(s)
    return groups


def sample_per_class(samples: Sequence[Sample], shots: int, rng: random.Random, repeat: bool = False) -> list[Sample]:
    """Dassl's generate_fewshot_dataset for one data source, drawing from `rng`."""
    if shots < 1:
        return list(samples)
    out: list[Sample] = []
    for items in group_by_label(samples).values():
        if len(items) >= shots:
            out.extend(rng.sample(items, shots))
        elif repeat:
            out.extend(rng.choices(items, k=shots))
        else:
            out.extend(items)
    return out


def fewshot_filename(shots: int, seed: int) -> str:
    return f"shot_{shots}-seed_{seed}.json"


def few_shot_splits(
    ds: DatasetSplits,
    shots: int,
    seed: int,
    cache_dir: str | os.PathLike | None = None,
    sample_val: bool | None = None,
) -> DatasetSplits:
    """The CoOp few-shot version of `ds` (train: `shots` per class; val: min(shots, 4) per class).

    cache_dir: folder for `shot_{k}-seed_{s}.json` (normally `<dataset folder>/split_fewshot`); an
    existing file is reused, a new one written. None: no file.
    sample_val: None = sample val unless it is the test list itself or empty (ImageNet).
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if sample_val is None:
        sample_val = bool(ds.val) and ds.val is not ds.test
    path = Path(cache_dir) / fewshot_filename(shots, seed) if cache_dir is not None else None
    stored = _read_fewshot(path, ds, shots, seed) if path is not None and path.is_file() else None
    if stored is not None:
        train, val = stored
    else:
        rng = random.Random(seed)
        train = sample_per_class(ds.train, shots, rng)
        val = sample_per_class(ds.val, min(shots, VAL_SHOTS_MAX), rng) if sample_val else None
        if path is not None:
            _write_fewshot(path, ds, shots, seed, train, val)
    return DatasetSplits(
        name=ds.name,
        image_root=ds.image_root,
        classnames=list(ds.classnames),
        templates=list(ds.templates),
        train=train,
        val=ds.val if val is None else val,
        test=ds.test,
        descriptions=ds.descriptions,
        knowledge_files=ds.knowledge_files,
        parent_labels=ds.parent_labels,
    )


def _write_fewshot(path: Path, ds: DatasetSplits, shots: int, seed: int, train, val) -> None:
    def rows(items):
        return [[s.path, s.label, s.classname] for s in items]

    payload = {
        "version": FEW_SHOT_SPLIT_VERSION,
        "dataset": ds.name,
        "shots": shots,
        "seed": seed,
        "train": rows(train),
        "val": None if val is None else rows(val),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=0)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_fewshot(path: Path, ds: DatasetSplits, shots: int, seed: int):
    """(train, val) stored in `path`, or None when it was written by an older sampling rule."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FewShotCacheError(f"{path}: invalid JSON ({e}); delete it to rebuild") from e
    version = raw.get("version")
    if isinstance(version, int) and version < FEW_SHOT_SPLIT_VERSION:
        return None
    if version != FEW_SHOT_SPLIT_VERSION:
        raise FewShotCacheError(f"{path}: version {version!r}, expected {FEW_SHOT_SPLIT_VERSION} "
                                "(written by another workbench version?); delete it to rebuild")
    for key, want in (("dataset", ds.name), ("shots", shots), ("seed", seed)):
        if raw.get(key) != want:
            raise FewShotCacheError(f"{path}: {key} is {raw.get(key)!r}, expected {want!r}; wrong cache folder?")

    def convert(rows, pool: Sequence[Sample], split: str) -> list[Sample]:
        known = {(s.path, s.label) for s in pool}
        out = []
        for row in rows:
            rel, label, cname = row[0], int(row[1]), row[2]
            if (rel, label) not in known:
                raise FewShotCacheError(
                    f"{path}: {split} item {rel!r} (label {label}) is not in the dataset's {split} split; "
                    "the split file changed since the few-shot file was written; delete it to rebuild"
                )
            out.append(Sample(rel, label, ds.classnames[label] if label < len(ds.classnames) else cname))
        return out

    train = convert(raw.get("train") or [], ds.train, "train")
    val = None if raw.get("val") is None else convert(raw["val"], ds.val, "val")
    return train, val


# --------------------------------------------------------------------------------------- base/new
def base_new_labels(ds: DatasetSplits) -> tuple[list[int], list[int]]:
    """CoOp's rule: sorted train labels; base = first ceil(n/2), new = the rest."""
    labels = sorted({s.label for s in ds.train}) if ds.train else list(range(ds.num_classes))
    m = math.ceil(len(labels) / 2)
    return labels[:m], labels[m:]


def base_new_split(ds: DatasetSplits) -> tuple[DatasetSplits, DatasetSplits]:
    """(base, new), each relabelled 0..m-1; names get suffixes `_base` / `_new`."""
    base, new = base_new_labels(ds)
    return ds.subset_classes(base, suffix="_base"), ds.subset_classes(new, suffix="_new")


# -------------------------------------------------------------------------------------- long tail
def long_tail_counts(num_classes: int, ratio: float, n_max: int) -> list[int]:
    """n_c = floor(n_max * ratio^(-c/(C-1))), at least 1: class 0 keeps n_max, the last n_max/ratio."""
    if num_classes < 1:
        return []
    if num_classes == 1:
        return [n_max]
    counts = []
    for c in range(num_classes):
        x = n_max * ratio ** (-c / (num_classes - 1))
        counts.append(max(1, math.floor(x + 1e-9)))  # tolerance: 100 * 50**-1 must give 2, not 1
    return counts


def long_tail_split(
    ds: DatasetSplits, ratio: float, seed: int, max_per_class: int = 100
) -> DatasetSplits:
    """Downsample `ds.train` to an exponential long-tailed profile (DAM Table V, after Candle).

    n_max = min(max_per_class, largest class in train); class order = sorted train labels; classes
    with fewer items than their target keep all of them. val and test are unchanged. Sampling uses
    `random.Random(seed)`, one `sample` call per class in label order.
    """
    if ratio < 1:
        raise ValueError(f"imbalance ratio must be >= 1, got {ratio}")
    groups = group_by_label(ds.train)
    labels = sorted(groups)
    if not labels:
        return replace_train(ds, [])
    n_max = min(max_per_class, max(len(groups[lab]) for lab in labels))
    counts = long_tail_counts(len(labels), ratio, n_max)
    rng = random.Random(seed)
    train: list[Sample] = []
    for lab, n in zip(labels, counts):
        items = groups[lab]
        train.extend(rng.sample(items, min(n, len(items))))
    return replace_train(ds, train, suffix=f"_lt{ratio:g}")


def replace_train(ds: DatasetSplits, train: list[Sample], suffix: str = "") -> DatasetSplits:
    return replace(ds, name=ds.name + suffix, train=list(train))
