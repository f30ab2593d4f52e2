"""`workbench bench` runs end to end on the random-init tiny backbone with a tiny budget (no timing asserts)."""
from __future__ import annotations

import argparse
import json
import math

from workbench import bench_cli
from workbench.bench import format_bench


def test_bench_runs_and_reports_every_ratio(toy_data_root, capsys):
    parser = argparse.ArgumentParser()
    bench_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "--backbone", "wb-tiny-vit", "--root", str(toy_data_root), "--shots", "1",
                              "--epochs", "2", "--views", "1", "--split", "val", "--device", "cpu", "--json"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)

    classes = 48  # toy_objects
    assert result["dataset"] == "toy_objects" and result["method"] == "clip_adapter"
    assert result["train_images"] == classes and result["split_images"] == classes  # 1 shot; val min(1, 4)
    assert result["steps"] == 2 * math.ceil(classes / 32)  # same steps in every variant (checked inside)
    for key in ("reencode_s", "features_cold_s", "features_warm_s", "cache_miss_s", "cache_hit_s"):
        assert result[key] > 0
    assert result["speedup_cold"] == result["reencode_s"] / result["features_cold_s"]
    assert result["speedup_warm"] == result["reencode_s"] / result["features_warm_s"]
    assert result["cache_speedup"] == result["cache_miss_s"] / result["cache_hit_s"]
    table = format_bench(result)
    assert "re-encode images every epoch" in table and "cache hit" in table


def test_named_benchmarks_are_listed_without_importing_them_and_unknown_names_are_refused(capsys):
    import subprocess
    import sys

    import pytest

    from workbench.benchmarks import benchmark_modules

    code = ("import sys, argparse\nfrom workbench import bench_cli\np = argparse.ArgumentParser()\n"
            "bench_cli.add_commands(p.add_subparsers(dest='c'))\n"
            "print(sorted(m for m in sys.modules if m.startswith('workbench.benchmarks.')), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "False"]  # building the CLI imports no benchmark module (nor torch)
    parser = argparse.ArgumentParser()
    bench_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    assert "dam" in benchmark_modules()
    args = parser.parse_args(["bench", "no_such_bench", "--x", "1"])
    with pytest.raises(SystemExit, match="unknown benchmark 'no_such_bench'; available: .*dam"):
        args.func(args)


def test_rada_benchmark_runs_at_a_tiny_size_and_its_chunked_logits_agree(capsys):
    parser = argparse.ArgumentParser()
    bench_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "rada", "--classes", "10", "--batch", "2", "--dim", "32", "--chunk", "4",
                              "--repeats", "1", "--backbone", "wb-tiny-vit", "--ttt-classes", "5", "--views", "8",
                              "--steps", "1", "--device", "cpu", "--json"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    [row] = result["eft"]
    assert row["classes"] == 10 and row["max_logit_difference"] < 1e-4  # class chunks are exact
    assert row["time_ratio"] == row["chunked"]["seconds"] / row["unchunked"]["seconds"]
    assert set(result["ttt"]) == {"tpt", "rada"} and result["ttt"]["rada"]["ratio"] == (
        result["ttt"]["rada"]["seconds"] / result["ttt"]["tpt"]["seconds"])
