"""Class knowledge files (descriptions, structures): the released layout reads back; missing or
malformed files fail naming the file, the class and what to put there; the toy world writes both from
its ground truth and they reach the dataset loader through the manifests."""
from __future__ import annotations

import json

import pytest

from workbench.data import knowledge
from workbench.data.knowledge import KnowledgeFileError, read_descriptions, read_structures, require_knowledge
from workbench.data.types import ClassTask

# one class in the released layout (abridged from HPT's data/gpt_data/structure/DescribableTextures.json)
RELEASED = {
    "banded": [{
        "Entities": ["Banded Texture", "Object", "Surface"],
        "Attributes": ["Striped", "Alternating"],
        "Entity-to-Entity Relationships": [{"entity1": "Banded Texture", "relationship": "appears on", "entity2": "Object"}],
        "Entity-to-Attribute Relationships": [
            {"entity": "Banded Texture", "relationship": "has", "attribute": "Striped"},
            {"entity": "Banded Texture", "relationship": "has", "attribute": "Alternating", "forEntity": "x"}],
    }],
}


def _write(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_released_structure_layout_reads_back(tmp_path):
    s = read_structures(_write(tmp_path / "s.json", RELEASED))["banded"][0]
    assert s.entities == ("Banded Texture", "Object", "Surface")
    assert s.attributes == ("Striped", "Alternating")
    assert s.entity_pairs == (("Banded Texture", "Object"),)
    assert s.attribute_pairs == (("Banded Texture", "Striped"), ("Banded Texture", "Alternating"))


def test_descriptions_take_the_first_count_and_underscore_names_match(tmp_path):
    path = _write(tmp_path / "d.json", {"sea or lake": ["one.", "two.", "three."]})
    assert read_descriptions(path, ["sea_or_lake"], count=2) == {"sea_or_lake": ["one.", "two."]}


def test_missing_file_names_path_and_layout(tmp_path):
    with pytest.raises(KnowledgeFileError) as err:
        read_descriptions(tmp_path / "nowhere.json", ["banded"])
    assert str(tmp_path / "nowhere.json") in str(err.value) and "<classname>" in str(err.value)


@pytest.mark.parametrize("data, words", [
    ({"other": ["a."]}, ["no descriptions for class 'banded'", '"banded": [']),
    ({"banded": "a banded texture"}, ["class 'banded'", "non-empty list of sentences"]),
    ({"banded": ["a."]}, ["class 'banded' has 1 descriptions", "needs 2", "add 1 more"]),
])
def test_malformed_descriptions_name_file_and_class(tmp_path, data, words):
    path = _write(tmp_path / "desc.json", data)
    with pytest.raises(KnowledgeFileError) as err:
        read_descriptions(path, ["banded"], count=2)
    message = str(err.value)
    assert message.startswith(str(path))
    for w in words:
        assert w in message


@pytest.mark.parametrize("entry, words", [
    (None, ["no structures for class 'banded'", "Entities"]),
    ([{"Entities": ["a"]}], ["structure 0 lacks", "'Attributes'", "Entity-to-Entity Relationships"]),
    ([{"Entities": "a", "Attributes": [], "Entity-to-Entity Relationships": [],
       "Entity-to-Attribute Relationships": []}], ["'Entities' must be a list of strings"]),
    ([{"Entities": ["a"], "Attributes": ["b"], "Entity-to-Entity Relationships": [{"entity1": "a"}],
       "Entity-to-Attribute Relationships": []}], ["item 0", '"entity2"']),
])
def test_malformed_structures_name_file_class_and_key(tmp_path, entry, words):
    path = _write(tmp_path / "structures.json", {} if entry is None else {"banded": entry})
    with pytest.raises(KnowledgeFileError) as err:
        read_structures(path, ["banded"])
    message = str(err.value)
    assert message.startswith(str(path))
    for w in words:
        assert w in message


def test_invalid_json_is_reported_with_the_path(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(KnowledgeFileError, match="not valid JSON"):
        read_structures(path)


def test_task_without_files_says_which_manifest_field_to_add():
    with pytest.raises(KnowledgeFileError) as err:
        require_knowledge(ClassTask("dtd", ("banded",)), 5)
    assert "dataset 'dtd' has no descriptions file" in str(err.value)
    assert "descriptions: descriptions.json" in str(err.value)


def test_toy_world_writes_five_descriptions_and_structures_from_ground_truth(toy_data_root):
    from workbench.data.coop import load_dataset
    from workbench.data.toy import world

    ds = load_dataset("toy_objects")
    task = ClassTask.from_splits(ds)
    files = require_knowledge(task, 5)
    first = world.toy_objects_classes()[0]
    shape, color = first.attrs["shape"], first.attrs["color"]
    sentences = files["descriptions"][first.name]
    assert sentences[:len(first.descriptions)] == list(first.descriptions)  # the world's own ones first
    structures = files["structures"][first.name]
    assert len(sentences) == len(structures) == 5
    # structure i names what sentence i says: the kind, its shape and its colour
    for sentence, structure in zip(sentences, structures):
        for word in structure.entities + structure.attributes:
            assert word in sentence
    assert (first.name, shape) in structures[0].entity_pairs and (shape, color) in structures[0].attribute_pairs
    vocab = require_knowledge(ClassTask.from_splits(load_dataset("toy_vocab")), 5)
    assert all(len(v) == 5 for v in vocab["structures"].values())


def test_toy_knowledge_rewritten_when_stale_without_rerendering(toy_data_root):
    from workbench.data.toy import datasets

    folder = toy_data_root / "toy_objects"
    image = next((folder / "images").rglob("*.png"))
    before = image.stat().st_mtime_ns
    (folder / "structures.json").unlink()
    assert not datasets.knowledge_is_current(folder)
    datasets.build_all(toy_data_root)
    assert datasets.knowledge_is_current(folder) and image.stat().st_mtime_ns == before


def test_check_files_reports_ok_missing_and_invalid(tmp_path):
    from workbench.data.manifests import load_manifest

    m = load_manifest("toy_objects")
    assert {kind: status for kind, status, _ in knowledge.check_files(m, tmp_path)} == {
        "descriptions": "missing", "structures": "missing"}
    _write(tmp_path / "descriptions.json", {"a": ["x."]})
    _write(tmp_path / "structures.json", {"a": [{"Entities": []}]})
    rows = {kind: (status, detail) for kind, status, detail in knowledge.check_files(m, tmp_path)}
    assert rows["descriptions"][0] == "ok" and "1 classes, 1 per class" in rows["descriptions"][1]
    assert rows["structures"][0] == "invalid" and "lacks" in rows["structures"][1]


def test_data_check_reports_knowledge_files(tmp_path):
    try:
        from data_fixtures import make_eurosat, make_toy
    except ImportError:  # pragma: no cover - run from the repository root
        from tests.data_fixtures import make_eurosat, make_toy
    from workbench.data.check import check_dataset, format_reports

    make_toy(tmp_path)  # descriptions.json (1 sentence per class), no structures.json
    text = format_reports([check_dataset("toy_objects", root=tmp_path, verify="none")])
    assert f"descriptions: ok: {tmp_path / 'toy_objects' / 'descriptions.json'}: 3 classes, 1 per class" in text
    assert "structures: MISSING (needed by HPT, DAM)" in text and str(tmp_path / "toy_objects" / "structures.json") in text
    assert "toy_objects (Toy objects): OK" in text  # optional files do not make the dataset incomplete
    make_eurosat(tmp_path, corrupt=False)
    report = check_dataset("eurosat", root=tmp_path, verify="none")
    assert [k["status"] for k in report.knowledge] == ["missing", "missing"]
    assert "HPT's data/gpt_data/description/EuroSAT.json" in load_instructions("eurosat", tmp_path)


def load_instructions(name, root):
    from workbench.data.manifests import load_manifest

    return " ".join(load_manifest(name).how_to_obtain(root).split())
