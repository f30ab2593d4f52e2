"""The "grid" inspector kind (columns `<prefix>.<row>.<col>` as a rows × cols heatmap at one epoch), which
DsRA declares for its coefficients r^i (layer × d_r)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.analysis import inspect


def history():
    rows = []
    for epoch in range(3):
        row = {"epoch": epoch, "loss": 1.0 / (epoch + 1)}
        for layer in range(2):
            for j in range(3):
                row[f"R.pre_attn.{layer}.{j}"] = 100 * epoch + 10 * layer + j
                row[f"R.pre_mlp.{layer}.{j}"] = -(100 * epoch + 10 * layer + j)
        row["R_norm.pre_attn.0"] = float(epoch)
        rows.append(row)
    return pd.DataFrame(rows)


def test_grid_shows_each_prefix_as_rows_by_cols_at_the_last_epoch():
    plot = inspect.validate_plots([{"kind": "grid", "columns": ["R.*"]}])[0]
    fig = inspect.inspector_figure(history(), plot)
    assert [t.text for t in fig.layout.annotations] == ["R.pre_attn", "R.pre_mlp"]
    attn, mlp = (np.asarray(trace.z) for trace in fig.data)
    np.testing.assert_array_equal(attn, [[200, 201, 202], [210, 211, 212]])
    np.testing.assert_array_equal(mlp, -attn)
    assert "epoch 2" in fig.layout.title.text


def test_grid_at_a_chosen_epoch_and_an_unknown_epoch_is_an_error():
    plot = inspect.validate_plots([{"kind": "grid", "columns": ["R.pre_mlp.*"], "epoch": 1}])[0]
    fig = inspect.inspector_figure(history(), plot)
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), [[-100, -101, -102], [-110, -111, -112]])
    fig0 = inspect.inspector_figure(history(), plot, epoch=0)
    np.testing.assert_array_equal(np.asarray(fig0.data[0].z), [[0, -1, -2], [-10, -11, -12]])
    with pytest.raises(ValueError, match="epoch 7 is not in the history"):
        inspect.inspector_figure(history(), plot, epoch=7)


def test_grid_without_matching_row_col_columns_draws_nothing():
    plot = inspect.validate_plots([{"kind": "grid", "columns": ["R_norm.*"]}])[0]  # no <row>.<col> suffix
    assert inspect.inspector_figure(history(), plot) is None


def test_dsra_declares_a_valid_grid_and_trajectories():
    from workbench.methods import get_method_class

    kinds = [p["kind"] for p in inspect.declared_plots(get_method_class("dsra"))]
    assert kinds == ["grid", "scalars"]
