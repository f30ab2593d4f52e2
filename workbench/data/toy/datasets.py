"""Render the toy datasets to disk in the CoOp layout.

<root>/<folder>/images/<classdir>/<split>_<i>.png
<root>/<folder>/split_zhou_<Name>.json   {"train"|"val"|"test": [[relpath, label, classname], ...]}
<root>/<folder>/descriptions.json        {classname: [sentences]}       (knowledge.py, HPT's layout)
<root>/<folder>/structures.json          {classname: [structures]}
<root>/<folder>/toy_meta.json            world version + seed (used to detect stale data)

Each image has its own generator seeded by (seed, dataset, class, split, index), so the output does
not depend on rendering order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from workbench.paths import staged_dir

from . import knowledge, world

DEFAULT_DATA_SEED = 0


@dataclass(frozen=True)
class ToyDatasetSpec:
    name: str  # folder name and manifest name
    split_name: str  # the <Name> of split_zhou_<Name>.json
    code: int  # mixed into per-image seeds
    domain: str  # "source" or "shifted"
    counts: tuple[int, int, int]  # images per class in train, val, test

    @property
    def split_file(self) -> str:
        return f"split_zhou_{self.split_name}.json"

    def classes(self) -> tuple[world.ToyClass, ...]:
        return world.toy_vocab_classes() if self.name == "toy_vocab" else world.toy_objects_classes()


TOY_OBJECTS = "toy_objects"
TOY_OBJECTS_SHIFTED = "toy_objects_shifted"
TOY_VOCAB = "toy_vocab"
SPECS = {
    TOY_OBJECTS: ToyDatasetSpec(TOY_OBJECTS, "ToyObjects", 1, "source", (32, 8, 30)),
    TOY_OBJECTS_SHIFTED: ToyDatasetSpec(TOY_OBJECTS_SHIFTED, "ToyObjectsShifted", 2, "shifted", (0, 0, 30)),
    TOY_VOCAB: ToyDatasetSpec(TOY_VOCAB, "ToyVocab", 3, "source", (32, 8, 30)),
}
SPLITS = ("train", "val", "test")
META_FILE = "toy_meta.json"


def classdir(name: str) -> str:
    return name.replace(" ", "_")


def image_rng(seed: int, spec: ToyDatasetSpec, label: int, split: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, spec.code, label, split, index])


def _counts(spec: ToyDatasetSpec, counts: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """`counts` overrides the spec's per-class counts, except splits the spec leaves empty."""
    if counts is None:
        return spec.counts
    return tuple(0 if base == 0 else int(c) for base, c in zip(spec.counts, counts))


def render_dataset(spec: ToyDatasetSpec, folder: Path, seed: int = DEFAULT_DATA_SEED, size: int = world.IMAGE_SIZE,
                   counts: tuple[int, int, int] | None = None) -> None:
    """Render one dataset into `folder` (which must not exist yet or be empty)."""
    classes = spec.classes()
    n_per_split = _counts(spec, counts)
    split_lists: dict[str, list] = {s: [] for s in SPLITS}
    for label, cls in enumerate(classes):
        d = folder / "images" / classdir(cls.name)
        d.mkdir(parents=True, exist_ok=True)
        for si, split in enumerate(SPLITS):
            for i in range(n_per_split[si]):
                rng = image_rng(seed, spec, label, si, i)
                attrs = world.sample_attrs(rng, fixed=cls.attrs, domain=spec.domain)
                rel = f"{classdir(cls.name)}/{split}_{i:03d}.png"
                # fixed PNG settings so files are byte-identical across runs
                world.render(attrs, size, rng).save(folder / "images" / rel, format="PNG", optimize=False, compress_level=6)
                split_lists[split].append([rel, label, cls.name])
    (folder / spec.split_file).write_text(json.dumps(split_lists, indent=0), encoding="utf-8")
    meta = {"world_version": world.WORLD_VERSION, "seed": seed, "size": size, "classes": len(classes),
            "counts": list(n_per_split)}
    _write_knowledge(folder, spec, meta)


def _write_knowledge(folder: Path, spec: ToyDatasetSpec, meta: dict) -> None:
    knowledge.write_knowledge(folder, spec.classes())
    meta = {**meta, knowledge.META_KEY: knowledge.KNOWLEDGE_VERSION}
    (folder / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def knowledge_is_current(folder: Path) -> bool:
    """True if `folder` holds description and structure files of the current KNOWLEDGE_VERSION."""
    return knowledge.knowledge_is_current(folder, _read_meta(folder))


def dataset_is_current(folder: Path, seed: int = DEFAULT_DATA_SEED, counts: tuple[int, int, int] | None = None) -> bool:
    """True if `folder` holds a complete render of its dataset for this world version, seed and counts."""
    spec = SPECS.get(folder.name)
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if spec is None or not (folder / spec.split_file).is_file():
        return False
    return (meta.get("world_version") == world.WORLD_VERSION and meta.get("seed") == seed
            and meta.get("counts") == list(_counts(spec, counts)))


def build_all(root: Path, seed: int = DEFAULT_DATA_SEED, force: bool = False,
              counts: tuple[int, int, int] | None = None) -> list[str]:
    """Render every toy dataset missing or stale under `root`; returns the names rendered.

    Each dataset is rendered into a temporary folder next to its final place and renamed, so an
    interrupted build never leaves a half dataset behind.
    """
    root.mkdir(parents=True, exist_ok=True)
    built = []
    for name, spec in SPECS.items():
        final = root / name
        if not force and dataset_is_current(final, seed, counts):
            if not knowledge_is_current(final):  # images are current: rewrite only the text files
                _write_knowledge(final, spec, _read_meta(final))
            continue
        with staged_dir(final) as tmp:
            render_dataset(spec, tmp, seed, counts=counts)
        built.append(name)
    return built


def read_split(root: Path, name: str) -> dict[str, list]:
    spec = SPECS[name]
    return json.loads((root / name / spec.split_file).read_text(encoding="utf-8"))


def load_images(root: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All images of one split as a uint8 (N, H, W, 3) array plus labels."""
    items = read_split(root, name)[split]
    imgs = np.stack([np.asarray(Image.open(root / name / "images" / rel).convert("RGB")) for rel, _, _ in items])
    return imgs, np.array([lab for _, lab, _ in items], dtype=np.int64)
