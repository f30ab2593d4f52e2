"""`workbench sweep FILE` (run what is missing), `workbench sweep status FILE`, `workbench sweep results FILE`.

    workbench sweep sweeps/toy_b2n.yaml --dry-run        # the runs, and how many are done
    workbench sweep sweeps/toy_b2n.yaml --workers 2      # local pool (or --devices 0 1 2 3: one run per GPU)
    workbench sweep sweeps/paper.yaml --executor slurm   # one job array via submitit; returns at once
    workbench sweep status sweeps/paper.yaml             # merges the index from the run folders, counts
    workbench sweep results sweeps/paper.yaml --export results.csv
"""
from __future__ import annotations

import shlex
import sys

SUBCOMMANDS = ("status", "results")


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="run a YAML grid of runs (local pool or SLURM); `sweep status|results FILE`",
                              description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("target", help="the sweep file, or `status` / `results` followed by the file")
    p.add_argument("file", nargs="?", default=None, help=__import__("argparse").SUPPRESS)
    p.add_argument("--registry", default=None, help="registry folder (default: the file's registry:, $WORKBENCH_RUNS)")
    p.add_argument("--root", default=None, help="data root of the real datasets (or the file's data_root:)")
    p.add_argument("--executor", default=None, choices=["local", "slurm", "submitit-local", "debug"])
    p.add_argument("--workers", type=int, default=None, help="local: worker processes")
    p.add_argument("--devices", nargs="+", default=None, help="local: GPU ids, one worker (and run) per GPU")
    p.add_argument("--only", default=None, help="only runs in these states, e.g. failed or failed,interrupted")
    p.add_argument("--dry-run", action="store_true", help="print the runs and whether each is done; run nothing")
    p.add_argument("--no-wait", action="store_true", help="submitit: return after submitting")
    p.add_argument("--metrics", nargs="+", default=None, help="results: metrics (default: the protocols')")
    p.add_argument("--export", default=None, help="results: write per-seed values (.csv/.parquet) and the summary "
                                                  "beside them (<name>.summary.csv)")
    p.set_defaults(func=_cmd_sweep)


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _cmd_sweep(args) -> int:
    from workbench.runs.index import Registry
    from workbench.sweeps.spec import SweepError, load_sweep
    from workbench.sweeps.run import registry_root

    command, path = ("run", args.target) if args.file is None else (args.target, args.file)
    if command not in ("run", *SUBCOMMANDS):
        return _fail(f"unknown sweep command {command!r}: workbench sweep FILE | sweep status FILE | sweep results FILE")
    try:
        sweep = load_sweep(path, data_root=args.root)
    except SweepError as exc:
        return _fail(str(exc))
    root = registry_root(sweep, args.registry)
    if command == "status":
        return _status(sweep, Registry(root), path, args)
    if command == "results":
        return _results(sweep, Registry(root), args)
    if args.dry_run:
        return _dry_run(sweep, Registry(root), args)
    from workbench.sweeps.run import run_sweep

    only = args.only.split(",") if args.only else None
    try:
        out = run_sweep(sweep, root, executor=args.executor, workers=args.workers, devices=args.devices, only=only,
                        wait=not args.no_wait, data_root=args.root)
    except KeyboardInterrupt:
        print(f"stopped; run the same command again to continue ({shlex.join(['workbench', 'sweep', path])})",
              file=sys.stderr)
        return 130
    return 1 if any(r.get("status") != "done" for r in out["results"]) else 0


def _dry_run(sweep, registry, args) -> int:
    from workbench.sweeps.state import run_state

    only = set(args.only.split(",")) if args.only else None
    done = 0
    for spec in sweep.specs:
        state, _ = run_state(registry, spec)
        done += state == "done"
        if only is None or state in only:
            settings = ", ".join(f"{k}={v}" for k, v in sorted(spec.settings.items()))
            print(f"{spec.short_hash}  {spec.display_name}  preset {spec.preset}  [{state}]"
                  + (f"  {settings}" if settings else ""))
    print(f"{len(sweep.specs)} runs: {done} done, {len(sweep.specs) - done} to run")
    return 0


def _status(sweep, registry, path, args) -> int:
    from workbench.sweeps.state import sweep_status

    report = sweep_status(sweep, registry)
    counts = report["counts"]
    print(f"{sweep.path}: {len(sweep.specs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for spec, line in report["failed"]:
        print(f"  failed {spec.short_hash} {spec.display_name}: {line}")
    if report["failed"]:
        cmd = ["workbench", "sweep", path, "--only", "failed"] + (["--registry", args.registry] if args.registry else [])
        print("retry the failed ones: " + shlex.join(cmd))
    return 0


def _results(sweep, registry, args) -> int:
    from pathlib import Path

    from workbench.analysis.stats import format_ci, format_summary
    from workbench.sweeps.state import sweep_results

    summary, per_seed = sweep_results(sweep, registry, args.metrics)
    if summary.empty:
        print("no finished runs yet")
        return 0
    shown = summary.assign(value=[format_summary(s) for s in summary["values"]],
                           ci=[format_ci(s) for s in summary["values"]])
    cols = [c for c in ("method", "datasets", "shots", "settings", "metric", "n", "value", "ci") if c in shown]
    print(shown[cols].to_string(index=False))
    if args.export:
        out = Path(args.export)
        out.parent.mkdir(parents=True, exist_ok=True)
        (per_seed.to_parquet if out.suffix in (".parquet", ".pq") else per_seed.to_csv)(out, index=False)
        summary_path = out.with_name(out.stem + ".summary.csv")
        summary.assign(values=[", ".join(f"{v:g}" for v in s) for s in summary["values"]]).to_csv(summary_path,
                                                                                                     index=False)
        print(f"per-seed values: {out}; summary (mean, std, ci95, n, values): {summary_path}")
    return 0
