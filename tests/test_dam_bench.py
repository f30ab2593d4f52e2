"""`workbench bench dam` on a tiny size: the result's structure and the closed form's agreement (no timing asserts)."""
from __future__ import annotations

import argparse

from workbench.benchmarks import list_benchmarks


def test_dam_benchmark_reports_both_solvers_and_agrees_numerically():
    bench = list_benchmarks()["dam"]
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--batch", "3", "--dim", "16", "--classes", "4", "10", "--max-pairs", "8", "--chunk", "4"])
    result = bench.run(args)
    assert result["max_abs_difference"] < 1e-5
    assert [row["classes"] for row in result["rows"]] == [4, 10]
    small, large = result["rows"]
    assert small["explicit"]["pairs_measured"] == 8 and small["explicit"]["pairs_total"] == 12
    assert large["explicit"]["extrapolated"] and large["explicit"]["pairs_total"] == 30
    e = large["explicit"]
    assert e["seconds"] == e["seconds_measured"] * 30 / 8
    assert large["speedup"] == e["seconds"] / large["closed"]["seconds"]
    assert large["matrix_bytes_all_pairs"] == 2 * 3 * 10 * 16 * 16 * 4
    text = bench.format(result)
    assert "extrapolated" in text and "speed-up" in text


def test_dam_benchmark_leaves_autograd_enabled():
    bench = list_benchmarks()["dam"]
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    bench.run(parser.parse_args(["--batch", "2", "--dim", "4", "--classes", "3", "--max-pairs", "2"]))
    import torch

    assert torch.is_grad_enabled()
