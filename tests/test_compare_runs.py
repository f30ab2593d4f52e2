"""workbench.analysis.compare_runs (paired test, metric differences, settings diff, seed groups) and
workbench.analysis.inspect (constant series, declared inspector plots), against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workbench.analysis import compare_runs as cr
from workbench.analysis import inspect
from workbench.runs import RunSpec


def group(method: str, values: dict[int, float], metric: str = "hm") -> pd.DataFrame:
    return pd.DataFrame({"short_hash": [f"{method}{s}" for s in values], "method": method, "seed": list(values),
                         "status": "done", "name": "", metric: list(values.values())})


def test_paired_t_statistic_by_hand():
    a = group("coop", {1: 80.0, 2: 81.0, 3: 79.0, 4: 90.0})  # seed 4 only in A: not paired
    b = group("mmrl", {1: 82.0, 2: 84.0, 3: 80.5, 5: 10.0})
    test = cr.paired_test(a, b, "hm")
    d = np.array([2.0, 3.0, 1.5])  # b - a on seeds 1, 2, 3
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))  # = 2.1667 / 0.7638 * 1.7321
    assert test.seeds == (1, 2, 3) and test.n == 3
    assert test.mean_diff == pytest.approx(d.mean()) and test.std_diff == pytest.approx(d.std(ddof=1))
    assert test.t == pytest.approx(t) and test.t == pytest.approx(4.9135, abs=1e-3)
    from scipy.stats import t as student

    assert test.p == pytest.approx(2 * student.sf(t, 2))
    assert test.mean_a == pytest.approx(np.mean([80, 81, 79, 90]))  # group means use every seed
    assert test.note == ""


@pytest.mark.parametrize("a, b, why", [
    ({1: 80.0, 2: 81.0}, {3: 82.0, 4: 83.0}, "no seed"),
    ({1: 80.0, 2: 81.0}, {1: 82.0}, "one shared seed"),
    ({1: 80.0, 2: 81.0}, {1: 82.0, 2: 83.0}, "same amount"),
])
def test_paired_test_says_when_it_is_undefined(a, b, why):
    test = cr.paired_test(group("a", a), group("b", b), "hm")
    assert math.isnan(test.t) and math.isnan(test.p) and why in test.note


def test_paired_test_refuses_a_seed_twice_in_one_group():
    a = pd.concat([group("a", {1: 80.0}), group("a", {1: 81.0})])
    with pytest.raises(ValueError, match="seed 1 appears twice"):
        cr.paired_test(a, group("b", {1: 1.0}), "hm")


def test_group_tests_and_metrics_table():
    a = group("a", {1: 80.0, 2: 81.0, 3: 83.0})
    b = group("b", {1: 82.0, 2: 82.0, 3: 86.0})
    tests = cr.group_tests(a, b, ["hm"])
    assert tests.loc[0, "n"] == 3 and tests.loc[0, "mean B − A"] == pytest.approx(2.0)
    table = cr.metrics_table(pd.concat([a, b], ignore_index=True), ["hm"])
    assert list(table["Δ hm"]) == pytest.approx([0.0, 1.0, 3.0, 2.0, 2.0, 6.0])  # vs the first run (80)


def test_settings_diff_lists_only_what_differs():
    s1 = RunSpec(method="coop", protocol="base_to_novel", datasets=("eurosat",), shots=16, seed=1, backbone="toy",
                 method_config={"n_ctx": 4}, train_config={"lr": 0.002, "epochs": 5})
    s2 = RunSpec(method="coop", protocol="base_to_novel", datasets=("eurosat",), shots=16, seed=2, backbone="toy",
                 method_config={"n_ctx": 16}, train_config={"lr": 0.002})
    diff = cr.settings_diff({"one": s1, "two": s2}).set_index("setting")
    assert list(diff.index) == ["method.n_ctx", "train.epochs"]
    assert diff.loc["method.n_ctx"].tolist() == ["4", "16"] and diff.loc["train.epochs", "two"] == cr.MISSING
    everything = cr.settings_diff({"one": s1, "two": s2}, all_settings=True)
    assert "train.lr" in set(everything["setting"])


def test_seed_groups_split_configurations():
    runs = pd.DataFrame({"short_hash": ["a1", "a2", "b1", "c1"], "method": ["coop", "coop", "coop", "mmrl"],
                         "protocol": "base_to_novel", "datasets": "eurosat", "shots": 16, "backbone": "toy",
                         "pretrained": None, "preset": "toy", "seed": [2, 1, 1, 1],
                         "method_config": ['{"n_ctx": 4}', '{"n_ctx": 4}', '{"n_ctx": 16}', "{}"],
                         "train_config": "{}", "protocol_settings": "{}"})
    groups = cr.seed_groups(runs)
    assert list(groups.values()) == [["a2", "a1"], ["b1"], ["c1"]]  # seed order; n_ctx splits coop in two
    assert list(groups)[1].endswith("#2") and list(groups)[2].startswith("mmrl")


def test_constant_series_are_settings_not_trajectories():
    history = pd.DataFrame({"epoch": [1, 2, 3], "loss": [2.0, 1.5, 1.2], "lr": [0.1, 0.1, 0.1],
                            "alpha": [0.7, 0.7, 0.7], "gate": [0.1, 0.3, 0.2]})
    series, constants = inspect.split_history(history)
    assert series == ["loss", "lr", "gate"] and constants == {"alpha": 0.7}  # engine columns always plotted
    one_epoch = history.iloc[:1]
    assert inspect.split_history(one_epoch)[1] == {}  # a single epoch says nothing about constancy


def test_declared_plots_render_what_they_match():
    class Declares:
        plots = ({"kind": "scalars", "columns": ["gate*"]},
                 {"kind": "heatmap", "columns": ["norm.*"], "title": "norms"},
                 {"kind": "distribution", "columns": ["norm.*"]},
                 {"kind": "scalars", "columns": ["nothing*"]})

    history = pd.DataFrame({"epoch": [1, 2], "gate_a": [0.1, 0.2], "norm.1": [1.0, 2.0], "norm.2": [3.0, 5.0]})
    plots = inspect.declared_plots(Declares)
    figs = [inspect.inspector_figure(history, p) for p in plots]
    assert [t.name for t in figs[0].data] == ["gate_a"]
    np.testing.assert_array_equal(np.asarray(figs[1].data[0].z), [[1.0, 2.0], [3.0, 5.0]])
    assert figs[1].layout.title.text == "norms"
    np.testing.assert_array_equal(np.sort(np.asarray(figs[2].data[0].x)), [2.0, 5.0])  # the last epoch
    assert figs[3] is None
    with pytest.raises(ValueError, match="kind"):
        inspect.validate_plots([{"kind": "pie", "columns": ["x"]}])
    from workbench.methods import get_method_class, list_methods

    for key in list_methods():  # every registered method's declarations are valid
        inspect.declared_plots(get_method_class(key))
