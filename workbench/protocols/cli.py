"""`workbench run`: one or more runs (seeds) of method × protocol × datasets into the registry."""
from __future__ import annotations

import dataclasses
import sys

import yaml


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("run", help="train and evaluate a method under a protocol (recorded in the registry)")
    p.add_argument("--method", required=True, help="see `workbench methods`")
    p.add_argument("--protocol", default="base_to_novel",
                   help="base_to_novel | few_shot | cross_dataset | domain_generalization")
    p.add_argument("--dataset", nargs="+", default=["toy_objects"],
                   help="dataset(s); for cross_dataset / domain_generalization: source then targets")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--seed", type=int, nargs="+", default=[1], help="one run per seed")
    p.add_argument("--backbone", default="toy", help="'toy' (embedded default) or an open_clip model name")
    p.add_argument("--pretrained", default=None, help="tag (e.g. openai) or weights file")
    p.add_argument("--preset", default=None, help="named preset of the method (default: chosen per protocol)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting: train.lr=0.01, train.epochs=5, method.n_ctx=4 (repeatable)")
    p.add_argument("--root", default=None, help="data root of the real datasets (or $WORKBENCH_DATA)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--registry", default=None, help="registry folder (default $WORKBENCH_RUNS)")
    p.add_argument("--force", action="store_true", help="rerun even if a finished run with this spec exists")
    p.add_argument("--name", default=None, help="display label (not part of the run's identity)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_run)

    m = subparsers.add_parser("methods", help="list the registered methods and their presets")
    m.set_defaults(func=_cmd_methods)


def parse_settings(method: str, settings: list[str]) -> tuple[dict, dict]:
    """KEY=VALUE strings -> (method_config, overrides). Values are parsed as YAML scalars/lists."""
    from ..engine.train import TrainConfig
    from ..methods import get_method_class

    method_fields = {f.name for f in dataclasses.fields(get_method_class(method).Config)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    method_config, overrides = {}, {}
    for item in settings:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if isinstance(value, list):
            value = tuple(value)
        if key.startswith("train.") or (key in train_fields and key not in method_fields):
            name = key.removeprefix("train.")
            if name not in train_fields:
                raise ValueError(f"unknown training setting {name!r}; known: {sorted(train_fields)}")
            overrides[f"train.{name}"] = value
        else:
            name = key.removeprefix("method.")
            if name not in method_fields:
                raise ValueError(f"{method} has no setting {name!r}; method settings: {sorted(method_fields)}, "
                                 f"training settings (train.*): {sorted(train_fields)}")
            method_config[name] = value
    return method_config, overrides


def build_specs(args) -> list:
    from ..runs import RunSpec
    from .base import resolve_preset

    method_config, overrides = parse_settings(args.method, args.settings)
    method_config["preset"] = args.preset or resolve_preset(args.method, args.protocol, args.backbone, args.dataset[0])
    return [RunSpec(method=args.method, protocol=args.protocol, datasets=tuple(args.dataset),
                    method_config=method_config, shots=args.shots, seed=seed, backbone=args.backbone,
                    pretrained=args.pretrained, overrides=overrides, name=args.name) for seed in args.seed]


def _cmd_run(args) -> int:
    from ..runs import Registry
    from . import execute

    try:
        specs = build_specs(args)
    except (KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    registry = Registry(args.registry)
    failed = 0
    for spec in specs:
        existed = registry.find(spec)
        done_before = existed is not None and existed.is_done and not args.force
        try:
            run = execute(spec, registry, device=args.device, data_root=args.root, force=args.force,
                          progress=not args.quiet)
        except Exception as exc:  # the run is marked failed with its traceback in log.txt
            failed += 1
            print(f"run {spec.short_hash} ({spec.method}, seed {spec.seed}) failed: {exc}", file=sys.stderr)
            continue
        label = "already done" if done_before else "done"
        metrics = {k: v for k, v in run.metrics.items() if isinstance(v, float) and not k.endswith("seconds")}
        shown = "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())
        print(f"{run.short_hash}  {spec.method}  {spec.protocol}  seed {spec.seed}  [{label}]  {shown}")
    return 1 if failed else 0


def _cmd_methods(args) -> int:
    from ..methods import get_method_class, list_methods

    for name in list_methods():
        cls = get_method_class(name)
        print(f"{name}: presets {', '.join(sorted(cls.presets)) or '-'}")
    return 0
