"""`workbench bench`: speed-up of training on cached features, and feature cache hit vs. miss."""
from __future__ import annotations

import argparse
import json


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("bench", help="ratios: cached-feature vs. re-encoding training, cache hit vs. miss")
    p.add_argument("--backbone", default="toy",
                   help="'toy' (embedded default; built on first use, ~10 min) or an open_clip model name, "
                        "e.g. wb-tiny-vit for a quick random-init check")
    p.add_argument("--pretrained", default=None, help="pretrained tag or weights file for an open_clip model")
    p.add_argument("--dataset", default="toy_objects")
    p.add_argument("--root", default=None, help="data root (default: the manifest's)")
    p.add_argument("--shots", type=int, default=16, help="training images per class (0: the whole train split)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--views", type=int, default=2, help="augmented views cached per training image")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--split", default="test", help="split encoded for the cache hit/miss measurement")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); on a busy shared CPU 1 can be far faster")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_bench)
    from .benchmarks import benchmark_modules

    p.add_argument("benchmark", nargs="?", metavar="NAME",
                   help=f"a named benchmark ({', '.join(benchmark_modules())}); `workbench bench NAME --help` for its "
                        "options. Without one: the feature-cache benchmark above")
    p.add_argument("benchmark_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _run_named(name: str, argv: list[str]) -> int:
    """Parse `argv` with the named benchmark's own options (its module is imported only now) and run it."""
    from .benchmarks import list_benchmarks

    benchmarks = list_benchmarks()
    if name not in benchmarks:
        raise SystemExit(f"unknown benchmark {name!r}; available: {', '.join(benchmarks)} "
                         "(or none, for the feature-cache benchmark)")
    bench = benchmarks[name]
    parser = argparse.ArgumentParser(prog=f"workbench bench {name}", description=bench.help)
    bench.add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = bench.run(args)
    print(json.dumps(result) if args.json else bench.format(result))
    return 0


def _cmd_bench(args) -> int:
    if args.benchmark:
        return _run_named(args.benchmark, args.benchmark_args)
    from .bench import format_bench, run_bench
    from .models import default_device

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = run_bench(args.backbone, args.dataset, pretrained=args.pretrained, shots=args.shots or None,
                       epochs=args.epochs, views=args.views, batch_size=args.batch_size, seed=args.seed,
                       root=args.root, device=args.device or default_device(), split=args.split)
    print(json.dumps(result) if args.json else format_bench(result))
    return 0
