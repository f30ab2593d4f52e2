"""Executors of a sweep, all on existing engines: `local` (a concurrent.futures process pool, one
worker per GPU pinned by CUDA_VISIBLE_DEVICES, or N CPU workers) and submitit (`slurm`: one job array
per sweep; `submitit-local`, `debug`: the same job on this machine).

A task runs one spec through `workbench.runs.execute.execute`, so done runs are skipped and
interrupted ones resume from their last checkpoint. With index="folders" (SLURM's default) a task
writes only its run folder: its SQLite index is private and node-local (a staging folder holding a
link to the run folder); the submitting process merges the shared index from the folders
(`state.merge_index`, run by `workbench sweep status`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

try:  # submitit is a dependency, but the local executor must not need it
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover
    _Checkpointable = object


def run_task(spec_dict: dict, registry_root: str, *, index: str = "shared", device: str | None = None,
             data_root: str | None = None, nproc: int = 1) -> dict:
    """Execute one spec into the registry at `registry_root`; {"hash", "status", "metrics"} or
    {"hash", "status": "failed", "error"}. index: "shared" (the registry's own SQLite index) or
    "folders" (a private node-local index; only the run folder is written in the registry).
    nproc > 1: the spec runs under torchrun on `nproc` processes of this node (DDP; the GPUs the task
    sees, one per process, else gloo on CPU)."""
    from workbench.protocols.runspec import RunSpec
    from workbench.runs.execute import execute
    from workbench.runs.index import Registry

    spec = RunSpec.from_dict(spec_dict)
    root = Path(registry_root).expanduser()
    stage = None
    try:
        if index == "folders":
            folder = root / spec.short_hash
            folder.mkdir(parents=True, exist_ok=True)
            base = os.environ.get("WORKBENCH_SWEEP_STAGE") or os.environ.get("TMPDIR") or tempfile.gettempdir()
            stage = Path(tempfile.mkdtemp(prefix=f"wb-{spec.short_hash}-", dir=base))
            (stage / spec.short_hash).symlink_to(folder.resolve(), target_is_directory=True)
            registry = Registry(stage)  # indexes the one linked folder on opening
        else:
            registry = Registry(root)
        try:
            if nproc > 1:
                run = execute_under_torchrun(spec, registry, nproc, device=device, data_root=data_root)
            else:
                run = execute(spec, registry, device=device, data_root=data_root, progress=False)
        except SystemExit:  # submitit exits after requeueing (preemption / timeout)
            run = registry.find(spec)
            if run is not None:
                with contextlib.suppress(Exception):
                    run.set_status("interrupted", "preempted or timed out; requeued, resumes from its last checkpoint")
            raise
        except Exception as exc:  # noqa: BLE001 - recorded in the run folder; reported to the caller
            return {"hash": spec.hash, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        return {"hash": spec.hash, "status": run.status, "metrics": run.metrics}
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


class _Stopped(Exception):
    pass


def _stop(signum, frame):
    raise _Stopped(signum)


def execute_under_torchrun(spec, registry, nproc: int, *, device: str | None = None, data_root: str | None = None):
    """Run `spec` into `registry` with `python -m workbench.runs.distributed` on `nproc` torchrun processes
    (standalone rendezvous on this node); the run handle, or RuntimeError with torchrun's last error line.
    SIGTERM stops torchrun (which stops its workers) before this process goes."""
    import subprocess

    from workbench.runs.distributed import torchrun_command

    with tempfile.TemporaryDirectory(prefix=f"wb-torchrun-{spec.short_hash}-") as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(spec.to_json())
        args = [str(path), str(registry.root)] + (["--data-root", data_root] if data_root else []) + \
            (["--device", device] if device else [])
        proc = subprocess.Popen(torchrun_command(nproc, args, module="workbench.runs.distributed"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        previous = signal.signal(signal.SIGTERM, _stop)
        try:
            _, err = proc.communicate()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
    if proc.returncode != 0:
        lines = [line for line in err.splitlines() if line.strip() and "Error" in line] or err.splitlines()[-1:]
        raise RuntimeError(f"torchrun with {nproc} processes exited with {proc.returncode}: "
                           f"{lines[-1] if lines else 'no output'}")
    run = registry.find(spec)
    if run is None:
        raise RuntimeError(f"torchrun finished but run {spec.short_hash} is not in {registry.root}")
    return run


class SweepTask(_Checkpointable):
    """The callable submitit runs for one array task. On preemption or timeout submitit calls
    `checkpoint` (its `__submitit_checkpoint__` hook), which resubmits the same task: `execute` then
    resumes the run from its last epoch checkpoint."""

    def __call__(self, spec_dict: dict, registry_root: str, index: str = "folders",
                 data_root: str | None = None, nproc: int = 1) -> dict:
        return run_task(spec_dict, registry_root, index=index, data_root=data_root, nproc=nproc)

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    __submitit_checkpoint__ = checkpoint


# -- local pool -------------------------------------------------------------------------------------
def _init_worker(devices, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; it stops workers by SIGTERM
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get())
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)


def worker_pool(workers: int, devices: Sequence | None = None, threads: int = 1):
    """A spawned multiprocessing.Pool: one worker per device (each pinned by CUDA_VISIBLE_DEVICES), or
    `workers` CPU workers, each with `threads` torch threads."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = None
    if devices:
        workers = len(devices)
        queue = ctx.Queue()
        for d in devices:
            queue.put(d)
    return ctx.Pool(max(1, workers), initializer=_init_worker, initargs=(queue, threads))


def _task(args: tuple) -> tuple[int, dict]:
    i, spec_dict, root, device, data_root, nproc = args
    return i, run_task(spec_dict, root, index="shared", device=device, data_root=data_root, nproc=nproc)


def device_groups(devices: Sequence, per_task: int) -> list[str]:
    """GPU ids cut into groups of `per_task` ("0,1", "2,3"), one group per worker; a remainder too
    small for a task is left unused."""
    if per_task < 1:
        raise ValueError(f"gpus_per_task must be at least 1, got {per_task}")
    ids = [str(d) for d in devices]
    groups = [",".join(ids[i:i + per_task]) for i in range(0, len(ids) - per_task + 1, per_task)]
    if not groups:
        raise ValueError(f"{len(ids)} device(s) {ids} cannot hold a task of {per_task} GPUs")
    return groups


def run_local(specs: Sequence, registry_root: str, *, workers: int = 1, devices: Sequence | None = None,
              threads: int = 1, data_root: str | None = None, echo: Callable[[str], Any] | None = print,
              describe: Callable[[Any, dict], str] | None = None, gpus_per_task: int = 1,
              nproc_per_task: int | None = None) -> list[dict]:
    """Run `specs` in a pool of worker processes (multiprocessing.Pool, spawned) into one registry.
    With `devices` (GPU ids), one worker per device, each seeing only its GPU (CUDA_VISIBLE_DEVICES).
    Ctrl-C: no new run starts, running ones are stopped by SIGTERM (`Pool.terminate`; the run is
    recorded interrupted and resumes on the next sweep) and KeyboardInterrupt is raised. `describe(spec,
    result)` adds text to each finished run's line."""
    device = "cuda" if devices else None
    if devices and gpus_per_task > 1:  # each worker sees its group of GPUs; its tasks run under torchrun
        devices = device_groups(devices, gpus_per_task)
    nproc = gpus_per_task if devices else int(nproc_per_task or 1)
    jobs = [(i, s.to_dict(), str(registry_root), device, data_root, nproc) for i, s in enumerate(specs)]
    results: list[dict] = [{}] * len(specs)
    pool = worker_pool(min(workers, len(specs)), devices, threads)
    try:
        for n, (i, out) in enumerate(pool.imap_unordered(_task, jobs), start=1):
            results[i] = out
            if echo:
                state = out["status"] + (f" ({out['error']})" if out.get("error") else "")
                tail = describe(specs[i], out) if describe else ""
                echo(f"[{n}/{len(specs)}] {specs[i].short_hash} {specs[i].display_name}: {state}{tail}")
        pool.close()
    except BaseException:
        pool.terminate()  # SIGTERM to every worker: a running run becomes interrupted
        raise
    finally:
        pool.join()
    return results


# -- submitit ---------------------------------------------------------------------------------------
def make_executor(kind: str, folder: str | Path, slurm: dict | None = None):
    """A submitit AutoExecutor for kind "slurm", "submitit-local" or "debug", with the sweep's
    SLURM settings (one job array, parallelism, resources, time limit, requeues)."""
    import submitit

    slurm = dict(slurm or {})
    cluster = {"slurm": "slurm", "submitit-local": "local", "debug": "debug"}[kind]
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster,
                                     slurm_max_num_timeout=int(slurm.get("max_requeues", 3)))
    params: dict[str, Any] = {"timeout_min": int(slurm.get("time_min", 240)),
                              "cpus_per_task": int(slurm.get("cpus_per_task", 4)),
                              "tasks_per_node": 1, "nodes": 1}
    gpus = int(slurm.get("gpus_per_task", 1 if kind == "slurm" else 0))
    if gpus:
        params["gpus_per_node"] = gpus
    if "mem_gb" in slurm:
        params["mem_gb"] = int(slurm["mem_gb"])
    if kind == "slurm":
        params["slurm_array_parallelism"] = int(slurm.get("array_parallelism", 32))
        for key in ("partition", "account", "qos", "constraint"):
            if slurm.get(key):
                params[f"slurm_{key}"] = slurm[key]
        if slurm.get("additional"):
            params["slurm_additional_parameters"] = dict(slurm["additional"])
        if slurm.get("setup"):
            params["slurm_setup"] = list(slurm["setup"])
    executor.update_parameters(**params)
    return executor


def submit(specs: Sequence, registry_root: str, kind: str, *, folder: str | Path, slurm: dict | None = None,
           index: str | None = None, data_root: str | None = None) -> list:
    """Submit one task per spec as one job array; returns the submitit jobs."""
    index = index or (slurm or {}).get("index") or ("folders" if kind == "slurm" else "shared")
    executor = make_executor(kind, folder, slurm)
    n = len(specs)
    nproc = task_processes(slurm or {}, kind)
    return executor.map_array(SweepTask(), [s.to_dict() for s in specs], [str(registry_root)] * n,
                              [index] * n, [data_root] * n, [nproc] * n)


def task_processes(slurm: dict, kind: str) -> int:
    """Processes per submitit task: one per GPU it requests (torchrun inside the task when > 1)."""
    return max(1, int(slurm.get("gpus_per_task", 1 if kind == "slurm" else 0) or 1))


def wait(jobs: Sequence, echo: Callable[[str], Any] | None = print) -> list[dict]:
    out = []
    for job in jobs:
        try:
            out.append(job.result())
        except Exception as exc:  # noqa: BLE001 - a job that died outside the run
            out.append({"status": "failed", "error": f"{type(exc).__name__}: {str(exc).splitlines()[-1:]}"})
            if echo:
                echo(f"job {job.job_id}: {out[-1]['error']}")
    return out


__all__ = ["SweepTask", "make_executor", "run_local", "run_task", "submit", "wait"]
