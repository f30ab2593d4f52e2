"""`workbench bench`: speed-up of training on cached features, and feature cache hit vs. miss."""
from __future__ import annotations

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
    from .benchmarks import list_benchmarks

    named = p.add_subparsers(dest="benchmark", metavar="NAME",
                             help="a named benchmark (without one: the feature-cache benchmark above)")
    for bench in list_benchmarks().values():
        sub = named.add_parser(bench.name, help=bench.help, description=bench.help)
        bench.add_arguments(sub)
        sub.add_argument("--json", action="store_true", help="print the result as JSON")
        sub.set_defaults(func=_named_runner(bench))


def _named_runner(bench):
    def run(args) -> int:
        result = bench.run(args)
        print(json.dumps(result) if args.json else bench.format(result))
        return 0

    return run


def _cmd_bench(args) -> int:
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
