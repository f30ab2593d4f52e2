"""`workbench runs list | show | export`: look at the run registry from the shell."""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys

BASE_LIST_COLUMNS = ["short_hash", "name", "method", "protocol", "datasets", "shots", "seed", "backbone",
                     "status", "progress", "epochs", "updated_at"]


def _registry(args):
    """The registry of --registry/--root; read commands never create one."""
    from workbench.runs.index import Registry

    reg = Registry(args.root, create=False)
    if reg.rebuilt is not None:
        print(f"the run index at {reg.db_path} was empty or missing: rebuilt it from {reg.rebuilt} run folder(s)",
              file=sys.stderr)
    if reg.read_only:
        print(f"the run registry at {reg.root} is read-only: writing is disabled", file=sys.stderr)
    return reg


def _guarded(func):
    """A command that reports registry problems in one line (exit 1) and stops quietly when its
    reader goes away (`runs show ... | head`: exit 141, like a process killed by SIGPIPE)."""

    @functools.wraps(func)
    def run(args) -> int:
        from workbench.fileio import DiskFullError
        from workbench.runs.files import RegistryError

        try:
            code = func(args)
            sys.stdout.flush()  # inside the try: a closed pipe fails here, not at exit
            return code
        except BrokenPipeError:
            with contextlib.suppress(OSError):  # keep the interpreter's final flush from failing again
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return 141
        except (RegistryError, DiskFullError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _fmt_table(df) -> str:
    import pandas as pd

    df = df.copy()
    for col in df.columns:
        if pd.api.types.is_datetime64_any_dtype(df[col]):
            df[col] = df[col].dt.tz_convert(None).dt.strftime("%Y-%m-%d %H:%M")
        elif pd.api.types.is_float_dtype(df[col]):
            df[col] = df[col].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    df = df.astype(object).where(df.notna(), "")
    with pd.option_context("display.max_columns", None, "display.width", 250, "display.max_colwidth", 40):
        return df.to_string(index=False)


def cmd_list(args) -> int:
    from workbench.runs.registry import RUN_COLUMNS

    filters = {k: getattr(args, k) for k in ("method", "status", "protocol", "backbone", "source")
               if getattr(args, k) is not None}
    if args.shots is not None:
        filters["shots"] = args.shots
    reg = _registry(args)
    for short in reg.mark_orphans_interrupted():
        print(f"run {short}: its process is gone; marked interrupted (re-run the same command to resume)")
    df = reg.list(**filters)
    if df.empty:
        print("no runs")
        return 0
    metric_cols = [c for c in df.columns if c not in RUN_COLUMNS]
    if not args.all_metrics:
        metric_cols = metric_cols[: args.max_metrics]
    df["progress"] = df["progress"].map(lambda p: f"{100 * p:.0f}%")
    stale = df["stale"].astype(bool)
    df["status"] = df["status"].where(~stale, df["status"] + " (stale)")
    print(_fmt_table(df[BASE_LIST_COLUMNS + metric_cols]))
    print(f"\n{len(df)} run(s) in {reg.root}")
    if stale.any():
        print(f"{int(stale.sum())} stale run(s): made by an older version (settings format or behaviour); they are "
              "kept for reading but never reused: the same command runs them again (`runs show HASH` says why)")
    return 0


def cmd_show(args) -> int:
    reg = _registry(args)
    try:
        run = reg.get(args.hash)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 1
    info = run.info()
    print(f"run {run.hash}\n  dir: {run.dir}")
    print(f"  name: {info['name'] or run.spec.display_name}")
    print(f"  status: {info['status']}  progress: {100 * info['progress']:.0f}%  {info['message']}".rstrip())
    if info.get("error"):
        print(f"  error: {info['error']}")
    spec = run.spec
    from workbench.protocols.builder import stale_reason

    reason = stale_reason(spec)
    if reason:
        print(f"  stale: {reason} (kept for reading; never reused)")
    print(f"spec: {spec.method} / {spec.protocol} / {', '.join(spec.datasets)}  shots {spec.shots}  seed {spec.seed}  "
          f"backbone {spec.backbone}{' (' + spec.pretrained + ')' if spec.pretrained else ''}  preset {spec.preset}")
    if spec.versions:
        print("  versions: " + ", ".join(f"{k} {v}" for k, v in sorted(spec.versions.items())))
    if spec.settings:
        print("  set explicitly: " + ", ".join(f"{k}={v!r}" for k, v in sorted(spec.settings.items())))
    print("resolved settings:" if not spec.is_legacy else "settings recorded (legacy spec: preset name + overrides):")
    settings = spec.resolved_settings() if not spec.is_legacy else spec.legacy
    for key, value in sorted(settings.items()):
        print(f"  {key} = {json.dumps(value, sort_keys=True, default=str)}")
    print("metrics:")
    print("  " + (json.dumps(info["metrics"], indent=2, sort_keys=True).replace("\n", "\n  ")
                  if info["metrics"] else "(none)"))
    hist = run.history()
    print(f"history ({len(hist)} epochs, last {min(args.tail, len(hist))}):")
    print(_fmt_table(hist.tail(args.tail)) if len(hist) else "  (none)")
    ckpt = run.latest_checkpoint()
    print(f"latest checkpoint: {f'epoch {ckpt[0]} ({ckpt[1]})' if ckpt else '(none)'}")
    return 0


def cmd_export(args) -> int:
    try:
        path = _registry(args).export(args.path, fmt=args.format)
    except ValueError as exc:  # unknown suffix / format
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def cmd_reindex(args) -> int:
    from workbench.runs.index import Registry

    reg, count, moved = Registry.reindex(args.root)
    if moved is not None:
        print(f"the damaged index was moved aside to {moved}")
    print(f"indexed {count} runs from {reg.root}")
    return 0


def _registry_option(parser, default) -> None:
    parser.add_argument("--registry", "--root", dest="root", default=default, metavar="DIR",
                        help="registry folder (default: $WORKBENCH_RUNS or <cache>/runs); --root is the same")


def add_commands(subparsers) -> None:
    runs = subparsers.add_parser("runs", help="list, inspect and export runs in the run registry")
    _registry_option(runs, None)
    sub = runs.add_subparsers(dest="runs_command", required=True)

    p = sub.add_parser("list", help="table of runs")
    p.add_argument("--method")
    p.add_argument("--status", choices=["pending", "running", "done", "failed", "interrupted"])
    p.add_argument("--protocol")
    p.add_argument("--backbone")
    p.add_argument("--source", help="source dataset")
    p.add_argument("--shots", type=int)
    p.add_argument("--max-metrics", type=int, default=6, help="metric columns shown (default 6)")
    p.add_argument("--all-metrics", action="store_true", help="show every metric column")
    _registry_option(p, argparse.SUPPRESS)
    p.set_defaults(func=_guarded(cmd_list))

    p = sub.add_parser("show", help="spec, status, metrics and last history rows of one run")
    p.add_argument("hash", help="full hash or unique prefix")
    p.add_argument("--tail", type=int, default=10, help="history rows shown (default 10)")
    _registry_option(p, argparse.SUPPRESS)
    p.set_defaults(func=_guarded(cmd_show))

    p = sub.add_parser("reindex", help="rebuild the SQLite index from the run folders (after losing or damaging it)")
    _registry_option(p, argparse.SUPPRESS)
    p.set_defaults(func=_guarded(cmd_reindex))

    p = sub.add_parser("export", help="write the run table to CSV or parquet")
    p.add_argument("path")
    p.add_argument("--format", choices=["csv", "parquet"], default=None, help="default: from the suffix, else csv")
    _registry_option(p, argparse.SUPPRESS)
    p.set_defaults(func=_guarded(cmd_export))


def main(argv: list[str] | None = None) -> int:  # `python -m workbench.runs.cli ...`
    parser = argparse.ArgumentParser(prog="workbench")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
