"""What the notebook tests share: execute a notebook on the toy world into a registry in tmp_path and
read back what it wrote (the executed notebook, its results JSON, the registry's runs)."""
from __future__ import annotations

import json

import nbformat

from workbench.notebooks_cli import run_notebook
from workbench.runs import Registry

SMALL = {"seeds": [1], "shots": 1, "epochs": 1}  # the smallest grid a notebook accepts


def cell_errors(nb) -> list[str]:
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code" for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def plotly_outputs(nb) -> int:
    return sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def execute_notebook(name: str, tmp_path, backbone: str, **params):
    """(output path, executed notebook, results dict, registry runs) after running `name` with `params`;
    fails on any cell error, listing them."""
    registry = tmp_path / "runs"
    out = run_notebook(name, {"backbone": backbone, "registry": str(registry), **params}, output_dir=tmp_path / "out")
    nb = nbformat.read(out, as_version=4)
    assert not cell_errors(nb), cell_errors(nb)
    results = json.loads((tmp_path / "out" / f"{name}.results.json").read_text())
    return out, nb, results, Registry(registry).list()
