"""The GLAD table notebooks execute on the toy world (the briefly pretrained toy CLIP as a `local-dir:`
backbone, a registry in tmp_path) with the smallest parameters: no cell fails, the comparison holds the
registry's numbers, and Table 1's Gain row is GLAD − CLIP-LoRA of those numbers. Table 1 is the fast one."""
from __future__ import annotations


import pytest

pytest.importorskip("papermill")

from workbench.notebooks_cli import notebook_info
from notebook_helpers import SMALL, execute_notebook  # noqa: E402


def _run(name, tmp_path, backbone, **params):
    out, nb, results, runs = execute_notebook(name, tmp_path, backbone, **SMALL, **params)
    return results, runs


def _ours(results, method, metric, dataset="toy_objects"):
    (row,) = [r for r in results["comparison"] if r["method"].startswith(method) and r["metric"] == metric
              and r["dataset"] == dataset]
    return row["ours"]


def test_table1_gain_row_is_glad_minus_clip_lora_from_our_runs(tmp_path, backbone):
    results, runs = _run("glad_table1_base_to_novel", tmp_path, backbone, methods=["clip_lora", "glad"])
    assert notebook_info("glad_table1_base_to_novel")["tables"] == ["Table 1"]
    assert sorted(runs["method"]) == ["clip_lora", "glad"]
    for metric in ("base", "new", "hm"):
        by_method = {m: float(runs[runs["method"] == m][metric].iloc[0]) for m in ("clip_lora", "glad")}
        assert _ours(results, "glad", metric) == pytest.approx(by_method["glad"])
        (gain,) = [g for g in results["gain"] if g["dataset"] == "toy_objects" and g["metric"] == metric]
        assert gain["ours_gain"] == pytest.approx(by_method["glad"] - by_method["clip_lora"])
        assert gain["paper_gain"] is None or gain["paper_gain"] != gain["paper_gain"]  # toy: no paper value


@pytest.mark.slow
def test_table4_rows_run_each_switch(tmp_path, backbone):
    results, runs = _run("glad_table4_ablation", tmp_path, backbone)
    assert len(runs) == 5 and set(runs["method"]) == {"glad"}
    variants = {r["variant"] for r in results["comparison"]}
    assert variants == {"(a) LoRA (baseline)", "(b) LoRA+SAM", "(c) LoRA+GradReg", "(d) LoRA+AlignNet",
                        "(e) LoRA+GradReg+AlignNet (full GLAD)"}


@pytest.mark.slow
@pytest.mark.parametrize("name, datasets", [("glad_table2_cross_dataset", ["toy_objects", "toy_vocab"]),
                                            ("glad_table3_domain_generalization", ["toy_objects", "toy_objects_shifted"])])
def test_tables_2_and_3_run_glad_on_every_target(tmp_path, backbone, name, datasets):
    results, runs = _run(name, tmp_path, backbone, methods=["glad"])
    assert list(runs["method"]) == ["glad"]
    for target in datasets[1:]:
        assert _ours(results, "glad", "top1", target) == pytest.approx(float(runs[target].iloc[0]))
