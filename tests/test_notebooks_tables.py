"""The MMRL table notebooks beyond Tables 1, 10 and 11, the notebook index, and offline figures.

Every notebook executes on the toy world (the briefly pretrained toy CLIP as a `local-dir:` backbone,
a registry in tmp_path) with the smallest parameters; the test checks that no cell failed, that the
comparison holds the registry's numbers, and (once) that the HTML export carries plotly.js inline.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import nbformat
import pytest

pytest.importorskip("papermill")

from workbench.data.paper_results import load_paper_results
from workbench.notebooks_cli import (find_notebook, list_notebooks, main as notebooks_main, notebook_index,
                                     notebook_info, notebook_parameters, run_notebook)
from notebook_helpers import SMALL, execute_notebook, plotly_outputs, cell_errors  # noqa: E402


def _run(name, tmp_path, backbone, **params):
    out, nb, results, runs = execute_notebook(name, tmp_path, backbone, **params)
    return out, nb, results, runs


def _config(value) -> dict:
    return json.loads(value) if isinstance(value, str) else dict(value)


# ------------------------------------------------------------------------------------------------
# the index
# ------------------------------------------------------------------------------------------------
def test_index_lists_every_table_of_the_five_papers(capsys):
    items = notebook_index()
    tables = load_paper_results()[["paper", "table"]].drop_duplicates()
    listed = {(r["paper"], r["item"]) for r in items if r["kind"] == "table"}
    assert listed == set(map(tuple, tables.to_numpy()))
    by_item = {(r["paper"], r["item"]): r for r in items}
    # every notebook's declared tables are in the index with the command that runs it
    for nb in list_notebooks():
        info = notebook_info(nb)
        assert info["paper"] and (info["tables"] or info["figures"]), nb.name
        for item in info["tables"] + info["figures"]:
            row = by_item[(info["paper"], item)]
            assert nb.stem in row["notebooks"] and row["command"].startswith("workbench notebooks run ")
    assert by_item[("mmrl", "Table 1")]["command"] == "workbench notebooks run mmrl_table1_base_to_novel"
    assert by_item[("mmrl", "Table 2")]["notebook"] == "mmrl_table2_cross_dataset"
    assert by_item[("mmrl", "Table 3")]["notebook"] == "mmrl_table3_domain_generalization"
    assert by_item[("mmrl", "Figure 4")]["notebook"] == "mmrl_table10_11_few_shot"
    assert by_item[("dam", "Table I")]["notebook"] == "dam_table1_base_to_novel" and by_item[("dam", "Fig. 3")]["kind"] == "figure"
    assert by_item[("mmrl", "Table 9")]["notebook"] == "mmrl_table9_regularization"
    # tables in their printed order (10 after 9; DAM's Roman numerals by value)
    mmrl = [r["item"] for r in items if r["paper"] == "mmrl" and r["kind"] == "table"]
    assert mmrl == [f"Table {i}" for i in range(1, 12)]
    dam = [r["item"] for r in items if r["paper"] == "dam" and r["kind"] == "table"]
    assert dam[:5] == ["Table I", "Table II", "Table III", "Table IV", "Table V"] and dam[-1] == "Table X"

    assert notebooks_main(["notebooks", "list", "--index", "--paper", "mmrl"]) == 0
    out = capsys.readouterr().out
    assert "workbench notebooks run mmrl_table2_cross_dataset" in out and "Table 9" in out and "no notebook" in out
    assert "DAM" not in out
    assert notebooks_main(["notebooks", "list"]) == 0
    out = capsys.readouterr().out
    assert "mmrl_table3_domain_generalization:" in out and "DAM (" in out and "RADA (" in out


def test_new_notebooks_ship_clean_with_the_common_parameters():
    common = {"backbone", "pretrained", "data_root", "datasets", "seeds", "epochs", "device", "registry", "presets",
              "train_settings", "results_path"}
    for name in ("mmrl_table2_cross_dataset", "mmrl_table3_domain_generalization", "mmrl_table4_ablation_variants",
                 "mmrl_table5_8_alpha_lambda", "mmrl_table6_efficiency", "mmrl_table9_regularization"):
        nb = nbformat.read(find_notebook(name), as_version=4)
        assert len([c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]) == 1
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
        source = "\n".join(c.source for c in nb.cells)
        assert "init_notebook_mode(connected=False)" in source and "notebook_connected" not in source
        params = notebook_parameters(name)
        assert common <= set(params)
        # every line of the parameters cell is a parameter papermill can read (and inject)
        tagged = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert len(params) == len(tagged.source.strip().splitlines()), name


# ------------------------------------------------------------------------------------------------
# executing the notebooks on the toy world
# ------------------------------------------------------------------------------------------------
def test_cross_dataset_notebook_and_offline_html(backbone, tmp_path):
    name = "mmrl_table2_cross_dataset"
    out, nb, results, runs = _run(name, tmp_path, backbone, datasets=["toy_vocab", "toy_objects"],
                                  methods=["zeroshot", "coop"], **SMALL)
    assert results["tables"] == ["Table 2"] and not results["failed"]
    assert len(runs) == 2 and (runs["status"] == "done").all()
    rows = results["comparison"]
    assert {r["dataset"] for r in rows} == {"toy_vocab", "toy_objects", "average"}
    for r in rows:
        match = runs[runs["method"] == r["method"]]
        assert len(match) == 1 and r["metric"] == "top1"
        assert r["ours"] == pytest.approx(float(match[r["dataset"]].iloc[0]), abs=1e-9)
        assert r["paper"] is None
    assert plotly_outputs(nb) >= 1

    # the HTML export renders offline: plotly.js inline once, no plotly CDN script
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", str(out)], check=True,
                   capture_output=True)
    html = out.with_suffix(".html").read_text(encoding="utf-8")
    assert html.count("plotly.js v") == 1  # the library's banner: embedded once
    assert "window.Plotly = Plotly" in html
    assert not re.search(r"<script[^>]+src=[\"'][^\"']*cdn\.plot\.ly", html)
    assert "Plotly.newPlot" in html


def test_domain_generalization_notebook(backbone, tmp_path):
    name = "mmrl_table3_domain_generalization"
    _, nb, results, runs = _run(name, tmp_path, backbone, datasets=["toy_objects", "toy_objects_shifted"],
                                methods=["zeroshot", "coop"], **SMALL)
    assert results["tables"] == ["Table 3"] and not results["failed"] and len(runs) == 2
    rows = [r for r in results["comparison"] if r["dataset"] == "toy_objects_shifted"]
    assert {r["method"] for r in rows} == {"zeroshot", "coop"}
    for r in rows:
        assert r["ours"] == pytest.approx(float(runs[runs["method"] == r["method"]]["toy_objects_shifted"].iloc[0]))


def test_ablation_notebook_runs_each_variant(backbone, tmp_path):
    name = "mmrl_table4_ablation_variants"
    variants = {"variant: full MMRL": {}, "variant: w/o L": {"method.text_tokens": False}}
    _, nb, results, runs = _run(name, tmp_path, backbone, datasets=["toy_vocab"], variants=variants,
                                rep_dims=[32], layers=[], tokens=[], **SMALL)
    assert set(results["parameters"]["variants"]) == {"variant: full MMRL", "variant: w/o L", "d_r=32"}
    assert len(runs) == 3 and (runs["status"] == "done").all()
    configs = [_config(c) for c in runs["method_config"]]
    assert len({json.dumps(c, sort_keys=True) for c in configs}) == 3
    rows = results["comparison"]
    assert {r["variant"] for r in rows} == set(results["parameters"]["variants"])
    assert len(rows) == 3 * 3  # variants x (base, new, hm)
    wo_l = runs[[not c["text_tokens"] for c in configs]]
    hm = next(r for r in rows if r["variant"] == "variant: w/o L" and r["metric"] == "hm")
    assert hm["ours"] == pytest.approx(float(wo_l["hm"].iloc[0]))
    assert plotly_outputs(nb) >= 1


@pytest.mark.slow
def test_alpha_lambda_notebook(backbone, tmp_path):
    name = "mmrl_table5_8_alpha_lambda"
    _, nb, results, runs = _run(name, tmp_path, backbone, datasets=["toy_vocab"], alphas=[0.5], lambdas=[0.0], **SMALL)
    assert set(results["parameters"]["variants"]) == {"alpha=0.5", "lambda=0.0"}
    assert results["tables"] == ["Table 5", "Table 8"] and len(runs) == 2
    assert sorted(_config(c)["alpha"] for c in runs["method_config"]) == [0.5, 0.7]


@pytest.mark.slow
def test_regularization_notebook(backbone, tmp_path):
    name = "mmrl_table9_regularization"
    _, nb, results, runs = _run(name, tmp_path, backbone, datasets=["toy_vocab"], strategies=["Cosine", "MSE"], **SMALL)
    assert set(results["parameters"]["variants"]) == {"regularization=Cosine", "regularization=MSE"}
    assert results["tables"] == ["Table 9"] and len(runs) == 2 and not results["failed"]
    assert sorted(_config(c)["reg_loss"] for c in runs["method_config"]) == ["cosine", "mse"]


def test_efficiency_notebook_measures_parameters_and_speed(backbone, tmp_path):
    name = "mmrl_table6_efficiency"
    _, nb, results, runs = _run(name, tmp_path, backbone, datasets=["toy_vocab"], methods=["coop", "mmrl"],
                                mmrl_star=True, batch_size=8, **SMALL)
    assert results["tables"] == ["Table 6"] and not results["failed"] and len(runs) == 3
    rows = {r["method"]: r for r in results["comparison"]}
    assert set(rows) == {"CoOp", "MMRL", "MMRL*"}
    assert rows["MMRL*"]["params_M"] < rows["MMRL"]["params_M"]  # d_r = 32 < the toy preset's 64
    assert rows["CoOp"]["params_M"] < rows["MMRL"]["params_M"]
    for r in rows.values():
        assert r["fps"] > 0 and r["fps batch"] == 8 and r["hardware"].startswith(("CPU", "GPU"))
        assert r["train_min"] > 0 and 0 <= r["hm"] <= 100
    assert rows["MMRL"]["params_M paper"] == pytest.approx(4.992) and rows["CoOp"]["params_M paper"] is None
    mmrl = runs[[_config(c).get("rep_dim") == 64 for c in runs["method_config"]]]
    assert rows["MMRL"]["hm"] == pytest.approx(float(mmrl["hm"].iloc[0]))
    assert "measured on: CPU" in "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def test_dataset_statistics_notebook(toy_data_root, tmp_path):
    name = "mmrl_table7_datasets"
    out = run_notebook(name, {"datasets": ["eurosat", "imagenet_a", "toy_vocab"]}, output_dir=tmp_path)
    nb = nbformat.read(out, as_version=4)
    assert not cell_errors(nb)
    results = json.loads((tmp_path / f"{name}.results.json").read_text())
    rows = {(r["dataset"], r["metric"]): r for r in results["comparison"]}
    assert rows[("eurosat", "classes")]["manifest"] == rows[("eurosat", "classes")]["paper"] == 10
    assert rows[("eurosat", "test")]["diff"] == 0 and rows[("eurosat", "test")]["status"] == "no data root"
    assert rows[("imagenet_a", "test")]["paper"] == 7500
    assert rows[("toy_vocab", "classes")]["found"] == 16 and rows[("toy_vocab", "classes")]["paper"] is None
    assert plotly_outputs(nb) == 2


def _chromium() -> str | None:
    import os
    import shutil

    path = os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium")
    return path if os.path.exists(path) else shutil.which("chromium") or shutil.which("chromium-browser")


def test_exported_html_draws_its_figures_offline(tmp_path):
    """The HTML export drawn in headless Chromium with the network off: every figure is drawn."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = _chromium()
    if not chromium:
        pytest.skip("no chromium")
    out = run_notebook("mmrl_table7_datasets", {"datasets": ["eurosat", "dtd"]}, output_dir=tmp_path)
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", str(out)], check=True,
                   capture_output=True)
    html = out.with_suffix(".html")
    assert html.read_text(encoding="utf-8").count("plotly.js v") == 1
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_context(offline=True).new_page()
            page.goto(html.as_uri(), wait_until="load", timeout=60_000)
            page.wait_for_function("document.querySelectorAll('.plotly-graph-div .main-svg').length > 0",
                                   timeout=30_000)
            assert page.locator(".plotly-graph-div").count() == 2
            drawn = page.evaluate("[...document.querySelectorAll('.plotly-graph-div')]"
                                  ".filter(d => d.querySelector('.main-svg')).length")
            assert drawn == 2
        finally:
            browser.close()
