"""The main job (`make demo`): base-to-novel on the embedded toy world for the demo methods over
three seeds, recorded in the run registry, then the base / new / HM table."""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

DEMO_METHODS = ("zeroshot", "coop", "kgcoop", "clip_lora", "mmrl")
DEMO_SEEDS = (1, 2, 3)
DEMO_DATASET = "toy_objects"


def demo_specs(methods=DEMO_METHODS, seeds=DEMO_SEEDS, dataset=DEMO_DATASET, shots: int = 16,
               backbone: str = "toy") -> list:
    from .protocols import resolve_preset
    from .runs import RunSpec

    return [RunSpec(method=m, protocol="base_to_novel", datasets=(dataset,), shots=shots, seed=s,
                    backbone=backbone, method_config={"preset": resolve_preset(m, "base_to_novel", backbone)})
            for m in methods for s in seeds]


def summary_table(registry, specs):
    """mean ± std over seeds of base, new and HM per method (done runs only)."""
    import pandas as pd

    rows = []
    for spec in specs:
        run = registry.find(spec)
        if run is not None and run.is_done:
            rows.append({"method": spec.method, "seed": spec.seed, **{k: run.metrics[k] for k in ("base", "new", "hm")}})
    if not rows:
        return pd.DataFrame(columns=["method", "runs", "base", "new", "hm"])
    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(s.method for s in specs))
    out = []
    for method in order:
        part = df[df.method == method]
        if part.empty:
            continue
        row = {"method": method, "runs": len(part)}
        for k in ("base", "new", "hm"):
            std = part[k].std(ddof=0) if len(part) > 1 else 0.0
            row[k] = f"{part[k].mean():.2f} ± {std:.2f}"
        out.append(row)
    return pd.DataFrame(out)


def run_demo(methods=DEMO_METHODS, seeds=DEMO_SEEDS, registry_root=None, device: str | None = None) -> int:
    from .data.toy import ensure_embedded_model, ensure_toy_data
    from .engine.features import FeatureCache
    from .methods import list_methods
    from .protocols import execute
    from .runs import Registry

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
    cache = FeatureCache()
    specs = demo_specs(methods, seeds)
    print(f"2/3 {len(specs)} base-to-novel runs on {DEMO_DATASET} (finished runs are reused)")
    failed = []
    for spec in tqdm(specs, desc="demo runs", unit="run"):
        try:
            execute(spec, registry, device=device, cache=cache, progress=False)
        except Exception as exc:  # keep going; the run is marked failed in the registry
            failed.append((spec, exc))
            print(f"    run {spec.short_hash} ({spec.method}, seed {spec.seed}) failed: {exc}", file=sys.stderr)
    print(f"3/3 results (registry: {registry.root})")
    print(summary_table(registry, specs).to_string(index=False))
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the main job: toy base-to-novel for the demo methods over 3 seeds")
    p.add_argument("--methods", nargs="+", default=list(DEMO_METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEMO_SEEDS))
    p.add_argument("--registry", default=None)
    p.add_argument("--device", default=None)
    p.set_defaults(func=lambda a: run_demo(a.methods, a.seeds, a.registry, a.device))
