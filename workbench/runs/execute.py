"""Running specs into the registry: `execute` one spec, `run_specs` a list (done runs skipped, one line
printed per run), `results_table` their mean ± std over seeds. `workbench run`, the demo, the notebooks
and the app's launches all go through these.

    specs = build_specs(["coop"], "base_to_novel", ["toy_objects"], seeds=[1, 2, 3])
    outcomes = run_specs(specs, Registry())
    print(results_table(outcomes, ["base", "new", "hm"]).to_string(index=False))
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from workbench.protocols.runspec import RunSpec
from workbench.runs.files import RunBusyError
from workbench.runs.index import Registry


def execute(spec: RunSpec, registry: Registry | None = None, *, device: str | None = None,
            data_root: str | None = None, force: bool = False, progress: bool = True, cache=None):
    """Run `spec` unless a finished run with the same hash exists (then return it). A run that was
    interrupted resumes from its last checkpoint. The spec must be resolved (`build_spec`)."""
    from workbench.backbone import trainable_parameter_report
    from workbench.engine.features import FeatureCache
    from workbench.models import default_device, load_backbone
    from workbench.protocols.base import RunContext
    from workbench.protocols.builder import check_resolved
    from workbench.protocols.registry import get_protocol

    info = get_protocol(spec.protocol)
    check_resolved(spec)
    data_root = _data_root_for(spec, data_root)
    device = device or default_device()
    preflight(spec, device)
    registry = registry or Registry()
    run = registry.create_or_get(spec)
    if not force and not registry.should_run(spec):
        return run
    with run.owned():  # one process executes a run; another waits (bounded) or is told who holds it
        if not registry.should_run(spec, force=force):  # finished meanwhile by the previous owner
            return run
        ctx = RunContext(spec, run, device, data_root, cache or FeatureCache(), progress)
        with run.running():
            ctx.backbone = load_backbone(spec.backbone, spec.pretrained, device=ctx.device)
            run.log(f"backbone {ctx.backbone.model_id} on {ctx.device}")
            metrics = info.run(ctx)
            method = getattr(ctx, "method", None)
            if method is not None:
                metrics["trainable_params"] = trainable_parameter_report(method)["trainable"]
            metrics.update({k: v for k, v in ctx.metrics.items() if k not in metrics})
            run.write_metrics(metrics)
            run.set_progress(1.0, "done")
    return run


def _data_root_for(spec: RunSpec, data_root: str | None) -> str | None:
    """The spec's own data root (part of its identity); a different one given here is an error."""
    from pathlib import Path

    from workbench.protocols.builder import SpecError

    if data_root is None or spec.data_root is None:
        return spec.data_root if data_root is None else data_root
    if str(Path(data_root).expanduser().resolve()) != spec.data_root:
        raise SpecError(f"spec {spec.short_hash} was built for the data under {spec.data_root}, not {data_root}: "
                        "build the spec with this data root (it is part of the run's identity)")
    return spec.data_root


def preflight(spec: RunSpec, device: str) -> None:
    """Refuse, before any run folder exists, what would only fail inside the run: a device that is not
    there, an unknown backbone, weights that cannot be had offline."""
    from workbench.models import check_backbone, check_device

    check_device(device)
    check_backbone(spec.backbone, spec.pretrained)


@dataclass
class Outcome:
    spec: RunSpec
    run: Any = None  # RunHandle when finished
    reused: bool = False
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.run is not None and self.error is None


def _metric_text(metrics: dict, show: Sequence[str] | None) -> str:
    keys = show if show else [k for k, v in metrics.items()
                              if isinstance(v, float) and not k.endswith("seconds") and not k.endswith("_images")]
    return "  ".join(f"{k} {metrics[k]:.2f}" for k in keys if isinstance(metrics.get(k), (int, float)))


def run_specs(specs: Sequence[RunSpec], registry: Registry | str | None = None, *, device: str | None = None,
              data_root: str | None = None, force: bool = False, progress: bool = False,
              show: Sequence[str] | None = None, stop_on_error: bool = False, echo=print) -> list[Outcome]:
    """Run each spec (a finished run with the same hash is reused, not rerun), printing one line per
    run through `echo`. A failing run is reported and the next one goes on, unless `stop_on_error`;
    its error is in the outcome and in the run's log.txt. Runs share one feature cache."""
    from workbench.engine.features import FeatureCache

    registry = registry if isinstance(registry, Registry) else Registry(registry)
    cache = FeatureCache()
    outcomes = []
    for i, spec in enumerate(specs, start=1):
        shots = "" if spec.shots is None else f" shots={spec.shots}"
        label = f"[{i}/{len(specs)}] {spec.short_hash} {spec.method} {'/'.join(spec.datasets)}{shots} seed={spec.seed}"
        before = registry.find(spec)
        reused = before is not None and before.is_done and not force
        start = time.perf_counter()
        try:
            run = execute(spec, registry, device=device, data_root=data_root, force=force, progress=progress,
                          cache=cache)
        except Exception as exc:  # noqa: BLE001 - reported, the next run goes on
            if stop_on_error:
                raise
            msg = f"{type(exc).__name__}: {exc}"
            if echo:  # a busy run is not failed: another process is running it
                echo(f"{label}: {'BUSY' if isinstance(exc, RunBusyError) else 'FAILED'} ({msg})")
            outcomes.append(Outcome(spec, None, False, time.perf_counter() - start, msg))
            continue
        seconds = time.perf_counter() - start
        if echo:
            state = "already done" if reused else f"done in {seconds:.1f}s"
            echo(f"{label}: {state}  {_metric_text(run.metrics, show)}".rstrip())
        outcomes.append(Outcome(spec, run, reused, seconds))
    return outcomes


def results_table(outcomes: Sequence[Outcome], metrics: Sequence[str], *, by: str = "method", ci: bool = True):
    """Mean ± sample std (and the 95% CI) over seeds of the finished runs, one row per `by` value in
    first-seen order (`workbench.analysis.stats`, the statistic the app and notebooks show too)."""
    import pandas as pd

    from workbench.analysis.stats import summary_table

    rows = [{"method": o.spec.method, "protocol": o.spec.protocol, "dataset": o.spec.source, "seed": o.spec.seed,
             **{m: o.run.metrics.get(m) for m in metrics}} for o in outcomes if o.ok]
    if not rows:
        return pd.DataFrame(columns=[by, "n", *metrics])
    return summary_table(pd.DataFrame(rows), by, list(metrics), ci=ci).rename(columns={"n": "runs"})
