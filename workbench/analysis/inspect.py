"""Method inspectors: the plots a method declares (`Method.plots`), built from a run's history.

A method class declares what to plot from what it records every epoch (`learned_scalars()`, loss
terms), as a tuple of small dicts; the app and notebooks render them with no method names:

    plots = ({"kind": "scalars", "columns": ["gate_*"], "title": "Gates"},       # lines over epochs
             {"kind": "heatmap", "columns": ["token_norm.vision.*"]},          # epoch x column
             {"kind": "distribution", "columns": ["rank_*"]},                  # last epoch's values
             {"kind": "grid", "columns": ["R.*"]})                              # rows x cols at one epoch

An "arrays" plot reads no history: its `columns` name arrays the method produces for some evaluated
images (`Method.inspection_arrays`, stored in the run folder, `runs.files.load_inspection`), each
[images, rows, cols]; `array_figures` draws the first one's value distribution over the stored images and
a heatmap of each for one chosen image.

A "grid" reads columns named `<prefix>.<row>.<col>` (e.g. `R.pre_attn.3.7`: layer 3, entry 7) and shows
each prefix as a rows x cols heatmap at the last epoch, or at `epoch` (in the declaration or the call).

`columns` are fnmatch patterns over history columns (the training curves show every changing series
anyway; declarations add the method's own views). Series that stay constant over every logged epoch are
not trajectories (e.g. a fixed loss weight a method reports): `split_history` sets them apart so that
they are shown as settings, beside the run's resolved settings.
"""
from __future__ import annotations

import fnmatch
from typing import Sequence

import numpy as np
import pandas as pd

from workbench.analysis.figures import numeric_history_columns

ENGINE_COLUMNS = ("loss", "train_acc", "lr")  # what the training loop records for every method
KINDS = ("scalars", "heatmap", "distribution", "grid", "arrays")


def split_history(history: pd.DataFrame) -> tuple[list[str], dict[str, float]]:
    """(series, constants): plottable history columns, and the method-reported columns (not the
    engine's loss / train_acc / lr) whose value is the same in every one of 2+ logged epochs."""
    columns = numeric_history_columns(history) if not history.empty else []
    constants: dict[str, float] = {}
    if len(history) >= 2:
        for col in columns:
            if col in ENGINE_COLUMNS:
                continue
            values = pd.to_numeric(history[col], errors="coerce").dropna().to_numpy()
            if len(values) == len(history) and np.all(values == values[0]):
                constants[col] = float(values[0])
    return [c for c in columns if c not in constants], constants


def matching(columns: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Columns matching any of `patterns` (fnmatch), in the order of `columns`."""
    return [c for c in columns if any(fnmatch.fnmatchcase(c, p) for p in patterns)]


def validate_plots(plots) -> list[dict]:
    """The declarations as a list of dicts; ValueError on an unknown kind or missing columns."""
    out = []
    for i, p in enumerate(plots or ()):
        kind, cols = p.get("kind"), p.get("columns")
        if kind not in KINDS:
            raise ValueError(f"plot {i}: kind must be one of {KINDS}, got {kind!r}")
        if not cols or isinstance(cols, str):
            raise ValueError(f"plot {i}: columns must be a non-empty list of patterns")
        out.append({"kind": kind, "columns": list(cols), "title": p.get("title") or ", ".join(cols),
                    **({"epoch": int(p["epoch"])} if p.get("epoch") is not None else {})})
    return out


def declared_plots(method_cls) -> list[dict]:
    """`method_cls.plots` validated ([] for None or a class without declarations)."""
    return validate_plots(getattr(method_cls, "plots", ()) if method_cls is not None else ())


def grid_cells(columns: Sequence[str]) -> dict[str, dict[tuple[int, int], str]]:
    """{prefix: {(row, col): column}} of the columns named `<prefix>.<row>.<col>` (integers row, col)."""
    out: dict[str, dict[tuple[int, int], str]] = {}
    for c in columns:
        parts = c.rsplit(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            out.setdefault(parts[0], {})[(int(parts[1]), int(parts[2]))] = c
    return out


def grid_figure(history: pd.DataFrame, cols: Sequence[str], title: str, epoch: int | None = None):
    """One rows x cols heatmap per prefix of `cols` at `epoch` (default: the last logged one)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from workbench.analysis import figures

    cells = grid_cells(cols)
    if not cells or history.empty:
        return None
    data = history.sort_values("epoch")
    rows = data[data["epoch"] == epoch] if epoch is not None else data.iloc[[-1]]
    if rows.empty:
        raise ValueError(f"epoch {epoch} is not in the history (epochs {data['epoch'].tolist()})")
    row = rows.iloc[-1]
    prefixes = sorted(cells)
    fig = make_subplots(rows=len(prefixes), cols=1, subplot_titles=prefixes, vertical_spacing=0.12)
    for i, prefix in enumerate(prefixes, start=1):
        n_rows = 1 + max(r for r, _ in cells[prefix])
        n_cols = 1 + max(c for _, c in cells[prefix])
        z = np.full((n_rows, n_cols), np.nan)
        for (r, c), name in cells[prefix].items():
            z[r, c] = pd.to_numeric(row[name], errors="coerce")
        fig.add_trace(go.Heatmap(z=z, colorscale="RdBu", zmid=0.0, coloraxis=None, showscale=i == 1,
                                 hovertemplate=prefix + " row %{y} col %{x}<br>%{z:.4g}<extra></extra>"), row=i, col=1)
        fig.update_yaxes(title_text="row", row=i, col=1)
    fig.update_xaxes(title_text="col")
    return figures._layout(fig, f"{title} (epoch {int(row['epoch'])})", height=max(320, 260 * len(prefixes)))


def inspector_figure(history: pd.DataFrame, plot: dict, epoch: int | None = None):
    """The figure of one declaration over `history`, or None when no column matches. Constant series
    are left out of "scalars" plots (they are settings). `epoch` picks a grid's epoch."""
    import plotly.graph_objects as go

    from workbench.analysis import figures

    if plot["kind"] == "arrays":  # drawn from stored arrays (array_figures), not from the history
        return None
    series, _ = split_history(history)
    all_cols = numeric_history_columns(history) if not history.empty else []
    pool = series if plot["kind"] == "scalars" else all_cols
    cols = matching(pool, plot["columns"])
    if not cols:
        return None
    data = history.sort_values("epoch")
    if plot["kind"] == "grid":
        return grid_figure(data, cols, plot["title"], epoch if epoch is not None else plot.get("epoch"))
    if plot["kind"] == "scalars":
        return figures.history_figure(data, cols, separate=False, title=plot["title"])
    if plot["kind"] == "heatmap":
        z = np.array([pd.to_numeric(data[c], errors="coerce").to_numpy(dtype=float) for c in cols])
        fig = go.Figure(go.Heatmap(z=z, x=data["epoch"].to_numpy(), y=cols, colorscale="Viridis",
                                   hovertemplate="%{y}<br>epoch %{x}<br>%{z:.4g}<extra></extra>"))
        fig.update_xaxes(title_text="epoch")
        fig.update_yaxes(type="category")
        return figures._layout(fig, plot["title"], height=max(300, 60 + 24 * len(cols)))
    last = data.iloc[-1]
    values = pd.to_numeric(last[cols], errors="coerce").to_numpy(dtype=float)
    fig = go.Figure(go.Histogram(x=values, nbinsx=min(40, max(5, len(values))), marker_color=figures.BASE_COLOR))
    fig.update_xaxes(title_text=f"value at epoch {int(last['epoch'])}")
    fig.update_yaxes(title_text="columns")
    return figures._layout(fig, plot["title"], height=340)


def array_figures(arrays: dict, plot: dict, image: int = 0) -> list:
    """[distribution of the first declared array's values, heatmaps of every declared array for
    `image`] from stored inspection arrays ({name: [images, rows, cols]}); [] when none is stored."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from workbench.analysis import figures

    names = matching(list(arrays), plot["columns"])
    if not names:
        return []
    first = np.asarray(arrays[names[0]], dtype=float)
    if not 0 <= image < first.shape[0]:
        raise ValueError(f"image must be in 0..{first.shape[0] - 1}, got {image}")
    values = first.ravel()
    dist = go.Figure(go.Histogram(x=values, nbinsx=60, marker_color=figures.BASE_COLOR))
    dist.update_xaxes(title_text=f"{names[0]} value (mean {values.mean():.3f}, max {values.max():.3f})")
    dist.update_yaxes(title_text="elements")
    dist = figures._layout(dist, f"{plot['title']}: distribution of {names[0]} over {first.shape[0]} images", height=340)
    maps = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.06)
    for i, name in enumerate(names, start=1):
        z = np.asarray(arrays[name], dtype=float)[image]
        maps.add_trace(go.Heatmap(z=z, colorscale="Viridis", showscale=False,
                                  hovertemplate=name + " row %{y} col %{x}<br>%{z:.4g}<extra></extra>"), row=1, col=i)
    maps.update_xaxes(title_text="dimension")
    maps.update_yaxes(title_text="class", row=1, col=1)
    maps = figures._layout(maps, f"{plot['title']}: image {image}", height=420)
    return [dist, maps]
