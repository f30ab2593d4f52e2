"""`workbench run` (runs of method × protocol × datasets into the registry) and `workbench methods`.

Building the parser imports nothing heavy: torch loads only when a command runs.
"""
from __future__ import annotations

import sys


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("run", help="train and evaluate a method under a protocol (recorded in the registry)")
    p.add_argument("--method", required=True, help="see `workbench methods`")
    p.add_argument("--protocol", default="base_to_novel",
                   help="a registered protocol (`workbench protocols` lists them with their datasets and metrics)")
    p.add_argument("--dataset", nargs="+", default=["toy_objects"],
                   help="dataset(s); for cross_dataset / domain_generalization: source then targets")
    p.add_argument("--shots", type=_shots, default=16, help="shots per class; 'none': all training data")
    p.add_argument("--seed", type=int, nargs="+", default=[1], help="one run per seed")
    p.add_argument("--backbone", default="toy", help="'toy' (embedded default) or an open_clip model name")
    p.add_argument("--pretrained", default=None, help="tag (e.g. openai) or weights file")
    p.add_argument("--preset", default=None, help="named preset of the method (default: chosen per protocol)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting: train.lr=0.01, train.epochs=5, method.n_ctx=4 (repeatable; "
                        "`workbench methods show NAME` lists them)")
    p.add_argument("--root", default=None, help="data root of the real datasets (or $WORKBENCH_DATA)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--registry", default=None, help="registry folder (default $WORKBENCH_RUNS)")
    p.add_argument("--force", action="store_true", help="rerun even if a finished run with this spec exists")
    p.add_argument("--name", default=None, help="display label (not part of the run's identity)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved specs and whether each is done")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train on N processes of this node with DDP (launches torchrun --standalone; GPUs: one "
                        "per process, else gloo on CPU); the same as `torchrun --nproc_per_node=N -m workbench run ...`")
    p.set_defaults(func=_cmd_run)

    pr = subparsers.add_parser("protocols", help="the registered protocols: datasets, metrics, domains, settings")
    pr.set_defaults(func=_cmd_protocols)

    m = subparsers.add_parser("methods", help="the registered methods and their presets (`methods show NAME`)")
    sub = m.add_subparsers(dest="methods_command")
    s = sub.add_parser("show", help="a method's settings with their meaning, its presets and parameter count")
    s.add_argument("name")
    s.add_argument("--backbone", default=None,
                   help="count trainable parameters on this architecture at random init (no download), "
                        "e.g. ViT-B-16-quickgelu; default: the embedded toy architecture")
    s.add_argument("--classes", type=int, default=10, help="classes of the task used for the count (default 10)")
    m.set_defaults(func=_cmd_methods)


def _shots(text: str) -> int | None:
    if str(text).lower() in ("none", "all", "null"):
        return None
    return int(text)


def _run_argv(args) -> list[str]:
    """`workbench run` arguments equal to `args`, without --nproc (what each torchrun process gets)."""
    out = ["run", "--method", args.method, "--protocol", args.protocol, "--dataset", *args.dataset,
           "--shots", "none" if args.shots is None else str(args.shots), "--seed", *map(str, args.seed),
           "--backbone", args.backbone]
    for flag, value in (("--pretrained", args.pretrained), ("--preset", args.preset), ("--root", args.root),
                        ("--device", args.device), ("--registry", args.registry), ("--name", args.name)):
        if value is not None:
            out += [flag, str(value)]
    for setting in args.settings:
        out += ["--set", setting]
    return out + [flag for flag, on in (("--force", args.force), ("--quiet", args.quiet)) if on]


def specs_from_args(args) -> list:
    from .protocols.builder import build_specs

    return build_specs([args.method], args.protocol, [tuple(args.dataset)], shots=args.shots, seeds=args.seed,
                       backbone=args.backbone, pretrained=args.pretrained,
                       presets={args.method: args.preset} if args.preset else None, settings=args.settings,
                       name=args.name, strict=True, data_root=args.root)


def _cmd_run(args) -> int:
    from .protocols.builder import SpecError
    from .protocols.settings import SettingError
    from .runs import Registry
    from .runs.execute import run_specs

    try:
        specs = specs_from_args(args)
    except (SpecError, SettingError, KeyError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    if args.nproc and not args.dry_run:
        from .runs.distributed import launch

        return launch(args.nproc, _run_argv(args))
    from .engine.distributed import launched_by_torchrun

    if launched_by_torchrun() and not args.dry_run:
        from .runs.distributed import run_specs_distributed

        run_specs_distributed(specs, args.registry, device=args.device, data_root=args.root, force=args.force,
                              progress=not args.quiet)
        return 0
    registry = Registry(args.registry)
    if args.dry_run:
        for spec in specs:
            run = registry.find(spec)
            state = run.status if run is not None else "new"
            print(f"{spec.short_hash}  {spec.display_name}  preset {spec.preset}  [{state}]")
            for key, value in sorted(spec.resolved_settings().items()):
                print(f"    {key} = {value!r}")
        return 0
    outcomes = run_specs(specs, registry, device=args.device, data_root=args.root, force=args.force,
                         progress=not args.quiet)
    return 1 if any(not o.ok for o in outcomes) else 0


def _cmd_methods(args) -> int:
    from .methods.catalog import describe_method, method_index

    if getattr(args, "methods_command", None) == "show":
        try:
            print(describe_method(args.name, backbone=args.backbone, classes=args.classes))
        except KeyError as exc:
            print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 2
        return 0
    for entry in method_index():
        print(f"{entry['name']}: presets {', '.join(entry['presets']) or '-'}")
    return 0


def _cmd_protocols(args) -> int:
    import dataclasses

    from .protocols import PROTOCOLS

    for name, info in sorted(PROTOCOLS.items()):
        if info.max_datasets is None:
            count = f"{info.min_datasets} or more (source first)"
        elif info.min_datasets == info.max_datasets:
            count = str(info.min_datasets)
        else:
            count = f"{info.min_datasets} to {info.max_datasets} (source first)"
        metrics = list(info.metrics) + (["one top-1 per dataset"] if info.per_dataset_metrics else [])
        print(f"{name} (version {info.version}): {info.description.splitlines()[0] if info.description else ''}")
        print(f"    datasets: {count}; metrics: {', '.join(metrics)}; domains: {', '.join(info.domains)}")
        if info.settings is not None:
            fields = ", ".join(f"{info.namespace}.{f.name}" for f in dataclasses.fields(info.settings))
            print(f"    settings: {fields}")
    return 0
