"""The app shows DsRA's records: the Compare page projects two runs' image features side by side
(Fig. 4c), and the run detail renders the declared coefficient grid (layer × d_r) at a chosen epoch."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("streamlit")

from test_app import app, fake_run, no_exceptions  # noqa: E402  (the app tests' helpers)

from workbench.runs import Registry  # noqa: E402


def _embeddings(run, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), 10)
    image = rng.normal(size=(30, 8)) + 3 * np.eye(8)[labels]
    run.save_embeddings("base", image.astype(np.float16), labels, np.array(["a", "b", "c"]))


def test_compare_page_projects_two_runs_image_features_side_by_side(monkeypatch, tmp_path):
    reg = Registry(tmp_path / "runs")
    maple = fake_run(reg, 1, "done", method="maple", metrics={"hm": 70.0})
    dsra = fake_run(reg, 1, "done", method="dsra", metrics={"hm": 72.0})
    _embeddings(maple, 0)
    _embeddings(dsra, 1)
    at = app(monkeypatch, reg.root)
    at.query_params["runs"] = f"{maple.short_hash},{dsra.short_hash}"
    at.run()
    at.switch_page("views/compare.py").run()
    no_exceptions(at)
    before = len(at.get("plotly_chart"))
    at.toggle(key="c_tsne").set_value(True).run()
    no_exceptions(at)
    charts = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    assert len(charts) == before + 2
    titles = [c["layout"]["title"]["text"] for c in charts[-2:]]
    assert "maple" in titles[0] and "dsra" in titles[1]
    assert sum(len(t.get("x", [])) if isinstance(t.get("x"), list) else 0 for t in charts[-1]["data"]) in (0, 30)


def test_run_detail_renders_the_coefficient_grid_at_the_chosen_epoch(monkeypatch, tmp_path):
    reg = Registry(tmp_path / "runs")
    run = fake_run(reg, 1, "done", method="dsra", metrics={"hm": 72.0})
    for epoch in range(2):
        run.log_epoch(epoch, {"loss": 1.0 - 0.1 * epoch,
                              **{f"R.pre_attn.{i}.{j}": float(10 * epoch + i + j) for i in range(2) for j in range(3)},
                              **{f"R_norm.pre_attn.{i}": float(epoch + i) for i in range(2)}})
    at = app(monkeypatch, reg.root)
    at.query_params["run"] = run.short_hash
    at.run()
    at.switch_page("views/run_detail.py").run()
    no_exceptions(at)
    assert "R.pre_attn.0.0" not in at.multiselect(key="d_series").value  # the grid shows them
    at.select_slider(key="d_grid_epoch_0").set_value(0).run()
    no_exceptions(at)
    grids = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    grid = next(c for c in grids if "epoch 0" in c["layout"].get("title", {}).get("text", ""))
    from test_app import arr

    np.testing.assert_array_equal(arr(grid["data"][0]["z"]), [[0, 1, 2], [1, 2, 3]])


def test_plain_kgcoop_run_shows_no_coefficient_grid(monkeypatch, tmp_path):
    reg = Registry(tmp_path / "runs")
    run = fake_run(reg, 1, "done", method="kgcoop", metrics={"hm": 72.0})
    for epoch in range(2):
        run.log_epoch(epoch, {"loss": 1.0 - 0.1 * epoch})
    at = app(monkeypatch, reg.root)
    at.query_params["run"] = run.short_hash
    at.run()
    at.switch_page("views/run_detail.py").run()
    no_exceptions(at)
    assert not [s for s in at.select_slider if str(s.key).startswith("d_grid_epoch")]
