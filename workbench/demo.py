"""The main job (`make demo`): base-to-novel on the embedded toy world for the demo methods over
three seeds, recorded in the run registry, then the base / new / HM table."""
from __future__ import annotations

import os
import time

DEMO_METHODS = ("zeroshot", "coop", "kgcoop", "clip_lora", "mmrl", "dam", "rada", "glad", "dsra")
DEMO_SEEDS = (1, 2, 3)
DEMO_DATASET = "toy_objects"


def demo_specs(methods=DEMO_METHODS, seeds=DEMO_SEEDS, dataset=DEMO_DATASET, shots: int = 16,
               backbone: str = "toy") -> list:
    """The demo's runs, built by the one spec builder (zero-shot is one run: it depends on no seed)."""
    from .protocols.builder import build_specs

    return build_specs(list(methods), "base_to_novel", [dataset], shots=shots, seeds=list(seeds), backbone=backbone)


def default_workers(device: str | None = None) -> int:
    """Runs at once: one on a GPU; on CPU one per core (each run single-threaded), at most 4. On 2 CPUs,
    two single-threaded runs at once finish the grid sooner than one run on both cores."""
    import torch

    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        return 1
    return max(1, min(4, (os.cpu_count() or 1)))


def run_in_pool(specs, registry, workers: int, *, show=("base", "new", "hm"), echo=print) -> list:
    """Run the specs that are not done in `workers` single-threaded processes (the sweeps' local pool),
    then read every outcome from the registry (finished runs with the same hash are reused)."""
    from .runs.execute import Outcome, _metric_text
    from .sweeps.executors import run_local

    outcomes, todo = {}, []
    for spec in specs:
        run = registry.find(spec)
        if run is not None and run.is_done:
            outcomes[spec.hash] = Outcome(spec, run, reused=True)
            echo(f"{spec.short_hash} {spec.display_name}: already done  {_metric_text(run.metrics, show)}".rstrip())
        else:
            todo.append(spec)
    if todo:
        started = time.perf_counter()
        results = run_local(todo, str(registry.root), workers=min(workers, len(todo)), threads=1, echo=echo,
                            describe=lambda spec, out: "  " + _metric_text(out.get("metrics") or {}, show))
        seconds = time.perf_counter() - started
        for spec, out in zip(todo, results):
            ok = out.get("status") == "done"
            outcomes[spec.hash] = Outcome(spec, registry.find(spec) if ok else None, False, seconds,
                                          None if ok else out.get("error") or out.get("status"))
    return [outcomes[s.hash] for s in specs]


def run_demo(methods=DEMO_METHODS, seeds=DEMO_SEEDS, registry_root=None, device: str | None = None,
             workers: int | None = None) -> int:
    from .data.toy import ensure_embedded_model, ensure_toy_data
    from .methods import list_methods
    from .runs import Registry
    from .runs.execute import results_table, run_specs

    start = time.perf_counter()
    available = set(list_methods())
    missing = [m for m in methods if m not in available]
    if missing:
        print(f"note: methods not available in this version, skipped: {', '.join(missing)}")
    methods = [m for m in methods if m in available]
    print("1/3 toy world and embedded backbone (built once, then cached)")
    ensure_toy_data()
    model_dir = ensure_embedded_model()
    print(f"    embedded model: {model_dir}")
    registry = Registry(registry_root)
    specs = demo_specs(methods, seeds)
    workers = workers or default_workers(device)
    print(f"2/3 {len(specs)} base-to-novel runs on {DEMO_DATASET} (finished runs are reused; "
          f"{workers} at a time)")
    echo = lambda line: print("    " + line, flush=True)  # noqa: E731
    if workers > 1 and device in (None, "cpu"):
        outcomes = run_in_pool(specs, registry, workers, echo=echo)
    else:
        outcomes = run_specs(specs, registry, device=device, show=("base", "new", "hm"), echo=echo)
    print(f"3/3 results (registry: {registry.root}): mean ± sample std over seeds, 95% CI")
    print(results_table(outcomes, ("base", "new", "hm")).to_string(index=False))
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 1 if any(not o.ok for o in outcomes) else 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the main job: toy base-to-novel for the demo methods over 3 seeds")
    p.add_argument("--methods", nargs="+", default=list(DEMO_METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEMO_SEEDS))
    p.add_argument("--registry", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=None,
                   help="runs at once (default: 1 on a GPU, else one per CPU core, at most 4; each single-threaded)")
    p.set_defaults(func=lambda a: run_demo(a.methods, a.seeds, a.registry, a.device, a.workers))
