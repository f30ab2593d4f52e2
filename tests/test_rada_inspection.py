"""Inspection arrays: a RAda run stores M, R and M ⊙ R for a few test images of each split, and the
app's run detail draws their distribution (Fig. 4) and per-image heatmaps (Fig. 5) from them, with no
method names in the app (the method declares a plot of kind "arrays")."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import make_eurosat
from workbench.analysis.inspect import array_figures
from workbench.runs import Registry
from workbench.runs.files import load_inspection

APP = Path(__file__).resolve().parents[1] / "app" / "main.py"


@pytest.fixture(scope="module")
def rada_run(tmp_path_factory):
    from workbench.protocols import build_spec
    from workbench.runs.execute import execute

    root = tmp_path_factory.mktemp("rada_inspection")
    make_eurosat(root / "data")
    spec = build_spec("rada", "base_to_novel", "eurosat", shots=2, seed=1, backbone="wb-tiny-vit", preset="toy",
                      data_root=str(root / "data"), settings={"train.epochs": 1, "train.feature_views": 1})
    reg = Registry(root / "runs")
    run = execute(spec, reg, data_root=str(root / "data"), progress=False, device="cpu")
    assert run.status == "done"
    return reg, run


def test_rada_run_stores_mask_rational_matrix_and_their_product_per_split(rada_run):
    _, run = rada_run
    stored = load_inspection(run.dir)
    assert set(stored) == {"base", "new"}
    for key, arrays in stored.items():
        assert set(arrays) == {"mask", "rational", "masked"}
        mask, rational, masked = (arrays[k].astype(np.float32) for k in ("mask", "rational", "masked"))
        assert mask.shape == rational.shape == masked.shape and mask.shape[0] >= 1
        assert mask.min() >= 0  # relu(1 + out)
        np.testing.assert_allclose(masked, mask * rational, atol=2e-3)
        # each image's rational matrix sums over D to the cosine of two unit vectors: within [-1, 1]
        assert np.all(np.abs(rational.sum(-1)) <= 1.01)


def test_array_figures_draw_the_distribution_and_one_heatmap_per_array():
    rng = np.random.default_rng(0)
    arrays = {"mask": rng.random((3, 4, 6)), "rational": rng.random((3, 4, 6)), "other": rng.random((3, 2, 2))}
    plot = {"kind": "arrays", "columns": ["mask", "rational"], "title": "T"}
    dist, maps = array_figures(arrays, plot, image=2)
    np.testing.assert_allclose(np.asarray(dist.data[0].x), arrays["mask"].ravel())
    assert [np.asarray(t.z).tolist() for t in maps.data] == [arrays["mask"][2].tolist(), arrays["rational"][2].tolist()]
    assert array_figures({"x": arrays["other"]}, plot) == []
    with pytest.raises(ValueError, match="image must be in 0..2"):
        array_figures(arrays, plot, image=3)


def test_run_detail_shows_the_stored_arrays_for_the_chosen_image(monkeypatch, rada_run):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    reg, run = rada_run
    monkeypatch.setenv("WORKBENCH_RUNS", str(reg.root))
    monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=240)
    at.query_params["run"] = run.short_hash
    at.run()
    at.switch_page("views/run_detail.py").run()
    assert not at.exception, [e.value for e in at.exception]
    stored = load_inspection(run.dir)

    def heatmaps():
        specs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
        return [s for s in specs if s["data"] and s["data"][0]["type"] == "heatmap"
                and "image" in s["layout"].get("title", {}).get("text", "")]

    def z(trace):
        from test_app import arr

        return arr(trace["z"]).astype(np.float32)

    (maps,) = heatmaps()
    names = [a["text"] for a in maps["layout"]["annotations"]]
    assert names == ["mask", "rational", "masked"]
    key = at.selectbox(key="d_arrays_key_1").value
    np.testing.assert_allclose(z(maps["data"][1]), stored[key]["rational"][0].astype(np.float32), atol=1e-3)
    last = stored[key]["rational"].shape[0] - 1
    at.number_input(key="d_arrays_image_1").set_value(last).run()
    (maps,) = heatmaps()
    np.testing.assert_allclose(z(maps["data"][1]), stored[key]["rational"][last].astype(np.float32), atol=1e-3)
