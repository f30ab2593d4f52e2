"""`workbench toy build|info`: render the toy datasets and pretrain the embedded tiny CLIP."""
from __future__ import annotations

import argparse


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("toy", help="toy world: render datasets, pretrain the embedded tiny CLIP")
    sub = p.add_subparsers(dest="toy_command", required=True)

    b = sub.add_parser("build", help="render the toy datasets and pretrain the embedded model if needed")
    b.add_argument("--force", action="store_true", help="re-render the data and re-pretrain the model")
    b.add_argument("--steps", type=int, default=None, help="pretraining optimizer steps (default: the built-in budget)")
    b.add_argument("--seed", type=int, default=None, help="pretraining seed (default 0)")
    b.add_argument("--data-only", action="store_true", help="only render the datasets")
    b.set_defaults(func=cmd_build)

    i = sub.add_parser("info", help="where the toy data and the embedded model are, and their state")
    i.set_defaults(func=cmd_info)


def cmd_build(args: argparse.Namespace) -> int:
    from . import ensure_embedded_model, ensure_toy_data
    from .quality import format_quality
    from .pretrain import read_meta

    root = ensure_toy_data(force=args.force)
    print(f"toy data: {root}")
    if args.data_only:
        return 0
    path = ensure_embedded_model(force=args.force, steps=args.steps, seed=args.seed)
    meta = read_meta(path) or {}
    print(f"embedded model: local-dir:{path}")
    print(f"seed {meta.get('seed')}, steps {meta.get('steps')}, pretraining {meta.get('train_wall_s')} s, "
          f"sha256 {meta.get('weights_sha256')}")
    if meta.get("quality"):
        print(format_quality(meta["quality"]))
        return 0 if meta["quality"].get("passes_bar") else 1
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from workbench.paths import toy_data_root

    from . import SPECS, WORLD_VERSION, embedded_model_dir, embedded_model_status
    from .datasets import dataset_is_current
    from .quality import format_quality

    root = toy_data_root()
    print(f"world version {WORLD_VERSION}")
    print(f"toy data root: {root}")
    for name, spec in SPECS.items():
        folder = root / name
        state = "ok" if dataset_is_current(folder) else ("stale" if folder.exists() else "missing")
        counts = ""
        if state == "ok":
            split = json.loads((folder / spec.split_file).read_text(encoding="utf-8"))
            counts = ", ".join(f"{k} {len(v)}" for k, v in split.items())
        print(f"  {name:<22} {state:<8} {len(spec.classes())} classes  {counts}")
    path = embedded_model_dir()
    ok, reason, meta = embedded_model_status(path)
    print(f"embedded model: {path} ({reason})")
    if meta:
        print(f"  seed {meta.get('seed')}, steps {meta.get('steps')}, pretraining {meta.get('train_wall_s')} s, "
              f"sha256 {meta.get('weights_sha256')}")
        if meta.get("quality"):
            print("  " + format_quality(meta["quality"]).replace("\n", "\n  "))
    if not ok:
        print("run `workbench toy build` to (re)build it")
    return 0
