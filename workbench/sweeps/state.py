"""Where a sweep stands, read from its run folders (the source of truth), and its results.

`merge_index` writes the index rows of a sweep's runs from their folders without writing to any run
folder (a job may be writing there); `sweep_status` counts done / running / failed / pending;
`sweep_results` gives the mean over seeds with std, 95% CI and the per-seed values.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Iterable, Sequence

from workbench.runs.files import METRICS, SPEC, STATUS, RunFiles
from workbench.runs.groups import write_group
from workbench.runs.index import Registry

STATES = ("done", "running", "failed", "interrupted", "pending")


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def run_state(registry: Registry, spec) -> tuple[str, dict]:
    """(state, status.json) of a spec's run folder; a run left "running" by a dead process of this
    host counts as interrupted; "done" needs metrics.json."""
    folder = registry.run_dir(spec)
    if not (folder / SPEC).exists():
        return "pending", {}
    files = RunFiles(folder)
    status = files.read_json(STATUS)
    status = status if isinstance(status, dict) else {}
    state = status.get("status") or "pending"
    if state == "done" and not isinstance(files.read_json(METRICS), dict):
        state = "interrupted"
    if state == "running" and status.get("host") == socket.gethostname() and not _alive(status.get("pid")):
        state = "interrupted"
    return (state if state in STATES else "pending"), status


def sweep_group_name(sweep) -> str:
    """The name a sweep's runs are grouped under in the registry: its `name:`, else its file's stem."""
    if sweep.name:
        return str(sweep.name)
    return "sweep" if sweep.path.startswith("<") else Path(sweep.path).stem


def record_sweep(sweep, registry: Registry) -> Path | None:
    """Write the sweep's group file (`<registry>/groups/<name>.json`: its runs' hashes) for the app's Runs
    page; None on a read-only registry."""
    if registry.read_only:
        return None
    source = None if sweep.path.startswith("<") else str(Path(sweep.path).resolve())
    return write_group(registry.root, sweep_group_name(sweep), [spec.hash for spec in sweep.specs], source=source)


def merge_index(registry: Registry, specs: Iterable) -> int:
    """Write the index rows (status, metrics, history) of `specs` from their run folders; only the
    SQLite index is written (`Registry.rebuild_index` without touching a folder). Returns the number
    of runs merged."""
    return registry.rebuild_index([spec.hash for spec in specs], write_folders=False)


def last_error_line(registry: Registry, spec, status: dict) -> str:
    text = (status.get("error") or "").strip()
    if not text:
        log = RunFiles(registry.run_dir(spec)).read_log() if (registry.run_dir(spec) / "log.txt").exists() else ""
        lines = [ln for ln in log.splitlines() if ln.strip()]
        text = lines[-1] if lines else "no error recorded"
    return text.splitlines()[-1].strip()


def sweep_status(sweep, registry: Registry, *, merge: bool = True) -> dict:
    """{"counts": {state: n}, "runs": [(spec, state, status)], "failed": [(spec, last error line)]}."""
    if merge and not registry.read_only:
        record_sweep(sweep, registry)
        merge_index(registry, sweep.specs)
    runs = []
    counts = {s: 0 for s in STATES}
    failed = []
    for spec in sweep.specs:
        state, status = run_state(registry, spec)
        counts[state] += 1
        runs.append((spec, state, status))
        if state == "failed":
            failed.append((spec, last_error_line(registry, spec, status)))
    return {"counts": counts, "runs": runs, "failed": failed}


def default_metrics(specs: Sequence) -> list[str]:
    from workbench.protocols.registry import get_protocol

    out: list[str] = []
    for spec in specs:
        for m in get_protocol(spec.protocol).metrics:
            if m not in out:
                out.append(m)
    return out


def sweep_results(sweep, registry: Registry, metrics: Sequence[str] | None = None):
    """(summary, per_seed) DataFrames over the sweep's finished runs. summary: one row per
    configuration (method, protocol, datasets, shots, backbone, preset, settings that differ) and metric:
    mean, std, ci95, n, values (`workbench.analysis.stats`); per_seed: one row per run."""
    import pandas as pd

    from workbench.analysis.stats import summarize

    metrics = list(metrics or sweep.metrics or default_metrics(sweep.specs))
    rows = []
    for spec in sweep.specs:
        state, _ = run_state(registry, spec)
        if state != "done":
            continue
        values = RunFiles(registry.run_dir(spec)).read_json(METRICS) or {}
        label = ",".join(f"{k}={v}" for k, v in sorted(spec.settings.items())) if spec.settings else ""
        rows.append({"method": spec.method, "protocol": spec.protocol, "datasets": "/".join(spec.datasets),
                     "shots": spec.shots, "backbone": spec.backbone, "preset": spec.preset, "settings": label,
                     "seed": spec.seed, "hash": spec.short_hash, **{m: values.get(m) for m in metrics}})
    keys = ["method", "protocol", "datasets", "shots", "backbone", "preset", "settings"]
    per_seed = pd.DataFrame(rows, columns=keys + ["seed", "hash", *metrics])
    if per_seed.empty:
        return pd.DataFrame(columns=keys + ["metric", "mean", "std", "ci95", "n", "values"]), per_seed
    return summarize(per_seed, keys, metrics), per_seed
