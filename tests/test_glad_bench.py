"""`workbench bench glad` on a tiny size: every measurement is there, ratios are the quotients of the
times they name, and AlignNet's class blocks agree with one block (no timing asserts)."""
from __future__ import annotations

import argparse

from workbench.benchmarks import list_benchmarks


def test_glad_benchmark_reports_transform_ratios_and_blocked_agreement():
    bench = list_benchmarks()["glad"]
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--batch", "2", "--step-classes", "3", "--classes", "7", "--repeats", "1"])
    result = bench.run(args)
    plain = result["plain"]
    assert plain["gradient_copy_bytes"] > 0
    for kind in ("sam", "gradreg"):
        t = result["transforms"][kind]
        assert t["ratio"] == t["seconds"] / plain["seconds"]
        assert t["extra_bytes"] == t["peak_bytes"] - plain["peak_bytes"]
    (row,) = result["rows"]
    assert row["classes"] == 7 and row["ratio"] == row["glad"]["seconds"] / row["lora"]["seconds"]
    assert row["max_abs_difference"] < 1e-5
    text = bench.format(result)
    assert "gradreg" in text and "sam" in text and "plain LoRA" in text
