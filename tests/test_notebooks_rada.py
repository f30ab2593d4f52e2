"""RAda's notebooks (Tables 2, 3, 4, 7, 10): shipped clean with papermill-readable parameters and their
tables in the metadata; executed on the toy world with the smallest parameters (slow set), the comparison holding the
registry's numbers."""
from __future__ import annotations

import json

import nbformat
import pytest

pytest.importorskip("papermill")

from workbench.notebooks_cli import find_notebook, notebook_parameters, run_notebook
from workbench.runs import Registry
from notebook_helpers import SMALL, execute_notebook, cell_errors  # noqa: E402

NOTEBOOKS = {"rada_table2_base_to_novel": ["Table 2"], "rada_table3_ttt": ["Table 3"],
             "rada_table4_ablations": ["Table 4"], "rada_table7_loss_form": ["Table 7"],
             "rada_table10_layers": ["Table 10"]}


def _run(name, tmp_path, backbone, **params):
    out, nb, results, runs = execute_notebook(name, tmp_path, backbone, **params)
    return results, runs


def test_rada_notebooks_ship_clean_with_their_tables_and_readable_parameters():
    for name, tables in NOTEBOOKS.items():
        nb = nbformat.read(find_notebook(name), as_version=4)
        assert nb.metadata["workbench"] == {"paper": "rada", "tables": tables, "figures": []}, name
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), name
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1
        params = notebook_parameters(name)
        assert {"backbone", "pretrained", "data_root", "datasets", "seeds", "registry", "results_path"} <= set(params)
        assert len(params) == len(tagged[0].source.strip().splitlines()), name


@pytest.mark.slow  # ~50 s on a busy 2-CPU box (kernel start + 2 toy runs)
def test_layers_notebook_runs_each_layer_count(backbone, tmp_path):
    results, runs = _run("rada_table10_layers", tmp_path, backbone, datasets=["toy_vocab"], layer_counts=[1, 2],
                         **SMALL)
    assert not results["failed"] and len(runs) == 2 and (runs["status"] == "done").all()
    layers = sorted(json.loads(c)["layers"] if isinstance(c, str) else c["layers"] for c in runs["method_config"])
    assert layers == [1, 2]
    hm = {r["variant"]: r["ours"] for r in results["comparison"] if r["metric"] == "hm"}
    assert set(hm) == {"1 attention layer(s)", "2 attention layer(s)"}
    for label, value in hm.items():
        n = int(label[0])
        row = runs[[(json.loads(c) if isinstance(c, str) else c)["layers"] == n for c in runs["method_config"]]]
        assert value == pytest.approx(float(row["hm"].iloc[0]))


@pytest.mark.slow
def test_ttt_notebook_scores_zero_shot_tpt_and_rada(backbone, tmp_path):
    results, runs = _run("rada_table3_ttt", tmp_path, backbone, methods=["zeroshot", "rada"], pretrained_methods=[],
                         limit=6, seeds=[1])
    assert not results["failed"] and set(runs["method"]) == {"zeroshot", "rada"}
    assert all(runs["seconds_per_sample"].notna())


@pytest.mark.slow
def test_base_to_novel_notebook_with_a_composition(backbone, tmp_path):
    results, runs = _run("rada_table2_base_to_novel", tmp_path, backbone, datasets=["toy_vocab"],
                         methods=["zeroshot", "rada"], compositions=["clip_adapter"], **SMALL)
    assert not results["failed"] and len(runs) == 3


@pytest.mark.slow
@pytest.mark.parametrize("name,params", [("rada_table4_ablations", {"rows": ["no_reg", "full"]}),
                                         ("rada_table7_loss_form", {"forms": ["linf", "l2"]})])
def test_ablation_notebooks_run(backbone, tmp_path, name, params):
    results, runs = _run(name, tmp_path, backbone, datasets=["toy_vocab"], **params, **SMALL)
    assert not results["failed"] and len(runs) == 2


def test_efficiency_notebook_ships_clean_with_its_table():
    nb = nbformat.read(find_notebook("rada_table5_efficiency"), as_version=4)
    assert nb.metadata["workbench"] == {"paper": "rada", "tables": ["Table 5"], "figures": []}
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    params = notebook_parameters("rada_table5_efficiency")
    assert {"backbone", "methods", "classes", "views", "steps", "device", "results_path"} <= set(params)


@pytest.mark.slow
def test_efficiency_notebook_measures_both_methods_in_both_settings(tmp_path):
    out = run_notebook("rada_table5_efficiency", {"classes": 5, "batch": 2, "views": 4, "steps": 1, "repeats": 1},
                       output_dir=tmp_path / "out")
    nb = nbformat.read(out, as_version=4)
    assert not cell_errors(nb), cell_errors(nb)
    results = json.loads((tmp_path / "out" / "rada_table5_efficiency.results.json").read_text())
    measured = {(r["method"], r["setting"]) for r in results["measured"]}
    assert measured == {("maple", "EFT"), ("maple", "TTT"), ("rada", "EFT"), ("rada", "TTT")}
    assert all(r["gflops"] > 0 and r["gmacs"] == pytest.approx(r["gflops"] / 2) for r in results["measured"])
    assert {r["paper"] for r in results["comparison"] if r["method"] == "RAda" and r["setting"] == "EFT"
            and r["metric"] == "gflops"} == {17.67}


def test_backbone_and_vlm_notebooks_ship_clean_with_their_tables():
    for name, table in (("rada_table8_backbones", "Table 8"), ("rada_table9_vlms", "Table 9")):
        nb = nbformat.read(find_notebook(name), as_version=4)
        assert nb.metadata["workbench"] == {"paper": "rada", "tables": [table], "figures": []}
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
        tagged = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert len(notebook_parameters(name)) == len(tagged.source.strip().splitlines())


@pytest.mark.slow
def test_backbones_notebook_runs_each_model(backbone, tmp_path):
    out = run_notebook("rada_table8_backbones", {"models": [["toy", backbone, None]], "registry": str(tmp_path / "runs"),
                                                 "datasets": ["toy_vocab"], "methods": ["zeroshot", "rada"], **SMALL},
                       output_dir=tmp_path / "out")
    nb = nbformat.read(out, as_version=4)
    assert not cell_errors(nb), cell_errors(nb)
    results = json.loads((tmp_path / "out" / "rada_table8_backbones.results.json").read_text())
    runs = Registry(tmp_path / "runs").list()
    assert not results["failed"] and set(runs["method"]) == {"zeroshot", "rada"}
    hm = {r["method"]: r["ours"] for r in results["comparison"] if r["metric"] == "hm" and r["dataset"] == "toy_vocab"}
    for method, value in hm.items():
        assert value == pytest.approx(float(runs[runs["method"] == method]["hm"].iloc[0]))
