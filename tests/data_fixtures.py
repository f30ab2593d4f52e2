"""Fabricated CoOp-layout datasets for the data tests (tiny images, written into tmp_path)."""
from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

# EuroSAT-like mini dataset: 5 classes (odd, for the ceil in base/new), raw folder names in the
# split file for the first two classes so the manifest renames apply
EURO_CLASSES = ["AnnualCrop", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings"]
EURO_RENAMED = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings"]
PER_CLASS = {"train": 6, "val": 3, "test": 2}
CORRUPT = "Forest/Forest_test_1.jpg"  # listed in the test split, bytes are not an image

IMAGENET_WNIDS = ["n01440764", "n01443537", "n01484850"]
IMAGENET_NAMES = ["tench", "goldfish", "great white shark"]


def write_image(path: Path, color: tuple[int, int, int], size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")


def make_eurosat(root: Path, corrupt: bool = True) -> Path:
    """root/eurosat/2750/<Class>/<Class>_<split>_<i>.jpg + split_zhou_EuroSAT.json; returns the dataset folder."""
    dset = root / "eurosat"
    split = {"train": [], "val": [], "test": []}
    for label, cname in enumerate(EURO_CLASSES):
        folder = cname.replace(" ", "")
        for s, n in PER_CLASS.items():
            for i in range(n):
                rel = f"{folder}/{folder}_{s}_{i}.jpg"
                write_image(dset / "2750" / rel, (40 * label, 10 * i, 200 - 30 * label))
                split[s].append([rel, label, cname])
    if corrupt:
        (dset / "2750" / CORRUPT).write_bytes(b"this is not a jpeg" * 3)
    # interleave the train list so that grouping by first appearance matters
    rnd = random.Random(0)
    rnd.shuffle(split["train"])
    (dset / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    return dset


def make_imagenet_family(root: Path) -> None:
    """imagenet (3 classes), imagenet-adversarial (2 of them + README.txt), imagenetv2 (0..2), fgvc_aircraft."""
    inet = root / "imagenet"
    inet.mkdir(parents=True, exist_ok=True)
    (inet / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(IMAGENET_WNIDS, IMAGENET_NAMES)))
    for label, w in enumerate(IMAGENET_WNIDS):
        for i in range(4):
            write_image(inet / "images" / "train" / w / f"{w}_{i}.JPEG", (50 * label, 0, 0))
        for i in range(2):
            write_image(inet / "images" / "val" / w / f"ILSVRC2012_val_{label}{i}.JPEG", (0, 50 * label, 0))

    ina = root / "imagenet-adversarial" / "imagenet-a"
    for w in IMAGENET_WNIDS[1:]:
        for i in range(3):
            write_image(ina / w / f"{i}.jpg", (0, 0, 90))
    (ina / "README.txt").write_text("readme")  # a file, ignored

    v2 = root / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for label in range(3):
        for i in range(2):
            write_image(v2 / str(label) / f"{i}.jpeg", (9, 9, 9))

    air = root / "fgvc_aircraft"
    (air / "images").mkdir(parents=True, exist_ok=True)
    variants = ["707-320", "A300B4", "Cessna 172"]
    (air / "variants.txt").write_text("\n".join(variants) + "\n")
    n = 0
    for s, per in (("train", 3), ("val", 2), ("test", 2)):
        lines = []
        for v in variants:
            for _ in range(per):
                image_id = f"{1000000 + n:07d}"
                n += 1
                write_image(air / "images" / f"{image_id}.jpg", (1, 2, 3))
                lines.append(f"{image_id} {v}")
        (air / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")


def make_toy(toy_root: Path, name: str = "toy_objects", split_name: str = "ToyObjects") -> Path:
    dset = toy_root / name
    classes = ["red circle", "blue square", "green triangle"]
    split = {"train": [], "val": [], "test": []}
    for label, c in enumerate(classes):
        for s, n in (("train", 4), ("val", 2), ("test", 2)):
            for i in range(n):
                rel = f"{c.replace(' ', '_')}/{s}_{i}.png"
                write_image(dset / "images" / rel, (label * 80, 0, 0))
                split[s].append([rel, label, c])
    (dset / f"split_zhou_{split_name}.json").write_text(json.dumps(split))
    (dset / "descriptions.json").write_text(json.dumps({c: [f"a {c} on a plain background."] for c in classes}))
    return dset


def write_knowledge_files(folder: Path, classnames, per_class: int = 5) -> dict[str, str]:
    """Description and structure files (HPT's layout) naming each class and "object", for methods that
    read class knowledge (HPT, DAM); returns the `knowledge_files` mapping of a ClassTask/DatasetSplits."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    desc = {c: [f"a {c} is an object number {i}." for i in range(per_class)] for c in classnames}
    struct = {c: [{"Entities": [c, "object"], "Attributes": ["small"],
                   "Entity-to-Entity Relationships": [{"entity1": c, "relationship": "is an", "entity2": "object"}],
                   "Entity-to-Attribute Relationships": [{"entity": "object", "relationship": "is", "attribute": "small"}]}
                  for _ in range(per_class)] for c in classnames}
    (folder / "descriptions.json").write_text(json.dumps(desc), encoding="utf-8")
    (folder / "structures.json").write_text(json.dumps(struct), encoding="utf-8")
    return {"descriptions": str(folder / "descriptions.json"), "structures": str(folder / "structures.json")}
