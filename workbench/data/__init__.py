"""Datasets: manifests, CoOp-layout loaders, few-shot / base-new / long-tail sampling.

    from workbench.data import load_dataset, load_few_shot, base_new_split
    ds = load_dataset("eurosat", root="/data")          # DatasetSplits
    fs = load_few_shot("eurosat", shots=16, seed=1, root="/data")
    base, new = base_new_split(fs)

Image loading (`workbench.data.images`) and transforms (`workbench.data.transforms`) import torch
and are not imported here.
"""
from __future__ import annotations

import os

from workbench.data.coop import DatasetFormatError, DatasetMissingError, load_dataset, load_from_manifest
from workbench.data.manifests import (
    DataRootError,
    Manifest,
    UnknownDatasetError,
    list_manifests,
    load_manifest,
)
from workbench.data.sampling import (
    FewShotCacheError,
    base_new_labels,
    base_new_split,
    few_shot_splits,
    long_tail_counts,
    long_tail_split,
)
from workbench.data.types import DatasetSplits, Sample


def fewshot_dir(name: str, root: str | os.PathLike | None = None):
    """Where the few-shot split files of dataset `name` live: `<dataset folder>/split_fewshot`."""
    return load_manifest(name).fewshot_dir(root)


def load_few_shot(name: str, shots: int, seed: int, root: str | os.PathLike | None = None) -> DatasetSplits:
    """load_dataset + few_shot_splits with the split file cached in the dataset's folder."""
    m = load_manifest(name)
    if m.test_only:
        raise ValueError(f"{name} is a test-only dataset (variant of {m.variant_of}); it has no train split to sample")
    ds = load_from_manifest(m, root)
    return few_shot_splits(ds, shots, seed, cache_dir=m.fewshot_dir(root), sample_val=m.split.kind != "imagenet")


__all__ = [
    "DataRootError",
    "DatasetFormatError",
    "DatasetMissingError",
    "DatasetSplits",
    "FewShotCacheError",
    "Manifest",
    "Sample",
    "UnknownDatasetError",
    "base_new_labels",
    "base_new_split",
    "few_shot_splits",
    "fewshot_dir",
    "list_manifests",
    "load_dataset",
    "load_few_shot",
    "load_from_manifest",
    "load_manifest",
    "long_tail_counts",
    "long_tail_split",
]
