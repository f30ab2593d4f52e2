"""Runs under torchrun: every rank trains (DDP, `engine.distributed`), rank 0 alone writes the run.

    torchrun --nproc_per_node=2 -m workbench run --method lp_ft --protocol full_finetune ...
    workbench run --nproc 2 ...            (the same: launches torchrun --standalone for you)
    python -m workbench.runs.distributed SPEC.json REGISTRY [--data-root R]   (one spec; sweeps use this)

Rank 0 executes each spec exactly as one process would (`execute`: skip when done, resume, lock, run
folder, metrics); the other ranks run the same protocol against a `FollowerRun` of that run (they read
its checkpoints, so a resumed run resumes on every rank, and write nothing). Rank 0 decides whether a
spec runs and tells the others. The spec's `train.batch_size` is the global batch, so a run's identity
does not depend on the number of processes. An error on any rank ends the whole launch (torchrun stops
the other ranks); re-running resumes from the last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Sequence

from workbench.engine import distributed as dist_engine
from workbench.protocols.runspec import RunSpec
from workbench.runs.index import Registry


def follow(spec: RunSpec, registry: Registry, device: str, data_root: str | None) -> None:
    """What a rank > 0 does for a spec rank 0 is executing: the same protocol, writing nothing."""
    from workbench.engine.features import FeatureCache
    from workbench.models import load_backbone
    from workbench.protocols.base import RunContext
    from workbench.protocols.registry import get_protocol

    run = registry.find(spec)
    ctx = RunContext(spec, dist_engine.FollowerRun(run), device, data_root if data_root else spec.data_root,
                     FeatureCache(), progress=False)
    ctx.backbone = load_backbone(spec.backbone, spec.pretrained, device=device)
    get_protocol(spec.protocol).run(ctx)


def run_specs_distributed(specs: Sequence[RunSpec], registry: Registry | str | None = None, *,
                          device: str | None = None, data_root: str | None = None, force: bool = False,
                          progress: bool = False, echo=print) -> list:
    """`run_specs` for a torchrun launch (call it on every rank). Returns rank 0's outcomes (other
    ranks: an empty list). Stops at the first failing run."""
    from workbench.models import default_device
    from workbench.runs.execute import Outcome, execute

    ctx = dist_engine.init_distributed(device)
    if ctx is None:
        raise RuntimeError("run_specs_distributed runs under torchrun (RANK / WORLD_SIZE unset); "
                           "use workbench.runs.execute.run_specs in one process")
    device = dist_engine.rank_device(ctx, device or default_device())
    root = registry.root if isinstance(registry, Registry) else registry
    if ctx.is_main:
        registry = Registry(root)
    dist_engine.barrier()  # rank 0 has created the registry
    if not ctx.is_main:
        registry = Registry(root)
    outcomes = []
    for i, spec in enumerate(specs, start=1):
        todo = None
        if ctx.is_main:
            registry.create_or_get(spec)
            todo = force or registry.should_run(spec)
        todo = dist_engine.broadcast_object(todo)  # also: the run folder exists for the followers
        if not todo:
            if ctx.is_main:
                outcomes.append(Outcome(spec, registry.find(spec), reused=True))
                echo(f"[{i}/{len(specs)}] {spec.short_hash} {spec.display_name}: done earlier, skipped")
            continue
        if ctx.is_main:
            echo(f"[{i}/{len(specs)}] {spec.short_hash} {spec.display_name} on {ctx.world_size} processes "
                 f"({ctx.backend})")
            run = execute(spec, registry, device=device, data_root=data_root, force=force, progress=progress)
            outcomes.append(Outcome(spec, run))
            metrics = {k: v for k, v in run.metrics.items() if isinstance(v, float) and not k.endswith("seconds")}
            echo("    " + "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        else:
            follow(spec, registry, device, data_root)
        dist_engine.barrier()
    return outcomes


def torchrun_command(nproc: int, module_args: Sequence[str], standalone: bool = True,
                     module: str = "workbench") -> list[str]:
    """The command that starts `python -m <module> <module_args>` on `nproc` processes of this node."""
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    head = [sys.executable, "-m", "torch.distributed.run"] + (["--standalone"] if standalone else [])
    return head + [f"--nproc_per_node={nproc}", "-m", module, *module_args]


def launch(nproc: int, module_args: Sequence[str]) -> int:
    """Run `workbench <module_args>` under torchrun on this node; its exit status."""
    return subprocess.call(torchrun_command(nproc, module_args))


def main(argv: Sequence[str] | None = None) -> int:
    """One spec (JSON file) into a registry, on every rank of a torchrun launch (the sweep executors)."""
    p = argparse.ArgumentParser(prog="python -m workbench.runs.distributed")
    p.add_argument("spec", help="spec JSON file (RunSpec.to_json)")
    p.add_argument("registry")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--result", default=None, help="rank 0 writes {hash, status, metrics} here (JSON)")
    args = p.parse_args(argv)
    with open(args.spec) as f:
        spec = RunSpec.from_json(f.read())
    outcomes = run_specs_distributed([spec], args.registry, device=args.device, data_root=args.data_root)
    if outcomes and args.result:
        run = outcomes[0].run
        with open(args.result, "w") as f:
            json.dump({"hash": spec.hash, "status": run.status, "metrics": run.metrics}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
