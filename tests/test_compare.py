"""workbench.analysis.compare: aggregation over seeds, the join with the transcribed paper tables, figures."""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp

from workbench.analysis import compare
from workbench.data.paper_results import load_paper_results
from workbench.runs import Registry, RunSpec


MAIN = {"n_ctx": 4}  # the method config of the main runs; another config must never be averaged in


def _add_run(reg, method, protocol, dataset, shots, seed, metrics, status="done", config=None):
    spec = RunSpec(method=method, protocol=protocol, datasets=(dataset,), shots=shots, seed=seed,
                   method_config=MAIN if config is None else config)
    run = reg.create_or_get(spec)
    if status == "done":
        with run.running():
            run.write_metrics(metrics)
    else:
        run.set_status(status)
    return run


def _main(df):
    return df[df["method_config"] == json.dumps(MAIN, sort_keys=True)]


@pytest.fixture
def registry(tmp_path):
    reg = Registry(tmp_path / "runs")
    b2n = {  # coop on eurosat (real) and toy_objects, three seeds; zeroshot one seed
        ("coop", "eurosat", 1): (90.0, 60.0), ("coop", "eurosat", 2): (92.0, 50.0), ("coop", "eurosat", 3): (94.0, 55.0),
        ("coop", "toy_objects", 1): (80.0, 40.0), ("coop", "toy_objects", 2): (84.0, 44.0),
        ("zeroshot", "eurosat", 1): (56.0, 64.0),
    }
    for (method, dataset, seed), (base, new) in b2n.items():
        _add_run(reg, method, "base_to_novel", dataset, 16, seed,
                 {"base": base, "new": new, "hm": 2 * base * new / (base + new), "train_seconds": 1.0})
    # a failed run must not count, nor a differently configured run be averaged in
    _add_run(reg, "coop", "base_to_novel", "eurosat", 16, 4, {}, status="failed")
    _add_run(reg, "coop", "base_to_novel", "eurosat", 16, 1, {"base": 10.0, "new": 10.0, "hm": 10.0},
             config={"n_ctx": 16})
    for shots, values in ((1, (70.0, 72.0)), (4, (80.0, 84.0))):
        for seed, v in enumerate(values, start=1):
            _add_run(reg, "coop", "few_shot", "eurosat", shots, seed, {"top1": v})
    _add_run(reg, "zeroshot", "few_shot", "eurosat", None, 1, {"top1": 50.0})  # no shots: shot-independent
    return reg


def test_aggregate_mean_std_n_by_hand(registry):
    agg = compare.aggregate_runs(registry.list(protocol="base_to_novel"), ["base", "new", "hm"])
    main = _main(agg)
    row = main[(main["method"] == "coop") & (main["dataset"] == "eurosat") & (main["metric"] == "base")].iloc[0]
    assert row["mean"] == pytest.approx(92.0)
    assert row["std"] == pytest.approx(statistics.stdev([90.0, 92.0, 94.0]))  # sample std over seeds
    assert row["ci95"] == pytest.approx(sp.t.ppf(0.975, 2) * 2.0 / math.sqrt(3))  # Student t, 2 dof
    assert row["n"] == 3 and row["seeds"] == "1,2,3" and row["shots"] == 16
    assert row["values"] == (90.0, 92.0, 94.0)  # per seed, in seed order
    by_seed = dict(zip(row["seeds"].split(","), row["runs"].split(",")))
    runs = registry.list(protocol="base_to_novel")
    for seed, short in by_seed.items():  # runs listed in the same order as seeds
        assert _main(runs[runs["short_hash"] == short])["seed"].iloc[0] == int(seed)
    new = main[(main["method"] == "coop") & (main["dataset"] == "eurosat") & (main["metric"] == "new")].iloc[0]
    assert new["mean"] == pytest.approx(55.0) and new["std"] == pytest.approx(5.0)
    hm = main[(main["method"] == "coop") & (main["dataset"] == "eurosat") & (main["metric"] == "hm")].iloc[0]
    expected = np.mean([2 * b * n / (b + n) for b, n in ((90, 60), (92, 50), (94, 55))])
    assert hm["mean"] == pytest.approx(expected)  # mean of per-seed HMs
    toy = main[(main["method"] == "coop") & (main["dataset"] == "toy_objects") & (main["metric"] == "new")].iloc[0]
    assert toy["mean"] == pytest.approx(42.0) and toy["std"] == pytest.approx(math.sqrt(8.0)) and toy["n"] == 2
    zs = main[(main["method"] == "zeroshot") & (main["metric"] == "base")].iloc[0]
    assert zs["n"] == 1 and np.isnan(zs["std"]) and np.isnan(zs["ci95"])  # one seed: no spread
    # the differently configured run is its own group, the failed one is nowhere
    other = agg[~agg.index.isin(main.index) & (agg["metric"] == "base")]
    assert len(other) == 1 and other["mean"].iloc[0] == 10.0 and other["n"].iloc[0] == 1
    assert agg["n"].sum() == 3 * (3 + 2 + 1 + 1)


def test_aggregate_few_shot_by_shots_and_default_metrics(registry):
    agg = compare.aggregate_runs(registry.list(protocol="few_shot"))  # metrics from the protocol
    assert set(agg["metric"]) == {"top1"}
    zs = agg[agg["method"] == "zeroshot"]
    assert len(zs) == 1 and pd.isna(zs["shots"].iloc[0]) and zs["mean"].iloc[0] == 50.0
    by_shots = agg[agg["method"] == "coop"].set_index("shots")
    assert by_shots.loc[1, "mean"] == pytest.approx(71.0) and by_shots.loc[4, "mean"] == pytest.approx(82.0)
    assert by_shots.loc[4, "std"] == pytest.approx(statistics.stdev([80.0, 84.0]))


def test_aggregate_transfer_metrics_per_dataset(tmp_path):
    reg = Registry(tmp_path / "runs")
    for seed, (src, tgt) in enumerate(((70.0, 50.0), (72.0, 54.0)), start=1):
        spec = RunSpec(method="coop", protocol="cross_dataset", datasets=("imagenet", "eurosat"), shots=16, seed=seed)
        run = reg.create_or_get(spec)
        with run.running():
            run.write_metrics({"imagenet": src, "eurosat": tgt, "average": tgt})
    agg = compare.aggregate_runs(reg.list())
    assert set(zip(agg["dataset"], agg["metric"])) == {("imagenet", "top1"), ("eurosat", "top1"),
                                                       ("average", "top1")}
    assert agg.set_index("dataset").loc["eurosat", "mean"] == pytest.approx(52.0)
    table = compare.ours_vs_paper(agg, compare.paper_rows("mmrl", "Table 2", protocol="cross_dataset"))
    csv = load_paper_results("mmrl")
    cell = csv[(csv["table"] == "Table 2") & (csv["method"] == "CoOp") & (csv["dataset"] == "eurosat")]
    row = table.set_index("dataset").loc["eurosat"]
    assert row["paper"] == pytest.approx(float(cell["value"].iloc[0])) and row["diff"] == pytest.approx(52.0 - row["paper"])
    assert (table["dataset"] == "average").sum() == 1  # the run's own average over targets, not re-averaged
    assert np.isnan(table.set_index("dataset").loc["average", "paper"])  # the paper averages 10 targets


def test_empty_and_unfinished_frames_give_empty_tables(tmp_path):
    reg = Registry(tmp_path / "runs")
    assert compare.aggregate_runs(reg.list()).empty
    _add_run(reg, "coop", "few_shot", "eurosat", 1, 1, {}, status="failed")
    assert compare.aggregate_runs(reg.list(), ["top1"]).empty


# methods no transcribed table prints: their paper_names are the usual names in the literature
NOT_IN_THE_TABLES = {"ivlp": "IVLP", "tip_adapter": "Tip-Adapter-F"}


def test_method_names_come_from_the_method_classes():
    from workbench.methods import get_method_class, list_methods

    printed = set(load_paper_results()["method"])
    names = compare.paper_method_names()
    assert set(names) == set(list_methods())
    seen = {}
    for key in [m for m in list_methods() if not m.startswith("_")]:  # "_x": test doubles other tests register
        own = vars(get_method_class(key)).get("paper_names")
        assert own, f"{key} declares no paper_names of its own"  # a subclass must not inherit its parent's
        assert names[key] == tuple(own)
        if key in NOT_IN_THE_TABLES:
            assert own[0] == NOT_IN_THE_TABLES[key] and own[0] not in printed
        else:
            assert own[0] in printed, f"{key}: {own[0]!r} is not a method name in the transcribed papers"
        for name in own:
            assert seen.setdefault(name, key) == key, f"{name!r} is claimed by {seen[name]} and {key}"
            assert compare.method_key(name) == key
    assert compare.paper_method_name("linear_probe") == "Linear probe CLIP"
    assert compare.method_key("LP") == "linear_probe"  # RAda's tables
    assert compare.method_key("Zero Shot") == "zeroshot" and compare.method_key("MMA") is None
    assert compare.paper_method_name("no_such_method") == "no_such_method"


def test_importing_analysis_loads_neither_methods_nor_protocols():
    code = ("import sys, workbench.analysis.compare, workbench.analysis.figures, workbench.analysis.stats; "
            "print(sorted(m for m in ('torch', 'workbench.methods', 'workbench.protocols') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_default_metrics_are_the_protocols_declared_ones(tmp_path, monkeypatch):
    """A protocol's ProtocolInfo decides which metric columns are aggregated (no copy in compare)."""
    from workbench.protocols import PROTOCOLS

    assert compare.protocol_metric_columns("base_to_novel", ["eurosat"]) == list(PROTOCOLS["base_to_novel"].metrics)
    assert compare.protocol_metric_columns("cross_dataset", ["imagenet", "dtd"]) == ["imagenet", "dtd", "average"]
    info = dataclasses.replace(PROTOCOLS["few_shot"], name="probe_only", metrics=("top5",))
    monkeypatch.setitem(PROTOCOLS, "probe_only", info)
    compare._protocol.cache_clear()
    try:
        reg = Registry(tmp_path / "runs")
        for seed, (top1, top5) in enumerate(((60.0, 80.0), (64.0, 86.0)), start=1):
            _add_run(reg, "coop", "probe_only", "eurosat", 4, seed, {"top1": top1, "top5": top5})
        agg = compare.aggregate_runs(reg.list())
        assert list(agg["metric"]) == ["top5"] and agg["mean"].iloc[0] == pytest.approx(83.0)
        assert agg["std"].iloc[0] == pytest.approx(statistics.stdev([80.0, 86.0]))
    finally:
        compare._protocol.cache_clear()


def test_join_with_mmrl_table1(registry):
    paper = compare.paper_rows("mmrl", "Table 1", protocol="base_to_novel")
    csv = load_paper_results("mmrl")
    cell = csv[(csv["table"] == "Table 1") & (csv["method"] == "CoOp") & (csv["dataset"] == "eurosat")]
    printed = dict(zip(cell["metric"], cell["value"]))
    assert printed["base"] == pytest.approx(92.19)  # as printed in the paper

    runs = registry.list(protocol="base_to_novel")
    runs = _main(runs)
    table = compare.ours_vs_paper(compare.aggregate_runs(runs, ["base", "new", "hm"]), paper)
    assert list(table.columns) == compare.TABLE_COLUMNS
    coop = table[(table["method"] == "coop") & (table["dataset"] == "eurosat")].set_index("metric")
    for metric in ("base", "new", "hm"):
        assert coop.loc[metric, "paper"] == pytest.approx(printed[metric])
        assert coop.loc[metric, "paper_method"] == "CoOp" and coop.loc[metric, "paper_table"] == "Table 1"
        assert coop.loc[metric, "diff"] == pytest.approx(coop.loc[metric, "ours"] - printed[metric])
    # sign: ours 92.0 base < paper 92.19 -> negative; ours new 55.0 > paper 54.74 -> positive
    assert coop.loc["base", "diff"] < 0 and coop.loc["new", "diff"] > 0
    # zero-shot CLIP is printed with 0 shots and still matches our 16-shot-split zero-shot run
    zs = table[(table["method"] == "zeroshot") & (table["dataset"] == "eurosat")].set_index("metric")
    clip = csv[(csv["table"] == "Table 1") & (csv["method"] == "CLIP") & (csv["dataset"] == "eurosat")]
    assert zs.loc["hm", "paper"] == pytest.approx(float(clip[clip["metric"] == "hm"]["value"].iloc[0]))
    assert zs.loc["hm", "paper_method"] == "CLIP"


def test_toy_datasets_have_nan_paper_values(registry):
    paper = compare.paper_rows("mmrl", "Table 1")
    runs = registry.list(protocol="base_to_novel")
    table = compare.ours_vs_paper(compare.aggregate_runs(_main(runs), ["base", "new", "hm"]),
                                  paper)
    toy = table[table["dataset"] == "toy_objects"]
    assert len(toy) == 3 and toy["paper"].isna().all() and toy["diff"].isna().all()
    assert toy["ours"].notna().all() and (toy["note"] == compare.NO_PAPER_TOY).all()
    # coop ran on two datasets: an average row, but no paper average (the paper's is over 11 datasets)
    avg = table[(table["method"] == "coop") & (table["dataset"] == "average")].set_index("metric")
    assert avg.loc["base", "ours"] == pytest.approx((92.0 + 82.0) / 2)
    assert avg.loc["hm", "ours"] == pytest.approx(2 * 87.0 * 48.5 / (87.0 + 48.5))  # HM of averages
    assert avg["paper"].isna().all() and avg["note"].str.contains("over 11 datasets").all()
    wide = compare.wide_table(table)
    toy_row = wide[(wide["method"] == "coop") & (wide["dataset"] == "toy_objects")].iloc[0]
    assert toy_row["hm paper"] == "—" and toy_row["hm Δ"] == "—" and toy_row["note"] == compare.NO_PAPER_TOY
    # new on toy_objects over seeds 1, 2: 40 and 44 -> mean ± sample std, 95% CI = t(1 dof)·std/√2
    half = sp.t.ppf(0.975, 1) * math.sqrt(8.0) / math.sqrt(2)
    assert toy_row["new ours"] == "42.00 ± 2.83" and toy_row["new 95% CI"] == f"[{42 - half:.2f}, {42 + half:.2f}]"
    zs_row = wide[(wide["method"] == "zeroshot") & (wide["dataset"] == "eurosat")].iloc[0]
    assert zs_row["base ours"] == "56.00 (n=1)" and zs_row["base 95% CI"] == "—"
    avg_row = wide[(wide["method"] == "coop") & (wide["dataset"] == "average")].iloc[0]
    assert avg_row["base ours"] == "87.00"  # a mean over datasets: no seed spread of its own
    coop = table[(table["method"] == "coop") & (table["dataset"] == "eurosat") & (table["metric"] == "new")].iloc[0]
    assert coop["ours_values"] == (60.0, 50.0, 55.0) and coop["seeds"] == "1,2,3"
    assert coop["ours_ci95"] == pytest.approx(sp.t.ppf(0.975, 2) * 5.0 / math.sqrt(3))


def test_few_shot_join_matches_shots(registry):
    paper = compare.paper_rows("mmrl", ["Table 10", "Table 11"])
    table = compare.ours_vs_paper(compare.aggregate_runs(registry.list(protocol="few_shot"), ["top1"]), paper)
    csv = load_paper_results("mmrl")
    for shots in (1, 4):
        want = csv[(csv["table"] == "Table 11") & (csv["method"] == "CoOp") & (csv["dataset"] == "eurosat")
                   & (csv["shots"] == shots)]["value"].iloc[0]
        row = table[(table["shots"] == shots).fillna(False) & (table["dataset"] == "eurosat")].iloc[0]
        assert row["paper"] == pytest.approx(want) and row["paper_table"] == "Table 11"
        assert row["diff"] == pytest.approx(row["ours"] - want)


def test_paper_only_lists_methods_not_run(registry):
    paper = compare.paper_rows("mmrl", "Table 1")
    runs = registry.list(protocol="base_to_novel")
    table = compare.ours_vs_paper(compare.aggregate_runs(_main(runs)), paper, paper_only=True)
    mmrl = table[(table["method"] == "mmrl") & (table["dataset"] == "eurosat")]
    assert len(mmrl) == 3 and mmrl["ours"].isna().all() and (mmrl["note"] == "not run").all()
    assert "MMA" not in set(table["paper_method"])  # no workbench counterpart


def test_figures_and_summary(registry):
    paper = compare.paper_rows("mmrl", "Table 1")
    runs = registry.list(protocol="base_to_novel")
    table = compare.ours_vs_paper(compare.aggregate_runs(_main(runs)), paper)
    fig = compare.comparison_figure(table, "hm")
    ours_traces = [t for t in fig.data if t.name == "ours"]
    assert ours_traces and any("no paper value" in a.text for a in fig.layout.annotations)
    y = [v for t in ours_traces for v in t.y]
    assert set(np.round(y, 6)) == set(np.round(table[table["metric"] == "hm"]["ours"], 6))
    # error bars are the 95% CI over seeds; none for a single seed
    bars = compare.comparison_figure(table, "new")
    eurosat = [t for t in bars.data if t.name == "ours" and "coop" in list(t.x) and "zeroshot" in list(t.x)][0]
    err = dict(zip(eurosat.x, eurosat.error_y.array))
    assert err["coop"] == pytest.approx(sp.t.ppf(0.975, 2) * 5.0 / math.sqrt(3)) and err["zeroshot"] is None
    assert "95% CI" in bars.layout.legend.title.text
    few = compare.ours_vs_paper(compare.aggregate_runs(registry.list(protocol="few_shot")),
                                compare.paper_rows("mmrl", ["Table 10", "Table 11"]))
    fig2 = compare.shots_figure(few)
    assert {t.name for t in fig2.data} == {"coop (ours)", "coop (paper)", "zeroshot (ours, no shots)"}
    flat = [t for t in fig2.data if t.name == "zeroshot (ours, no shots)"][0]
    assert list(flat.y) == [50.0, 50.0] and list(flat.x) == [1, 4]
    fig3 = compare.comparison_figure(few)  # zero-shot shown in both shot-count panels
    assert sum(50.0 in list(t.y) for t in fig3.data if t.name == "ours") == 2
    few_lines = compare.summary_lines(few, "top1")
    assert any("1 shot, our best top1 is **coop** with 71.00" in line for line in few_lines)
    lines = compare.summary_lines(table, "hm")
    best = table[(table["metric"] == "hm") & (table["dataset"] == "eurosat")]["ours"].max()
    assert any(f"{best:.2f}" in line for line in lines)
    assert any("largest hm gap" in line for line in lines)
    records = compare.to_records(table)
    assert records[0].keys() == set(compare.TABLE_COLUMNS) and any(r["paper"] is None for r in records)
