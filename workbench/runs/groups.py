"""Named groups of runs (a sweep's runs), kept as `<registry>/groups/<name>.json` beside the run folders.

A group file is written atomically by the process that expands the grid (`workbench sweep FILE`,
`sweep status`), never by jobs; it lists the full hashes of the group's runs, so the app can show a
sweep's runs together and its progress, including runs no job has started yet.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Iterable, Mapping

from workbench.fileio import atomic_write_json

GROUPS_DIR = "groups"
_NAME = re.compile(r"[^A-Za-z0-9._-]+")
PROGRESS_STATES = ("done", "running", "failed", "interrupted", "pending")


def group_name(name: str) -> str:
    """A file-safe version of `name` (letters, digits, '.', '_', '-')."""
    safe = _NAME.sub("-", name).strip("-.")
    if not safe:
        raise ValueError(f"a group name needs letters or digits, got {name!r}")
    return safe


def group_path(root: str | Path, name: str) -> Path:
    return Path(root) / GROUPS_DIR / f"{group_name(name)}.json"


def write_group(root: str | Path, name: str, hashes: Iterable[str], *, kind: str = "sweep",
                source: str | None = None) -> Path:
    """Record (or update) the group `name` with the runs `hashes` (full hashes, in order)."""
    path = group_path(root, name)
    old = read_group(path) or {}
    record = {"name": group_name(name), "kind": kind, "source": source, "hashes": list(dict.fromkeys(hashes)),
              "created_at": old.get("created_at") or time.time(), "updated_at": time.time()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record, indent=1)
    return path


def read_group(path: str | Path) -> dict | None:
    """A group record, or None for a missing or unreadable file."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("hashes"), list):
        return None
    return record


def list_groups(root: str | Path) -> list[dict]:
    """Every readable group of the registry at `root`, most recently updated first."""
    folder = Path(root) / GROUPS_DIR
    records = [r for r in (read_group(p) for p in sorted(folder.glob("*.json"))) if r] if folder.is_dir() else []
    return sorted(records, key=lambda r: -(r.get("updated_at") or 0))


def group_progress(group: Mapping, statuses: Mapping[str, str]) -> dict:
    """Counts per state of a group's runs, given {full hash: status} of the indexed runs; runs not in
    the index yet count as pending. {"total", "done", ..., "fraction"}."""
    counts = {s: 0 for s in PROGRESS_STATES}
    for h in group["hashes"]:
        state = statuses.get(h, "pending")
        counts[state if state in counts else "pending"] += 1
    total = len(group["hashes"])
    return {"total": total, **counts, "fraction": counts["done"] / total if total else 0.0}
