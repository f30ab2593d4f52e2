"""RAda's FFT notebooks (Tables 1 and 6): they declare their tables, their default methods are registered
methods of the full_finetune protocol, the paper's rows are found for them, and (slow) one executes on the toy
world with its comparison holding the registry's numbers."""
from __future__ import annotations

import ast
import json

import nbformat
import pytest

pytest.importorskip("papermill")

from workbench.analysis import compare  # noqa: E402
from workbench.methods import list_methods  # noqa: E402
from workbench.notebooks_cli import notebook_info, notebook_parameters, run_notebook  # noqa: E402
from workbench.runs import Registry  # noqa: E402

NOTEBOOKS = {"rada_table1_fft": "Table 1", "rada_table6_clip_adapter_fft": "Table 6"}


@pytest.mark.parametrize("name,table", NOTEBOOKS.items())
def test_fft_notebooks_declare_their_table_and_run_registered_methods_with_paper_rows(name, table):
    assert notebook_info(name) == {"paper": "rada", "tables": [table], "figures": []}
    params = notebook_parameters(name)
    methods = ast.literal_eval(params["methods"]["default"])
    assert set(methods) <= set(list_methods())
    assert ast.literal_eval(params["datasets"]["default"]) == ["toy_objects", "toy_objects_shifted"]
    paper = compare.paper_rows("rada", table, protocol="domain_generalization")
    printed = {compare.method_key(m) for m in paper["method"]}
    assert set(methods) - {"linear_probe"} <= printed  # every method has its paper row (LP: linear_probe)
    assert "linear_probe" not in methods or compare.method_key("LP") == "linear_probe"


@pytest.mark.slow  # trains and evaluates on the toy world
def test_table6_notebook_executes_on_the_toy_world(toy_model_dir, tmp_path):
    name = "rada_table6_clip_adapter_fft"
    registry = tmp_path / "runs"
    out = run_notebook(name, {"backbone": f"local-dir:{toy_model_dir}", "registry": str(registry), "seeds": [1],
                              "shots": 1, "epochs": 1, "methods": ["zeroshot", "lp_ft"]}, output_dir=tmp_path / "out")
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    results = json.loads((tmp_path / "out" / f"{name}.results.json").read_text())
    runs = Registry(registry).list()
    ours = {(r["method"], r["dataset"]): r["ours"] for r in results["comparison"] if r["ours"] == r["ours"]}
    for _, row in runs.iterrows():
        assert ours[(row["method"], "toy_objects_shifted")] == pytest.approx(row["toy_objects_shifted"])
