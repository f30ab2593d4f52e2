"""The main job (`make demo`): base-to-novel on the embedded toy world for the demo methods over
three seeds, recorded in the run registry, then the base / new / HM table."""
from __future__ import annotations

import time

DEMO_METHODS = ("zeroshot", "coop", "kgcoop", "clip_lora", "mmrl")
DEMO_SEEDS = (1, 2, 3)
DEMO_DATASET = "toy_objects"


def demo_specs(methods=DEMO_METHODS, seeds=DEMO_SEEDS, dataset=DEMO_DATASET, shots: int = 16,
               backbone: str = "toy") -> list:
    """The demo's runs, built by the one spec builder (zero-shot is one run: it depends on no seed)."""
    from .protocols.builder import build_specs

    return build_specs(list(methods), "base_to_novel", [dataset], shots=shots, seeds=list(seeds), backbone=backbone)


def run_demo(methods=DEMO_METHODS, seeds=DEMO_SEEDS, registry_root=None, device: str | None = None) -> int:
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
    print(f"2/3 {len(specs)} base-to-novel runs on {DEMO_DATASET} (finished runs are reused)")
    outcomes = run_specs(specs, registry, device=device, show=("base", "new", "hm"),
                         echo=lambda line: print("    " + line, flush=True))
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
    p.set_defaults(func=lambda a: run_demo(a.methods, a.seeds, a.registry, a.device))
