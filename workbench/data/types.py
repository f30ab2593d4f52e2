"""The dataset interface shared by real (CoOp-layout) and toy datasets.

A dataset is a set of labelled image paths relative to one image folder, plus its class names and
prompt templates. Toy datasets are rendered to disk in the same CoOp layout, so one loader serves both.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class Sample:
    path: str  # relative to DatasetSplits.image_root, POSIX separators
    label: int
    classname: str


@dataclass
class DatasetSplits:
    """train/val/test samples of one dataset; labels index `classnames`."""

    name: str
    image_root: Path
    classnames: list[str]
    templates: list[str]
    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    descriptions: dict[str, list[str]] | None = None  # classname -> descriptive sentences
    # {"descriptions" | "structures": path} of the class-knowledge files the manifest names (data.knowledge)
    knowledge_files: dict[str, str] | None = None
    # for a dataset labelled in another dataset's label space (ImageNet-A/R/V2/Sketch): class i here
    # is class parent_labels[i] of the parent (manifest variant_of); None otherwise
    parent_labels: list[int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> list[Sample]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; expected train, val or test")
        return getattr(self, name)

    def subset_classes(self, labels: Sequence[int], suffix: str = "") -> "DatasetSplits":
        """Keep only `labels` (in the given order) and relabel them 0..m-1."""
        remap = {old: new for new, old in enumerate(labels)}

        def keep(samples: list[Sample]) -> list[Sample]:
            return [replace(s, label=remap[s.label]) for s in samples if s.label in remap]

        classnames = [self.classnames[i] for i in labels]
        descriptions = None
        if self.descriptions is not None:
            descriptions = {c: self.descriptions[c] for c in classnames if c in self.descriptions}
        return DatasetSplits(
            name=self.name + suffix,
            image_root=self.image_root,
            classnames=classnames,
            templates=list(self.templates),
            train=keep(self.train),
            val=keep(self.val),
            test=keep(self.test),
            descriptions=descriptions,
            knowledge_files=self.knowledge_files,
            parent_labels=None if self.parent_labels is None else [self.parent_labels[i] for i in labels],
        )


@dataclass(frozen=True)
class ClassTask:
    """The classes a method is trained on or evaluated over."""

    dataset: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...] = ("a photo of a {}.",)
    descriptions: dict[str, list[str]] | None = field(default=None, compare=False, hash=False)
    knowledge_files: dict[str, str] | None = field(default=None, compare=False, hash=False)

    @classmethod
    def from_splits(cls, ds) -> "ClassTask":
        return cls(ds.name, tuple(ds.classnames), tuple(ds.templates), ds.descriptions,
                   getattr(ds, "knowledge_files", None))
