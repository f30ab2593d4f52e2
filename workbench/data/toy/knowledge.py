"""The toy world's class knowledge files, written from its own ground truth (each class's shape,
colour or pattern), in HPT's released layout (see workbench.data.knowledge):

  descriptions.json  {classname: [5 sentences]}   the class's world descriptions, then generated ones
  structures.json    {classname: [5 structures]}  structure i names the entities and attributes of
                                                  sentence i and how they relate

Five per class, as the released data has (N_SET = 5), so HPT and DAM run offline with their released
sizes. Bump KNOWLEDGE_VERSION when the text changes: it is part of every toy run's data identity.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..knowledge import DESCRIPTIONS, STRUCTURES, Structure
from . import world

KNOWLEDGE_VERSION = 1
PER_CLASS = 5
FILES = {DESCRIPTIONS: "descriptions.json", STRUCTURES: "structures.json"}
META_KEY = "knowledge_version"
SURFACES = {"plain": "one flat colour", "striped": "stripes", "dotted": "dots", "checkered": "a checkerboard"}


def _pair(name: str, shape: str, color: str) -> list[tuple[str, Structure]]:
    """(sentence, structure) for a kind bound to a (shape, colour) pair (toy_objects)."""
    def s(entities, attributes, e2e=(), e2a=()):
        return Structure(tuple(entities), tuple(attributes), tuple(e2e), tuple(e2a))

    return [
        (f"a {name} is a {color} {shape}.",
         s([name, shape], [color], [(name, shape)], [(shape, color), (name, color)])),
        (f"a {name} has the shape of a {shape}.",
         s([name, shape], ["shape"], [(name, shape)], [(name, "shape")])),
        (f"a {name} is always {color}.",
         s([name], [color, "always"], [], [(name, color)])),
        (f"a {name} looks like a {color} {shape} of any size and pattern.",
         s([name, shape], [color, "any size", "pattern"], [(name, shape)],
           [(shape, color), (name, "any size"), (name, "pattern")])),
        (f"the outline of a {name} is a {shape} and its colour is {color}.",
         s([name, "outline", shape], [color], [(name, "outline"), ("outline", shape)], [(name, color)])),
    ]


def _vocab(name: str, shape: str, pattern: str) -> list[tuple[str, Structure]]:
    """(sentence, structure) for a pattern x shape class (toy_vocab), any colour."""
    surface = SURFACES[pattern]
    word = world.PATTERN_WORDS[pattern]

    def s(entities, attributes, e2e=(), e2a=()):
        return Structure(tuple(entities), tuple(attributes), tuple(e2e), tuple(e2a))

    return [
        (f"a {name} is a {shape} covered with {surface}.",
         s([name, shape, surface], [word], [(name, shape), (shape, surface)], [(name, word)])),
        (f"a {name} has the outline of a {shape}.",
         s([name, "outline", shape], [], [(name, "outline"), ("outline", shape)], [])),
        (f"the pattern of a {name} is {word}.",
         s([name, "pattern"], [word], [(name, "pattern")], [("pattern", word)])),
        (f"a {name} can have any colour but always shows {surface}.",
         s([name, surface], ["any colour", word], [(name, surface)], [(name, "any colour"), (surface, word)])),
        (f"a {name} is a {word} {shape} of any size.",
         s([name, shape], [word, "any size"], [(name, shape)], [(shape, word), (name, "any size")])),
    ]


def class_knowledge(cls: world.ToyClass) -> tuple[list[str], list[Structure]]:
    """PER_CLASS descriptions and their structures for one toy class: the world's own descriptions
    first (unchanged), then generated ones from the same ground truth."""
    attrs = cls.attrs
    if "color" in attrs:
        pairs = _pair(cls.name, attrs["shape"], attrs["color"])
    else:
        pairs = _vocab(cls.name, attrs["shape"], attrs["pattern"])
    own = list(cls.descriptions)
    by_sentence = dict(pairs)
    sentences = own + [text for text, _ in pairs if text not in own]
    sentences = sentences[:PER_CLASS]
    structures = [by_sentence.get(text) or _structure_for_unknown(cls) for text in sentences]
    return sentences, structures


def _structure_for_unknown(cls: world.ToyClass) -> Structure:
    """A structure for a world description the generator does not know: the class and its attributes."""
    values = [str(v) for v in cls.attrs.values()]
    return Structure((cls.name,), tuple(values), (), tuple((cls.name, v) for v in values))


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)


def write_knowledge(folder: Path, classes) -> None:
    """Write descriptions.json and structures.json for `classes` into `folder`."""
    descriptions, structures = {}, {}
    for cls in classes:
        sentences, structs = class_knowledge(cls)
        descriptions[cls.name] = sentences
        structures[cls.name] = [s.to_json() for s in structs]
    _write_json(folder / FILES[DESCRIPTIONS], descriptions)
    _write_json(folder / FILES[STRUCTURES], structures)


def knowledge_is_current(folder: Path, meta: dict | None) -> bool:
    return (meta is not None and meta.get(META_KEY) == KNOWLEDGE_VERSION
            and all((folder / f).is_file() for f in FILES.values()))
