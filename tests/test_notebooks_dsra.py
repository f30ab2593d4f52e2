"""The DsRA notebooks execute on the toy world (briefly pretrained toy CLIP, a registry in tmp_path, the
smallest parameters): no cell fails, the comparison holds the registry's numbers, the paper's cells join
where a row has them. The t-SNE figure notebook is the fast one; the others are slow."""
from __future__ import annotations


import nbformat
import pytest

pytest.importorskip("papermill")

from workbench.notebooks_cli import find_notebook, notebook_info, notebook_parameters
from notebook_helpers import execute_notebook, plotly_outputs  # noqa: E402

SMALL = {"seeds": [1], "epochs": 1}
NOTEBOOKS = {"dsra_table1_fig3_few_shot": (["Table 1"], ["Figure 3"]),
             "dsra_table2_base_to_novel": (["Table 2"], []),
             "dsra_table3_domain_generalization": (["Table 3"], []),
             "dsra_table4_fig4b_ablations": (["Table 4"], ["Figure 4"]),
             "dsra_table5_plugin": (["Table 5"], []),
             "dsra_fig4a_rank": ([], ["Figure 4"]),
             "dsra_fig4c_tsne": ([], ["Figure 4"])}


def _run(name, tmp_path, backbone, **params):
    out, nb, results, runs = execute_notebook(name, tmp_path, backbone, **params)
    return nb, results, runs


def test_dsra_notebooks_declare_their_items_and_ship_clean():
    for name, (tables, figures) in NOTEBOOKS.items():
        info = notebook_info(find_notebook(name))
        assert (info["paper"], info["tables"], info["figures"]) == ("dsra", tables, figures), name
        nb = nbformat.read(find_notebook(name), as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), name
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and len(notebook_parameters(name)) == len(tagged[0].source.strip().splitlines()), name


def test_fig4c_tsne_notebook_draws_both_methods(backbone, tmp_path):
    nb, results, runs = _run("dsra_fig4c_tsne", tmp_path, backbone, shots=1, max_points=60, **SMALL)
    assert not results["failed"] and set(runs["method"]) == {"maple", "dsra"}
    for row in results["comparison"]:
        if row["dataset"] == "toy_objects":
            assert row["ours"] == pytest.approx(float(runs[runs["method"] == row["method"]]["top1"].iloc[0]))
    assert plotly_outputs(nb) >= 1
    tsne = [c for c in nb.cells if "make_subplots" in c.source][0]
    figure = next(o for o in tsne.outputs if "application/vnd.plotly.v1+json" in o.get("data", {}))
    titles = [a["text"] for a in figure["data"]["application/vnd.plotly.v1+json"]["layout"]["annotations"]]
    assert titles == ["MaPLe", "DsRA"]


@pytest.mark.slow
def test_table1_few_shot_notebook(backbone, tmp_path):
    _, results, runs = _run("dsra_table1_fig3_few_shot", tmp_path, backbone, methods=["zeroshot", "dsra"], shots=[1, 2],
                            **SMALL)
    assert not results["failed"] and set(runs["method"]) == {"zeroshot", "dsra"}
    assert {r["shots"] for r in results["comparison"] if r["method"] == "dsra"} == {1, 2}


@pytest.mark.slow
def test_table2_base_to_novel_notebook(backbone, tmp_path):
    _, results, runs = _run("dsra_table2_base_to_novel", tmp_path, backbone, methods=["dsra"], shots=1, **SMALL)
    assert not results["failed"] and len(runs) == 1
    hm = [r for r in results["comparison"] if r["metric"] == "hm" and r["dataset"] == "toy_objects"]
    assert hm and hm[0]["ours"] == pytest.approx(float(runs["hm"].iloc[0]))


@pytest.mark.slow
def test_table3_domain_generalization_notebook(backbone, tmp_path):
    _, results, runs = _run("dsra_table3_domain_generalization", tmp_path, backbone, methods=["dsra"], shots=1, **SMALL)
    assert not results["failed"] and len(runs) == 1


@pytest.mark.slow
def test_table4_ablation_notebook_runs_each_placement(backbone, tmp_path):
    variants = {"MAB only": {"method.dual_shared_sites": ["pre_attn"]}, "FNB only": {"method.dual_shared_sites": ["pre_mlp"]}}
    _, results, runs = _run("dsra_table4_fig4b_ablations", tmp_path, backbone, variants=variants, shots=1, **SMALL)
    assert not results["failed"] and len(runs) == 2
    assert {r["variant"] for r in results["comparison"]} == set(variants)


@pytest.mark.slow
def test_table5_plugin_notebook_pairs_each_method_with_and_without(backbone, tmp_path):
    _, results, runs = _run("dsra_table5_plugin", tmp_path, backbone, methods=["kgcoop"], few_shots=[1], b2n_shots=None,
                            **SMALL)
    assert not results["failed"] and len(runs) == 2
    assert {r["method"] for r in results["comparison"]} == {"KgCoOp", "KgCoOp + DsRA"}


@pytest.mark.slow
def test_fig4a_rank_notebook(backbone, tmp_path):
    _, results, runs = _run("dsra_fig4a_rank", tmp_path, backbone, ranks=[2, 4], shots=1, **SMALL)
    assert not results["failed"] and len(runs) == 2
