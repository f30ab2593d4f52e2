"""`workbench data list|check|prepare`."""
from __future__ import annotations

import argparse
import json
import os


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("data", help="dataset manifests, checks and few-shot split files")
    sub = p.add_subparsers(dest="data_command", required=True)

    root_help = "data root holding the CoOp-layout dataset folders (default: $WORKBENCH_DATA; toy datasets: the toy root)"

    ls = sub.add_parser("list", help="list the known datasets and where each is expected")
    ls.add_argument("--root", default=None, help=root_help)
    ls.set_defaults(func=_cmd_list)

    c = sub.add_parser("check", help="report which datasets are present, complete and readable")
    c.add_argument("--root", default=None, help=root_help)
    c.add_argument("--dataset", nargs="+", default=None, metavar="NAME", help="datasets to check (default: all)")
    c.add_argument(
        "--verify",
        choices=("none", "sample", "all"),
        default="sample",
        help="decode images to find unreadable ones: none, an evenly spaced sample (default), or all",
    )
    c.add_argument("--sample-size", type=int, default=1000, help="images decoded per dataset with --verify sample")
    c.add_argument("--json", action="store_true", help="print the reports as JSON")
    c.add_argument("--strict", action="store_true",
                   help="exit 1 if any checked dataset is not OK (it always does when no dataset was found)")
    c.set_defaults(func=_cmd_check)

    pr = sub.add_parser("prepare", help="write the CoOp few-shot split files (split_fewshot/shot_K-seed_S.json)")
    pr.add_argument("--root", default=None, help=root_help)
    pr.add_argument("--dataset", nargs="+", default=None, metavar="NAME", help="datasets to prepare (default: all present)")
    pr.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    pr.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    pr.set_defaults(func=_cmd_prepare)


def _root(args) -> str | None:
    return args.root or os.environ.get("WORKBENCH_DATA") or None


def _cmd_list(args) -> int:
    from workbench.data.manifests import DataRootError, load_all_manifests

    for m in load_all_manifests():
        try:
            where = str(m.image_root(_root(args)))
        except DataRootError:
            where = f"$WORKBENCH_DATA/{m.folder}" + ("" if m.image_dir in ("", ".") else f"/{m.image_dir}")
        print(f"{m.name:22s} {m.display_name:22s} {m.split.kind:16s} {where}")
    return 0


def _cmd_check(args) -> int:
    from workbench.data.check import check_all, format_reports, nothing_checked

    reports = check_all(_root(args), args.dataset, verify=args.verify, sample_size=args.sample_size)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        print(format_reports(reports))
    bad = any(r.status != "ok" for r in reports)
    return 1 if (bad and (args.strict or args.dataset)) or nothing_checked(reports) else 0


def _cmd_prepare(args) -> int:
    from workbench.data.check import format_prepare, prepare

    results = prepare(_root(args), args.dataset, shots=args.shots, seeds=args.seeds)
    print(format_prepare(results))
    failed = [r for r in results if r.status in ("error",) or (args.dataset and r.status == "missing")]
    return 1 if failed else 0


def _main(argv=None) -> int:  # `python -m workbench.data.cli data check ...` without the other command groups
    parser = argparse.ArgumentParser(prog="workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(_main())
