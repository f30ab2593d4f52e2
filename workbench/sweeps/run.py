"""`run_sweep`: a sweep's missing runs through its executor (the Python side of `workbench sweep FILE`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from workbench.runs.index import Registry
from workbench.sweeps.spec import Sweep, load_sweep
from workbench.sweeps.state import run_state


def registry_root(sweep: Sweep, registry: str | Path | Registry | None = None) -> Path:
    """--registry, else the sweep file's `registry:` (relative to the file), else $WORKBENCH_RUNS."""
    if isinstance(registry, Registry):
        return registry.root
    if registry is not None:
        return Path(registry).expanduser()
    if sweep.registry:
        path = Path(sweep.registry).expanduser()
        if not path.is_absolute() and not sweep.path.startswith("<"):
            path = Path(sweep.path).resolve().parent / path
        return path
    return Registry().root


def pending_specs(sweep: Sweep, registry: Registry, only: Iterable[str] | None = None) -> list:
    """The sweep's specs that are not done (or, with `only`, those in the given states)."""
    wanted = set(only) if only else None
    out = []
    for spec in sweep.specs:
        state, _ = run_state(registry, spec)
        if (wanted is None and state != "done") or (wanted is not None and state in wanted):
            out.append(spec)
    return out


def run_sweep(sweep: Sweep | str | Path, registry: str | Path | Registry | None = None, *,
              executor: str | None = None, workers: int | None = None, devices=None, only=None,
              wait: bool = True, folder: str | Path | None = None, data_root: str | None = None,
              echo: Callable[[str], Any] | None = print) -> dict:
    """Run what is missing of `sweep`; {"todo": specs, "results": [...], "jobs": [...]}. The executor
    comes from the sweep file unless given. submitit jobs are waited for (and the index merged) when
    `wait`; otherwise `workbench sweep status FILE` follows and merges them."""
    from workbench.sweeps import executors
    from workbench.sweeps.state import merge_index, record_sweep

    sweep = sweep if isinstance(sweep, Sweep) else load_sweep(sweep, data_root=data_root)
    root = registry_root(sweep, registry)
    reg = Registry(root)
    record_sweep(sweep, reg)
    todo = pending_specs(sweep, reg, only)
    kind = executor or sweep.executor.get("kind", "local")
    if echo:
        echo(f"{len(sweep.specs)} runs, {len(sweep.specs) - len(todo)} done or skipped, {len(todo)} to run "
             f"({kind}) into {root}")
    out: dict = {"todo": todo, "results": [], "jobs": []}
    if not todo:
        return out
    if kind == "local":
        devs = devices if devices is not None else sweep.executor.get("devices") or sweep.executor.get("device")
        devs = [devs] if isinstance(devs, (int, str)) else devs
        out["results"] = executors.run_local(todo, str(root), workers=int(workers or sweep.executor.get("workers", 1)),
                                             devices=devs, threads=int(sweep.executor.get("threads", 1)),
                                             data_root=data_root, echo=echo,
                                             gpus_per_task=int(sweep.executor.get("gpus_per_task", 1)),
                                             nproc_per_task=sweep.executor.get("nproc_per_task"))
        return out
    folder = Path(folder or sweep.slurm.get("folder") or root / "_sweep_jobs" / "%j")
    jobs = executors.submit(todo, str(root), kind, folder=folder, slurm=sweep.slurm, data_root=data_root)
    out["jobs"] = jobs
    if echo:
        first = jobs[0].job_id.split("_")[0] if jobs else "-"
        echo(f"submitted {len(jobs)} tasks as job array {first} (logs: {folder}); "
             f"follow with: workbench sweep status {sweep.path} --registry {root}")
    if wait:
        out["results"] = executors.wait(jobs, echo)
        merge_index(reg, sweep.specs)
    return out
