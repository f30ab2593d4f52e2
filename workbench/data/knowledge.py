"""Class knowledge files: LLM-written descriptions and their relationship structures (HPT's layout).

A dataset's manifest names them (`descriptions:` and `structures:`, paths inside the dataset folder):

  descriptions  {classname: [sentence, ...]}
  structures    {classname: [{"Entities": [...], "Attributes": [...],
                              "Entity-to-Entity Relationships": [{"entity1", "relationship", "entity2"}],
                              "Entity-to-Attribute Relationships": [{"entity", "relationship", "attribute"}]},
                             ...]}   (structure i is drawn from description i)

This is the layout of ThomasWangY/2024-AAAI-HPT `data/gpt_data/{description,structure}/<Dataset>.json`
(and Peiy-Lu/DAM `gpt_data/`). Extra keys in a relationship (the released Caltech101 file has
"forEntity") are kept out of the way; "relationship" (the verb) is optional, the methods do not read it.

Loading is lenient for the dataset loader (a missing file is a warning there); a method that needs the
files calls `require_knowledge`, whose errors name the file, the class and what to put there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

DESCRIPTIONS = "descriptions"
STRUCTURES = "structures"
KINDS = (DESCRIPTIONS, STRUCTURES)
ENTITIES, ATTRIBUTES = "Entities", "Attributes"
E2E, E2A = "Entity-to-Entity Relationships", "Entity-to-Attribute Relationships"
STRUCTURE_KEYS = (ENTITIES, ATTRIBUTES, E2E, E2A)

DESCRIPTIONS_EXAMPLE = '{"<classname>": ["<sentence 1>", "<sentence 2>", ...]}'
STRUCTURE_EXAMPLE = ('{"<classname>": [{"Entities": ["wing"], "Attributes": ["white"], '
                     '"Entity-to-Entity Relationships": [{"entity1": "wing", "relationship": "part of", '
                     '"entity2": "body"}], "Entity-to-Attribute Relationships": [{"entity": "wing", '
                     '"relationship": "is", "attribute": "white"}]}, ...]}')


class KnowledgeFileError(ValueError):
    """A description or structure file is missing or malformed; the message says what to put where."""


@dataclass(frozen=True)
class Structure:
    """One class structure: entities, attributes, and the (entity, entity) / (entity, attribute) pairs."""

    entities: tuple[str, ...]
    attributes: tuple[str, ...]
    entity_pairs: tuple[tuple[str, str], ...]
    attribute_pairs: tuple[tuple[str, str], ...]

    def to_json(self) -> dict:
        return {ENTITIES: list(self.entities), ATTRIBUTES: list(self.attributes),
                E2E: [{"entity1": a, "relationship": "relates to", "entity2": b} for a, b in self.entity_pairs],
                E2A: [{"entity": a, "relationship": "has", "attribute": b} for a, b in self.attribute_pairs]}


def _read_json(path: Path, kind: str, example: str) -> dict:
    if not path.is_file():
        raise KnowledgeFileError(f"{path}: {kind} file not found. Put a JSON object {example} there "
                                 "(one entry per class of the dataset)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise KnowledgeFileError(f"{path}: not valid JSON ({exc}); expected {example}") from None
    if not isinstance(raw, dict):
        raise KnowledgeFileError(f"{path}: expected a JSON object {example}, got a {type(raw).__name__}")
    return raw


def _lookup(raw: Mapping, classname: str):
    """The entry of `classname` (the released code looks classes up with "_" replaced by " ")."""
    for key in (classname, classname.replace("_", " ")):
        if key in raw:
            return raw[key]
    return None


def _check_count(path: Path, classname: str, what: str, found: int, count: int | None) -> None:
    if count is not None and found < count:
        raise KnowledgeFileError(f"{path}: class {classname!r} has {found} {what}; this run needs {count} "
                                 f"per class: add {count - found} more (or lower the method's count setting)")


def parse_descriptions(raw: Mapping, path: Path, classnames: Sequence[str] | None = None,
                       count: int | None = None) -> dict[str, list[str]]:
    """{classname: sentences} for `classnames` (all entries when None); the first `count` per class."""
    names = list(raw) if classnames is None else list(classnames)
    out = {}
    for name in names:
        entry = _lookup(raw, name)
        if entry is None:
            raise KnowledgeFileError(f"{path}: no descriptions for class {name!r}. Add \"{name}\": "
                                     f"[\"<sentence>\", ...] ({count or 'one or more'} sentences)")
        if not isinstance(entry, list) or not entry or not all(isinstance(s, str) and s.strip() for s in entry):
            raise KnowledgeFileError(f"{path}: class {name!r}: descriptions must be a non-empty list of "
                                     f"sentences, e.g. \"{name}\": [\"A {name} is ...\", ...]")
        _check_count(path, name, "descriptions", len(entry), count)
        out[name] = [str(s) for s in (entry[:count] if count else entry)]
    return out


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _pairs(path: Path, name: str, index: int, items, key: str, left: str, right: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(items, list):
        raise KnowledgeFileError(f"{path}: class {name!r}, structure {index}: {key!r} must be a list of "
                                 f"{{\"{left}\": ..., \"relationship\": ..., \"{right}\": ...}} objects")
    out = []
    for j, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get(left), str) or not isinstance(item.get(right), str):
            raise KnowledgeFileError(f"{path}: class {name!r}, structure {index}, {key!r} item {j}: expected "
                                     f"{{\"{left}\": \"<name>\", \"relationship\": \"<verb>\", \"{right}\": \"<name>\"}}, "
                                     f"got {json.dumps(item)[:120]}")
        out.append((item[left], item[right]))
    return tuple(out)


def parse_structure(entry, path: Path, name: str, index: int) -> Structure:
    if not isinstance(entry, dict):
        raise KnowledgeFileError(f"{path}: class {name!r}, structure {index}: expected an object with keys "
                                 f"{', '.join(STRUCTURE_KEYS)}, got {type(entry).__name__}")
    missing = [k for k in STRUCTURE_KEYS if k not in entry]
    if missing:
        raise KnowledgeFileError(f"{path}: class {name!r}, structure {index} lacks {', '.join(map(repr, missing))}; "
                                 f"each structure needs {', '.join(STRUCTURE_KEYS)} (lists; relationships may be [])")
    for key in (ENTITIES, ATTRIBUTES):
        if not _strings(entry[key]):
            raise KnowledgeFileError(f"{path}: class {name!r}, structure {index}: {key!r} must be a list of strings")
    return Structure(tuple(entry[ENTITIES]), tuple(entry[ATTRIBUTES]),
                     _pairs(path, name, index, entry[E2E], E2E, "entity1", "entity2"),
                     _pairs(path, name, index, entry[E2A], E2A, "entity", "attribute"))


def parse_structures(raw: Mapping, path: Path, classnames: Sequence[str] | None = None,
                     count: int | None = None) -> dict[str, list[Structure]]:
    names = list(raw) if classnames is None else list(classnames)
    out = {}
    for name in names:
        entry = _lookup(raw, name)
        if entry is None:
            raise KnowledgeFileError(f"{path}: no structures for class {name!r}. Add \"{name}\": [{{\"Entities\": [...], "
                                     f"\"Attributes\": [...], \"{E2E}\": [...], \"{E2A}\": [...]}}, ...] "
                                     f"({count or 'one or more'} structures, one per description)")
        if not isinstance(entry, list) or not entry:
            raise KnowledgeFileError(f"{path}: class {name!r}: structures must be a non-empty list of objects "
                                     f"with keys {', '.join(STRUCTURE_KEYS)}")
        _check_count(path, name, "structures", len(entry), count)
        out[name] = [parse_structure(e, path, name, i) for i, e in enumerate(entry[:count] if count else entry)]
    return out


def read_descriptions(path, classnames=None, count=None) -> dict[str, list[str]]:
    path = Path(path)
    return parse_descriptions(_read_json(path, "descriptions", DESCRIPTIONS_EXAMPLE), path, classnames, count)


def read_structures(path, classnames=None, count=None) -> dict[str, list[Structure]]:
    path = Path(path)
    return parse_structures(_read_json(path, "structures", STRUCTURE_EXAMPLE), path, classnames, count)


def knowledge_files(manifest, dataset_dir: Path) -> dict[str, str]:
    """{kind: absolute path} for the knowledge files a manifest names (present or not)."""
    out = {}
    for kind in KINDS:
        rel = getattr(manifest, kind, None)
        if rel:
            out[kind] = str(Path(dataset_dir) / rel)
    return out


def require_knowledge(task, count: int | None = None, kinds: Sequence[str] = KINDS) -> dict:
    """Descriptions and/or structures of `task`'s classes (a ClassTask), `count` of each per class.

    The files come from the task's `knowledge_files` (filled by the dataset loader from the manifest);
    errors name the file and class, or the manifest field to add."""
    files = dict(getattr(task, "knowledge_files", None) or {})
    out = {}
    for kind in kinds:
        if kind not in files:
            raise KnowledgeFileError(
                f"dataset {task.dataset!r} has no {kind} file: add `{kind}: {kind}.json` to its manifest "
                f"(data_manifests/datasets/<name>.yaml) and put "
                f"{DESCRIPTIONS_EXAMPLE if kind == DESCRIPTIONS else STRUCTURE_EXAMPLE} at <dataset folder>/{kind}.json "
                "(`workbench data check` lists each dataset's files)")
        reader = read_descriptions if kind == DESCRIPTIONS else read_structures
        out[kind] = reader(files[kind], list(task.classnames), count)
    return out


def check_files(manifest, dataset_dir: Path, classnames: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """(kind, status, detail) per knowledge file a manifest names, for `workbench data check`:
    status "ok" (detail: classes and entries per class), "missing" or "invalid" (detail: the error)."""
    rows = []
    for kind, path in knowledge_files(manifest, dataset_dir).items():
        reader = read_descriptions if kind == DESCRIPTIONS else read_structures
        try:
            data = reader(path, classnames)
        except KnowledgeFileError as exc:
            rows.append((kind, "missing" if not Path(path).is_file() else "invalid", str(exc)))
            continue
        counts = sorted({len(v) for v in data.values()})
        per = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        rows.append((kind, "ok", f"{path}: {len(data)} classes, {per} per class"))
    return rows


def write_placeholder_files(folder, classnames: Sequence[str], count: int = 16) -> dict[str, str]:
    """Stand-in knowledge files ("a photo of a {class}." and class-only structures, `count` each) for
    what needs a built method but no real knowledge, e.g. counting trainable parameters."""
    folder = Path(folder)
    desc = {c: [f"a photo of a {c}."] * count for c in classnames}
    struct = {c: [Structure((c,), (), (), ()).to_json()] * count for c in classnames}
    (folder / "descriptions.json").write_text(json.dumps(desc), encoding="utf-8")
    (folder / "structures.json").write_text(json.dumps(struct), encoding="utf-8")
    return {DESCRIPTIONS: str(folder / "descriptions.json"), STRUCTURES: str(folder / "structures.json")}
