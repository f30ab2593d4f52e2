"""The paper-table notebooks, executed with papermill on the toy world with tiny budgets.

Both notebooks run against the briefly pretrained toy CLIP (`toy_model_dir`, as a `local-dir:` backbone,
never the full embedded model) and a registry in tmp_path; the test then checks that the executed
notebook has no error cells and that its comparison table (shown in the notebook and written to
<name>.results.json) holds exactly the registry's metrics.
"""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("papermill")

from workbench.notebooks_cli import (find_notebook, launch, list_notebooks, main as notebooks_main,
                                     notebook_parameters, notebook_specs, parse_parameters, run_notebook)
from workbench.runs import Registry
from notebook_helpers import cell_errors  # noqa: E402

# toy_vocab: the smallest toy dataset (a third of toy_objects' test images), to keep evaluation short
DATASET = "toy_vocab"
B2N = "mmrl_table1_base_to_novel"
FEW_SHOT = "mmrl_table10_11_few_shot"
EXPECTED_PARAMETERS = {"backbone", "pretrained", "data_root", "datasets", "methods", "shots", "seeds", "epochs",
                       "device", "registry", "presets", "train_settings", "results_path"}


def _all_output_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                parts.append(o.get("text", ""))
            for mime in ("text/plain", "text/html", "text/markdown"):
                if mime in o.get("data", {}):
                    parts.append(o["data"][mime])
    return "\n".join(parts)


def _check_against_registry(results: dict, registry_root: Path, metrics: list[str], n_runs: int) -> list[dict]:
    """Every `ours` number of the comparison equals the registry's metric for that run (one seed)."""
    runs = Registry(registry_root).list()
    assert len(runs) == n_runs and (runs["status"] == "done").all()
    rows = [r for r in results["comparison"] if r["dataset"] != "average"]
    assert len(rows) == n_runs * len(metrics)
    for row in rows:
        shots = runs["shots"].isna() if row["shots"] is None else runs["shots"] == row["shots"]
        match = runs[(runs["method"] == row["method"]) & (runs["source"] == row["dataset"]) & shots.fillna(False)]
        assert len(match) == 1, row
        assert row["ours"] == pytest.approx(float(match[row["metric"]].iloc[0]), abs=1e-9)
        assert row["n"] == 1 and row["ours_std"] is None  # one seed: no spread
        # toy datasets: no paper value, said so
        assert row["paper"] is None and row["diff"] is None and row["note"]
    return rows


def test_notebooks_are_listed_with_their_parameters():
    names = [p.stem for p in list_notebooks()]
    assert B2N in names and FEW_SHOT in names
    for name in (B2N, FEW_SHOT):
        nb = nbformat.read(find_notebook(name), as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and not cell_errors(nb)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # shipped clean
        params = notebook_parameters(name)
        assert set(params) == EXPECTED_PARAMETERS
        assert params["backbone"]["default"] == '"toy"' and params["datasets"]["default"] == '["toy_objects"]'
    assert notebook_parameters(B2N)["shots"]["default"] == "16"
    assert notebook_parameters(FEW_SHOT)["shots"]["default"] == "[1, 2, 4, 8, 16]"
    assert parse_parameters([("seeds", "[1]"), ("pretrained", "null"), ("backbone", "ViT-B-16-quickgelu"),
                             ("epochs", "2")]) == {"seeds": [1], "pretrained": None,
                                                   "backbone": "ViT-B-16-quickgelu", "epochs": 2}
    with pytest.raises(KeyError, match="no parameter"):
        run_notebook(B2N, {"sedes": [1]})


def test_base_to_novel_notebook(backbone, tmp_path, capsys):
    registry = tmp_path / "runs"
    params = {"backbone": backbone, "registry": str(registry), "datasets": [DATASET], "seeds": [1], "shots": 2,
              "epochs": 1}
    out = run_notebook(B2N, {**params, "methods": ["zeroshot", "coop", "no_such_method"]},
                       output_dir=tmp_path / "out")
    assert out == tmp_path / "out" / f"{B2N}.ipynb"
    nb = nbformat.read(out, as_version=4)
    assert not cell_errors(nb)
    text = _all_output_text(nb)
    assert "skipped (not registered in this workbench): no_such_method" in text

    results = json.loads((tmp_path / "out" / f"{B2N}.results.json").read_text())
    assert results["parameters"]["methods"] == ["zeroshot", "coop"] and results["tables"] == ["Table 1"]
    assert results["parameters"]["skipped_methods"] == ["no_such_method"] and not results["failed"]
    rows = _check_against_registry(results, registry, ["base", "new", "hm"], n_runs=2)
    assert {r["paper_method"] for r in rows} == {"CLIP", "CoOp"}
    assert {r["shots"] for r in rows if r["method"] == "coop"} == {2}
    assert (tmp_path / "out" / f"{B2N}.comparison.csv").is_file()
    # the table shown in the notebook carries the same numbers (2 decimals) and the missing-paper marker
    for row in rows:
        assert f"{row['ours']:.2f}" in text
    assert "toy dataset: no paper value" in text
    # the figures were produced (plotly mime bundles): comparison bars + coop's training history
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb.cells
               for o in c.get("outputs", [])) >= 2

    # launching the notebook's specs again reuses the finished runs (same spec hashes), trains nothing
    capsys.readouterr()
    specs = notebook_specs(["zeroshot", "coop"], "base_to_novel", [DATASET], 2, [1], backbone=backbone, epochs=1)
    again = launch(specs, Registry(registry))
    assert all(r.ok and r.reused for r in again) and capsys.readouterr().out.count(": already done") == 2
    assert {r.run.short_hash for r in again} == {r["hash"][:12] for r in results["runs"]}
    assert len(Registry(registry).list()) == 2


def test_few_shot_notebook_through_the_command(backbone, tmp_path, capsys):
    registry = tmp_path / "runs"
    code = notebooks_main(["notebooks", "run", FEW_SHOT, "-p", "backbone", backbone, "-p", "registry", str(registry),
                           "-p", "datasets", f"[{DATASET}]", "-p", "methods", "[zeroshot, coop]", "-p", "seeds", "[1]",
                           "-p", "shots", "[1, 2]",
                           "-p", "epochs", "1", "--output-dir", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert Path(printed) == tmp_path / "out" / f"{FEW_SHOT}.ipynb"
    nb = nbformat.read(printed, as_version=4)
    assert not cell_errors(nb)
    results = json.loads((tmp_path / "out" / f"{FEW_SHOT}.results.json").read_text())
    assert results["parameters"]["shots"] == [1, 2] and results["tables"] == ["Table 10", "Table 11"]
    # coop once per shot count; zero-shot once (its result depends on neither shots nor seed)
    rows = _check_against_registry(results, registry, ["top1"], n_runs=3)
    assert sorted(r["shots"] for r in rows if r["method"] == "coop") == [1, 2]
    assert [r["shots"] for r in rows if r["method"] == "zeroshot"] == [None]
    text = _all_output_text(nb)
    for row in rows:
        assert f"{row['ours']:.2f}" in text
    # zero-shot CLIP is not in the few-shot tables; coop at these shots has no toy value
    assert {r["note"] for r in rows if r["method"] == "zeroshot"} == {"toy dataset: no paper value"}
