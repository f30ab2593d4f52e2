"""Named benchmarks for `workbench bench NAME` (ratios against a named reference, never unit tests).

Each module in this package registers one or more benchmarks with `register_benchmark`; the CLI adds a
sub-command per benchmark. A benchmark is four things: a one-line help, a function adding its options to
an argparse parser, a function `run(args) -> dict` and a function `format(result) -> str`. A module is
named after the benchmark it registers and is imported only when that benchmark runs.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

BENCHMARKS: dict[str, "Benchmark"] = {}
_loaded = False


@dataclass(frozen=True)
class Benchmark:
    name: str
    help: str
    add_arguments: Callable  # (argparse.ArgumentParser) -> None
    run: Callable  # (argparse.Namespace) -> dict
    format: Callable  # (dict) -> str


def register_benchmark(name: str, *, help: str, add_arguments: Callable, run: Callable, format: Callable) -> Benchmark:
    if name in BENCHMARKS:
        raise ValueError(f"benchmark {name!r} is registered twice")
    BENCHMARKS[name] = Benchmark(name, help, add_arguments, run, format)
    return BENCHMARKS[name]


def benchmark_modules() -> list[str]:
    """The names of this package's benchmark modules, without importing them (each names its benchmark)."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


def list_benchmarks() -> dict[str, Benchmark]:
    """Every benchmark, importing each module of this package (each registers its own)."""
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True
    return dict(sorted(BENCHMARKS.items()))
