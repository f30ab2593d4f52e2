"""CoOp-layout loaders on fabricated mini datasets."""
from __future__ import annotations

import json

import pytest

from workbench.data import DataRootError, DatasetMissingError, load_dataset

try:
    from data_fixtures import (CORRUPT, EURO_RENAMED, IMAGENET_NAMES, PER_CLASS, make_eurosat,
                               make_imagenet_family, make_toy)
except ImportError:  # tests as a package
    from tests.data_fixtures import (CORRUPT, EURO_RENAMED, IMAGENET_NAMES, PER_CLASS, make_eurosat,
                                     make_imagenet_family, make_toy)


def test_split_file_loader(tmp_path):
    make_eurosat(tmp_path)
    ds = load_dataset("eurosat", root=tmp_path)
    assert ds.name == "eurosat"
    assert ds.image_root == tmp_path / "eurosat" / "2750"
    assert ds.classnames == EURO_RENAMED  # "AnnualCrop" renamed by the manifest
    assert ds.templates == ["a centered satellite photo of {}."]
    n = len(EURO_RENAMED)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (n * PER_CLASS["train"], n * PER_CLASS["val"], n * PER_CLASS["test"])
    assert all(s.classname == ds.classnames[s.label] for s in ds.train + ds.val + ds.test)
    assert all(not s.path.startswith("/") for s in ds.test)
    assert any(s.path == CORRUPT for s in ds.test)
    assert all((ds.image_root / s.path).is_file() for s in ds.train)
    assert ds.descriptions is None


def test_missing_folder_error_names_path(tmp_path):
    with pytest.raises(DatasetMissingError) as ei:
        load_dataset("oxford_pets", root=tmp_path)
    msg = str(ei.value)
    assert str(tmp_path / "oxford_pets") in msg
    assert "robots.ox.ac.uk" in msg  # how to obtain it
    assert ei.value.path == tmp_path / "oxford_pets"


def test_missing_split_file_error(tmp_path):
    dset = make_eurosat(tmp_path)
    (dset / "split_zhou_EuroSAT.json").unlink()
    with pytest.raises(DatasetMissingError) as ei:
        load_dataset("eurosat", root=tmp_path)
    assert str(dset / "split_zhou_EuroSAT.json") in str(ei.value)
    assert ei.value.what == "split file"


def test_no_root_error(monkeypatch):
    monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    with pytest.raises(DataRootError, match="--root"):
        load_dataset("eurosat")


def test_imagenet_and_variants(tmp_path):
    make_imagenet_family(tmp_path)
    inet = load_dataset("imagenet", root=tmp_path)
    assert inet.classnames == IMAGENET_NAMES
    assert len(inet.train) == 12 and len(inet.test) == 6
    assert inet.val is inet.test  # CoOp: ImageNet val is the test set
    assert inet.train[0].path.startswith("train/n01440764/")

    a = load_dataset("imagenet_a", root=tmp_path)  # no classnames.txt of its own: falls back to ImageNet's
    assert a.classnames == IMAGENET_NAMES[1:]
    assert a.parent_labels == [1, 2]
    assert sorted({s.label for s in a.test}) == [0, 1]
    assert a.train == [] and len(a.test) == 6

    v2 = load_dataset("imagenetv2", root=tmp_path)
    assert v2.classnames == IMAGENET_NAMES and v2.parent_labels == [0, 1, 2]
    assert [s.label for s in v2.test] == [0, 0, 1, 1, 2, 2]

    sub = a.subset_classes([1])
    assert sub.parent_labels == [2] and sub.classnames == ["great white shark"]


def test_fgvc_aircraft(tmp_path):
    make_imagenet_family(tmp_path)
    ds = load_dataset("fgvc_aircraft", root=tmp_path)
    assert ds.classnames == ["707-320", "A300B4", "Cessna 172"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 6, 6)
    assert ds.train[0].path.endswith(".jpg") and ds.train[-1].classname == "Cessna 172"
    assert all((ds.image_root / s.path).is_file() for s in ds.test)


def test_toy_default_root_and_descriptions(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_TOY_DATA", str(tmp_path / "toys"))
    make_toy(tmp_path / "toys")
    ds = load_dataset("toy_objects")  # default_root: toy
    assert ds.image_root == tmp_path / "toys" / "toy_objects" / "images"
    assert ds.classnames == ["red circle", "blue square", "green triangle"]
    assert ds.descriptions["blue square"] == ["a blue square on a plain background."]
    assert ds.templates == ["a photo of a {}."]


def test_inconsistent_classnames_rejected(tmp_path):
    dset = make_eurosat(tmp_path, corrupt=False)
    split = json.loads((dset / "split_zhou_EuroSAT.json").read_text())
    split["test"][0][2] = "something else"
    (dset / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    with pytest.raises(ValueError, match="two class names"):
        load_dataset("eurosat", root=tmp_path)
