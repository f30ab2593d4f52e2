"""`workbench bench dsra` on the random-init tiny model, one tiny batch: its structure, and parameter counts
that agree with each variant's design (no timing asserts)."""
from __future__ import annotations

import argparse
import json

import pytest

from workbench import bench_cli


def test_dsra_bench_reports_every_variant_with_design_counts_and_ratios(capsys):
    parser = argparse.ArgumentParser()
    bench_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "dsra", "--backbone", "wb-tiny-vit", "--device", "cpu", "--batch-size", "2",
                              "--batches", "1", "--warmup", "0", "--classes", "3", "--json"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["variants"]
    assert list(rows) == ["coop", "coop_vpt", "maple", "maple_shared", "dsra"] and result["reference"] == "coop"
    text, vision, layers, depth = 64, 96, 4, 4  # wb-tiny-vit; prompt depth 9 capped at the towers' 4 blocks
    assert rows["coop"]["params"] == 16 * text
    assert rows["coop_vpt"]["params"] == 4 * text + 4 * vision * depth
    coupling = text * vision + vision  # one Linear(text -> vision)
    assert rows["maple"]["params"] - rows["maple_shared"]["params"] == (depth - 2) * coupling  # layers 1..J-1 tied
    prompts = 4 * text * depth + 4 * vision * depth
    assert rows["dsra"]["params"] == prompts + 2 * (text + vision) * 50 + 2 * layers * 50
    for row in rows.values():
        assert row["images_per_s"] > 0
        assert row["params_ratio"] == pytest.approx(row["params"] / rows["coop"]["params"])
        assert row["speed_ratio"] == pytest.approx(row["images_per_s"] / rows["coop"]["images_per_s"])
