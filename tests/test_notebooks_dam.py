"""DAM's notebooks execute on the toy world (briefly pretrained toy CLIP, registry in tmp_path) with the
smallest parameters: no cell fails, and the results hold the registry's numbers. Fast set: Table IV (no
training); the others train and are marked slow."""
from __future__ import annotations

import math

import pytest

pytest.importorskip("papermill")

from workbench.notebooks_cli import list_notebooks, notebook_info
from notebook_helpers import SMALL, execute_notebook  # noqa: E402


def _run(name, tmp_path, backbone, **params):
    out, nb, results, runs = execute_notebook(name, tmp_path, backbone, **params)
    return nb, results, runs


def test_every_dam_notebook_declares_its_paper_items():
    declared = {}
    for path in list_notebooks():
        if path.stem.startswith("dam_"):
            info = notebook_info(path)
            assert info["paper"] == "dam"
            for item in info["tables"] + info["figures"]:
                declared.setdefault(item, path.stem)
    for item in ["Table I", "Table II", "Table III", "Table IV", "Table V", "Table VI", "Table VII", "Table VIII",
                 "Table IX", "Table X", "Fig. 3", "Fig. 4"]:
        assert item in declared, item


def test_table4_cma_plugin_equals_zero_shot_on_the_toy_world(tmp_path, backbone):
    nb, results, runs = _run("dam_table4_cma_plugin", tmp_path, backbone, datasets=["toy_objects"])
    by_method = {}
    for _, r in runs.iterrows():
        by_method.setdefault(r["method"], []).append(r["top1"])
    assert set(by_method) == {"zeroshot", "dam_cma_zeroshot"}
    assert all(v == by_method["zeroshot"][0] for v in by_method["dam_cma_zeroshot"])  # normalized and raw
    ours = {(c["method"], c["dataset"]): c["ours"] for c in results["comparison"] if c["metric"] == "top1"}
    assert any(m.startswith("dam_cma_zeroshot") and d == "toy_objects" and math.isclose(v, by_method["zeroshot"][0])
               for (m, d), v in ours.items())


@pytest.mark.slow
def test_degeneracy_notebook_shows_zero_spread_for_released_normalization(tmp_path, backbone):
    nb, results, _ = _run("dam_degeneracy_fig3_fig4", tmp_path, backbone, shots=1, epochs=1, max_images=96)
    rows = {r["variant"]: r for r in results["comparison"]}
    released = rows["released: re-normalized SMA output"]
    assert released["max spread"] < 1e-5 and math.isclose(released["d_CMA mean"], released["−log N"], abs_tol=1e-5)
    assert rows["EXTENSION (not DAM): one ridge map across pairs"]["mean spread"] > 1e-3
    assert math.isclose(rows["paper: Eq. 5, not re-normalized"]["mean spread"],
                        rows["paper, every direction rotated (norms kept)"]["mean spread"], rel_tol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dam_table1_base_to_novel", "dam_table7_9_ablations", "dam_table10_efficiency",
                                  "dam_table6_learned_scalars"])
def test_training_notebooks_execute(name, tmp_path, backbone):
    nb, results, runs = _run(name, tmp_path, backbone, **SMALL)
    assert len(runs) and (runs["status"] == "done").all()
    assert results["comparison"]


@pytest.mark.slow
def test_long_tailed_notebook_executes_per_ratio(tmp_path, backbone):
    nb, results, runs = _run("dam_table5_long_tailed", tmp_path, backbone, shots=2, epochs=1, seeds=[1],
                             methods=["dam"], ratios=[10, 50])
    assert len(runs) == 2
    variants = {c.get("variant") for c in results["comparison"]}
    assert {"imbalance ratio 10", "imbalance ratio 50"} <= variants
