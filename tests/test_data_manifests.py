"""Every manifest parses, has the required fields and follows the agreed layout."""
from __future__ import annotations

import pytest

from workbench.data.manifests import (
    SPLIT_KINDS,
    DataRootError,
    ManifestError,
    UnknownDatasetError,
    list_manifests,
    load_all_manifests,
    load_manifest,
    manifest_from_dict,
)

REAL = [
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
    "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r",
]
TOYS = {"toy_objects": "ToyObjects", "toy_objects_shifted": "ToyObjectsShifted", "toy_vocab": "ToyVocab"}


def test_all_expected_manifests_exist():
    names = list_manifests()
    for n in REAL + list(TOYS):
        assert n in names


def test_manifests_parse_with_required_fields():
    for m in load_all_manifests():
        assert m.name and m.display_name and m.folder
        assert m.split.kind in SPLIT_KINDS
        assert m.templates and all("{}" in t for t in m.templates)
        assert m.license
        assert m.obtain.official or m.obtain.instructions
        if m.split.kind == "split_file":
            assert m.split.file.startswith("split_zhou_") and m.split.file.endswith(".json")
        if m.variant_of:
            assert m.variant_of in list_manifests()
            assert m.split.kind == "variant_folders" and m.expected.test


def test_real_manifest_facts():
    e = load_manifest("eurosat")
    assert (e.folder, e.image_dir, e.split.file) == ("eurosat", "2750", "split_zhou_EuroSAT.json")
    assert e.classname_renames["AnnualCrop"] == "Annual Crop Land"
    assert e.templates == ("a centered satellite photo of {}.",)
    assert (e.expected.classes, e.expected.train, e.expected.val, e.expected.test) == (10, 13500, 5400, 8100)
    assert load_manifest("dtd").templates == ("{} texture.",)
    assert load_manifest("imagenet").expected.test == 50000
    assert load_manifest("imagenet_a").expected.classes == 200
    assert load_manifest("imagenet_r").folder == "imagenet-rendition"
    assert load_manifest("caltech101").folder == "caltech-101"
    assert load_manifest("stanford_cars").image_dir == "."


def test_toy_manifests_layout():
    for name, pascal in TOYS.items():
        m = load_manifest(name)
        assert m.folder == name and m.image_dir == "images"
        assert m.split.file == f"split_zhou_{pascal}.json"
        assert m.descriptions == "descriptions.json"
        assert m.default_root == "toy" and m.is_toy
        assert m.templates == ("a photo of a {}.",)
        assert m.expected.classes is None


def test_unknown_name_lists_known():
    with pytest.raises(UnknownDatasetError) as ei:
        load_manifest("no_such_dataset")
    msg = str(ei.value)
    assert "no_such_dataset" in msg and "eurosat" in msg and "toy_vocab" in msg


def test_env_override(tmp_path, monkeypatch):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "tiny.yaml").write_text(
        "name: tiny\ndisplay_name: Tiny\nfolder: tiny\nimage_dir: images\n"
        "split: {kind: split_file, file: split_zhou_Tiny.json}\ntemplates: ['a photo of a {}.']\n"
        "expected: null\nobtain: {official: x}\nlicense: MIT\n"
    )
    monkeypatch.setenv("WORKBENCH_MANIFESTS", str(tmp_path))
    assert list_manifests() == ["tiny"]
    assert load_manifest("tiny").display_name == "Tiny"


def test_bad_manifest_rejected():
    base = dict(name="x", display_name="X", folder="x", image_dir="i", split={"kind": "split_file", "file": "s.json"},
                templates=["{}"], expected=None, obtain={}, license="")
    manifest_from_dict(base)
    with pytest.raises(ManifestError):
        manifest_from_dict({**base, "split": {"kind": "nope"}})
    with pytest.raises(ManifestError):
        manifest_from_dict({**base, "typo_field": 1})
    with pytest.raises(ManifestError):
        manifest_from_dict({k: v for k, v in base.items() if k != "templates"})


def test_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    with pytest.raises(DataRootError) as ei:
        load_manifest("eurosat").resolve_root(None)
    assert "--root" in str(ei.value) and "WORKBENCH_DATA" in str(ei.value)
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))
    assert load_manifest("eurosat").image_root() == tmp_path / "eurosat" / "2750"
    monkeypatch.setenv("WORKBENCH_TOY_DATA", str(tmp_path / "toys"))
    assert load_manifest("toy_vocab").dataset_dir() == tmp_path / "toys" / "toy_vocab"
