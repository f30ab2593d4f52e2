"""`workbench` command line. Each area adds its own sub-commands via `add_commands(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# modules that contribute sub-commands; each defines add_commands(subparsers)
COMMAND_MODULES = [
    "workbench.data.toy.cli",  # workbench toy ...
    "workbench.data.cli",  # workbench data ...
    "workbench.runs.cli",  # workbench runs ...
    "workbench.engine.cli",  # workbench zeroshot
    "workbench.run_cli",  # workbench run, workbench methods
    "workbench.notebooks_cli",
    "workbench.demo",  # workbench demo
    "workbench.bench_cli",  # workbench bench
    "workbench.sweeps.cli",  # workbench sweep FILE | sweep status FILE | sweep results FILE
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from workbench.fileio import DiskFullError
    from workbench.runs import RegistryError, Terminated

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except Terminated:
        print("terminated (SIGTERM); the same command resumes from the last checkpoint", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted; the same command resumes from the last checkpoint", file=sys.stderr)
        return 130
    except (RegistryError, DiskFullError) as exc:  # their messages say what to do
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 141
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
