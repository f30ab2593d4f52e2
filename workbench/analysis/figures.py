"""Plotly figures shared by the Streamlit app and the notebooks.

Every builder takes plain arrays / DataFrames (what `Registry.history`, `RunHandle.load_predictions`
and `workbench.protocols.base.load_embeddings` return) and returns a `plotly.graph_objects.Figure`:

    history_figure(registry.history(run))                     learned scalars / loss per epoch
    similarity_histogram(image=..., classes=..., labels=...)  true-class vs other-class cosine
    similarity_histogram(logits=..., labels=...)              same from scores when no class embeddings
    embedding_scatter(coords, classnames=..., groups=...)     2-D projection (see analysis.embeddings)
    confusion_heatmap(labels, preds, classnames)              counts (or row %) with class names
    comparison_bar(ours_vs_paper(aggregate_runs(df), paper_rows("mmrl")))   ours vs the paper

Aggregation over seeds and the join with the papers' tables are in `workbench.analysis.compare`; the
statistic over seeds (mean, sample std, 95% CI) in `workbench.analysis.stats`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis.metrics import confusion_matrix

BASE_COLOR, NEW_COLOR = "#1f77b4", "#ff7f0e"
TRUE_COLOR, OTHER_COLOR = "#2ca02c", "#7f7f7f"
GROUP_COLORS = {"base": BASE_COLOR, "new": NEW_COLOR}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
HISTORY_SKIP = {"epoch", "hash", "step"}
# downloads from the modebar: PNG by default; `download_config(fmt="svg")` for SVG
DOWNLOAD_SCALE = 2


def many_colors(n: int) -> list[str]:
    """`n` distinguishable colours: plotly's Dark24 then Alphabet, Light24 (72), then evenly spaced hues."""
    from plotly.colors import qualitative as q

    base = list(dict.fromkeys(q.Dark24 + q.Alphabet + q.Light24))
    if n <= len(base):
        return base[:n] if n > len(PALETTE) else PALETTE[:n]
    import colorsys

    extra = [colorsys.hls_to_rgb((i * 0.618033988749895) % 1, 0.35 + 0.3 * (i % 3) / 2, 0.75) for i in range(n - len(base))]
    return base + ["#%02x%02x%02x" % tuple(int(255 * c) for c in rgb) for rgb in extra]


def download_config(name: str = "figure", fmt: str = "png") -> dict:
    """Plotly `config` for st.plotly_chart / fig.show: the modebar's camera button downloads `name`.`fmt`
    ("png" or "svg")."""
    return {"toImageButtonOptions": {"format": fmt, "filename": name, "scale": DOWNLOAD_SCALE},
            "displaylogo": False}


def overlay_history(histories: dict, column: str, *, title: str | None = None) -> go.Figure:
    """One line per run (`histories`: label -> history DataFrame) of history `column` against epoch;
    runs without the column are left out."""
    fig = go.Figure()
    colors = many_colors(max(len(histories), 1))
    for i, (label, history) in enumerate(histories.items()):
        if history is None or history.empty or column not in history.columns:
            continue
        data = history.sort_values("epoch")
        fig.add_trace(go.Scatter(x=data["epoch"].to_numpy(), y=pd.to_numeric(data[column], errors="coerce").to_numpy(),
                                 name=str(label), mode="lines+markers", line=dict(color=colors[i])))
    epochs = max((len(h) for h in histories.values() if h is not None), default=0)
    fig.update_xaxes(title_text="epoch", dtick=1 if epochs <= 20 else None)
    fig.update_yaxes(title_text=column)
    return _layout(fig, title if title is not None else column, height=360)


def _layout(fig: go.Figure, title: str | None, **kw) -> go.Figure:
    fig.update_layout(title=title, template="plotly_white", margin=dict(l=50, r=20, t=60 if title else 30, b=45),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0), **kw)
    return fig


# ------------------------------------------------------------------------------------------------
# training history
# ------------------------------------------------------------------------------------------------
def numeric_history_columns(history: pd.DataFrame) -> list[str]:
    """Columns of a history DataFrame worth plotting: every numeric one except epoch (loss, train_acc, lr,
    learned scalars such as MMRL's alpha/lambda...), in their order, skipping all-NaN columns."""
    cols = []
    for col in history.columns:
        if col in HISTORY_SKIP:
            continue
        values = pd.to_numeric(history[col], errors="coerce")
        if pd.api.types.is_bool_dtype(history[col]) or values.notna().sum() == 0:
            continue
        if history[col].notna().sum() and values.notna().sum() < history[col].notna().sum():
            continue  # some non-numeric entries: not a scalar series
        cols.append(col)
    return cols


def history_figure(history: pd.DataFrame, columns: Sequence[str] | None = None, *, separate: bool = True,
                   title: str | None = "Training history") -> go.Figure:
    """One line per history column against epoch. `separate=True` gives each column its own panel (its
    own y scale: loss, accuracy and learning rate differ by orders of magnitude); False overlays them."""
    if "epoch" not in history.columns:
        raise ValueError("history has no 'epoch' column")
    columns = list(columns) if columns is not None else numeric_history_columns(history)
    missing = [c for c in columns if c not in history.columns]
    if missing:
        raise KeyError(f"history has no column(s) {missing}; columns: {list(history.columns)}")
    data = history.sort_values("epoch")
    epochs = data["epoch"].to_numpy()
    if separate and len(columns) > 1:
        fig = make_subplots(rows=len(columns), cols=1, shared_xaxes=True, subplot_titles=columns,
                            vertical_spacing=min(0.08, 0.5 / len(columns)))
        for i, col in enumerate(columns, start=1):
            fig.add_trace(go.Scatter(x=epochs, y=pd.to_numeric(data[col], errors="coerce").to_numpy(), name=col,
                                     mode="lines+markers", line=dict(color=PALETTE[(i - 1) % len(PALETTE)])),
                          row=i, col=1)
        fig.update_xaxes(title_text="epoch", row=len(columns), col=1)
        if len(epochs) <= 20:
            fig.update_xaxes(dtick=1)
        _layout(fig, title, height=max(300, 190 * len(columns)), showlegend=False)
        return fig
    fig = go.Figure()
    for i, col in enumerate(columns):
        fig.add_trace(go.Scatter(x=epochs, y=pd.to_numeric(data[col], errors="coerce").to_numpy(), name=col,
                                 mode="lines+markers", line=dict(color=PALETTE[i % len(PALETTE)])))
    fig.update_xaxes(title_text="epoch", dtick=1 if len(epochs) <= 20 else None)
    fig.update_yaxes(title_text="value" if len(columns) != 1 else columns[0])
    return _layout(fig, title, height=420)


# ------------------------------------------------------------------------------------------------
# similarities
# ------------------------------------------------------------------------------------------------
def _normalize(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _true_other(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, c = scores.shape
    labels = np.asarray(labels, dtype=np.int64)[:n]
    if len(labels) != n:
        raise ValueError(f"{n} rows of scores but {len(labels)} labels")
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must lie in [0, {c}); got {labels.min()}..{labels.max()}")
    mask = np.zeros((n, c), dtype=bool)
    mask[np.arange(n), labels] = True
    return scores[mask], scores[~mask]


def class_cosines(image, classes, labels) -> tuple[np.ndarray, np.ndarray]:
    """(true, other): cos(image_i, class_{y_i}) per image, and cos(image_i, class_j) for every j != y_i
    (row-major). Labels beyond the stored images (embeddings are capped) are ignored."""
    sims = _normalize(image) @ _normalize(classes).T
    return _true_other(sims, np.asarray(labels)[: len(sims)])


def similarity_histogram(image=None, classes=None, labels=None, *, logits=None, nbins: int = 40,
                         title: str | None = None) -> go.Figure:
    """Overlaid histograms (each normalised to a density) of the true-class vs the other-class similarity.

    With `image` [n, D] and `classes` [C, D]: cosine similarities. Without class embeddings (methods that
    do not classify by text embeddings), pass `logits` [n, C]: the histogram is of scores and says so.
    """
    if labels is None:
        raise ValueError("labels are required")
    if image is not None and classes is not None:
        true, other = class_cosines(image, classes, labels)
        xlabel, kind = "cosine similarity (image, class embedding)", "cosine"
    elif logits is not None:
        true, other = _true_other(np.asarray(logits, dtype=np.float64), np.asarray(labels))
        xlabel, kind = "score (logit) — no class embeddings stored", "score"
    else:
        raise ValueError("pass image and classes embeddings, or logits")
    fig = go.Figure()
    names = ("true class", "other classes") if kind == "cosine" else ("true-class score", "other-class scores")
    lo = float(min(true.min(initial=np.inf), other.min(initial=np.inf)))
    hi = float(max(true.max(initial=-np.inf), other.max(initial=-np.inf)))
    bins = None if not np.isfinite([lo, hi]).all() or hi <= lo else dict(start=lo, end=hi, size=(hi - lo) / nbins)
    for values, name, color in ((true, names[0], TRUE_COLOR), (other, names[1], OTHER_COLOR)):
        fig.add_trace(go.Histogram(x=values, name=f"{name} (n={len(values)})", marker_color=color, opacity=0.6,
                                   histnorm="probability density", xbins=bins))
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text=xlabel)
    fig.update_yaxes(title_text="density")
    if title is None:
        title = "True-class vs other-class " + ("cosine similarity" if kind == "cosine" else "scores")
    fig.update_layout(meta={"kind": kind})
    return _layout(fig, title, height=380)


# ------------------------------------------------------------------------------------------------
# embeddings
# ------------------------------------------------------------------------------------------------
def embedding_scatter(coords, *, classnames: Sequence[str] | None = None, groups: Sequence[str] | None = None,
                      color_by: str | None = None, title: str | None = None) -> go.Figure:
    """2-D scatter of projected embeddings (one trace per colour group, so the legend toggles them).

    color_by: "group" (e.g. base vs new classes; marker symbol by class is not used) or "class";
    default "group" when groups has more than one value, else "class". Hover shows class and group.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be [n, 2], got {coords.shape}")
    n = len(coords)
    classnames = np.asarray(classnames if classnames is not None else [""] * n, dtype=object)
    groups = np.asarray(groups if groups is not None else [""] * n, dtype=object)
    if len(classnames) != n or len(groups) != n:
        raise ValueError("classnames / groups must have one entry per point")
    if color_by is None:
        color_by = "group" if len(set(groups.tolist())) > 1 else "class"
    if color_by not in ("group", "class"):
        raise ValueError("color_by must be 'group' or 'class'")
    keys = groups if color_by == "group" else classnames
    fig = go.Figure()
    names = list(dict.fromkeys(keys.tolist()))
    colors = many_colors(len(names))  # one distinct colour per class (48 toy classes: 48 colours)
    for i, key in enumerate(names):
        sel = keys == key
        color = GROUP_COLORS.get(str(key)) if color_by == "group" else None
        label = f"{key} classes" if color_by == "group" and key in GROUP_COLORS else str(key)
        hover = [f"class: {c}<br>split: {g}" for c, g in zip(classnames[sel], groups[sel])]
        fig.add_trace(go.Scatter(x=coords[sel, 0], y=coords[sel, 1], mode="markers", name=label, text=hover,
                                 hoverinfo="text", marker=dict(size=7, opacity=0.8, color=color or colors[i])))
    fig.update_xaxes(showticklabels=False, title_text="")
    fig.update_yaxes(showticklabels=False, title_text="")
    fig = _layout(fig, title, height=480 if len(names) <= 12 else 620)
    if len(names) > 12:  # many classes: a vertical, scrollable legend beside the plot (click to toggle)
        fig.update_layout(legend=dict(orientation="v", x=1.02, y=1, xanchor="left", yanchor="top",
                                      font=dict(size=10)), margin=dict(r=160))
    if len(names) > 200:  # hundreds of classes: hover still names them
        fig.update_layout(showlegend=False)
    return fig


# ------------------------------------------------------------------------------------------------
# confusion
# ------------------------------------------------------------------------------------------------
def confusion_heatmap(labels, preds, classnames: Sequence[str] | None = None, *, normalize: bool = False,
                      title: str | None = "Confusion matrix") -> go.Figure:
    """Heatmap of `confusion_matrix(labels, preds)`: rows true class, columns predicted class.

    z holds counts, or with `normalize=True` each row in percent of that class's images; the cell text
    is always the count.
    """
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    num = max(len(classnames) if classnames is not None else 0,
              int(labels.max(initial=-1)) + 1, int(preds.max(initial=-1)) + 1)
    matrix = confusion_matrix(labels, preds, num)
    names = [str(c) for c in classnames] if classnames is not None else []
    names += [f"class {i}" for i in range(len(names), num)]
    if normalize:
        totals = matrix.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(totals > 0, 100.0 * matrix / np.maximum(totals, 1), np.nan)
        colorbar = "% of true class"
    else:
        z = matrix
        colorbar = "images"
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, text=matrix, texttemplate="%{text}", colorscale="Blues",
                               colorbar=dict(title=colorbar),
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{text} images<extra></extra>"))
    fig.update_xaxes(title_text="predicted class", tickangle=-30, type="category")
    fig.update_yaxes(title_text="true class", autorange="reversed", type="category")
    side = max(360, min(900, 60 + 38 * num))
    return _layout(fig, title, height=side)


def matching_heatmap(scores, labels, classnames: Sequence[str], *, per_class: int = 1,
                     title: str | None = "Image–text matching") -> go.Figure:
    """Class × image heatmap of `scores` [n, C] (similarities or logits) for the first `per_class` images
    of each class, images ordered by class: a good matcher lights up the diagonal (e.g. DAM's Fig. 4)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    picked = [i for c in range(len(classnames)) for i in np.flatnonzero(labels == c)[:per_class]]
    columns = [f"{classnames[labels[i]]} #{k}" for k, i in enumerate(picked)]
    fig = go.Figure(go.Heatmap(z=scores[picked].T, x=columns, y=[str(c) for c in classnames], colorscale="Viridis",
                               hovertemplate="image %{x}<br>class %{y}<br>%{z:.3f}<extra></extra>"))
    fig.update_xaxes(title_text="image (true class)", tickangle=-40, type="category")
    fig.update_yaxes(title_text="class text", autorange="reversed", type="category")
    return _layout(fig, title, height=max(360, min(900, 60 + 30 * len(classnames))))


# ------------------------------------------------------------------------------------------------
# ours vs the papers
# ------------------------------------------------------------------------------------------------
def comparison_bar(table: pd.DataFrame, metric: str | Sequence[str] | None = None, *,
                   title: str | None = "Ours vs paper") -> go.Figure:
    """Grouped bars, ours (mean over seeds, error bars = 95% CI, none for one seed; hover: mean ± std, n,
    CI) beside the paper, from a `workbench.analysis.compare.ours_vs_paper` table (the aggregation, the
    statistic (`workbench.analysis.stats`) and the join live there)."""
    from workbench.analysis.compare import comparison_figure

    return comparison_figure(table, metric, title=title)


# ------------------------------------------------------------------------------------------------
# ours over seeds (no paper needed)
# ------------------------------------------------------------------------------------------------
def seeds_figure(ours: pd.DataFrame, *, label: str = "method", title: str | None = "Ours over seeds") -> go.Figure:
    """Bars of the mean over seeds (error bars: 95% CI, only where n ≥ 2) with every seed's value as a
    dot, one panel per dataset (rows) and metric (columns), from an `aggregate_runs` frame; `label`: the
    column naming the bars (e.g. a configuration label). The y axis is zoomed to the values."""
    from workbench.analysis.compare import METRIC_ORDER

    if ours.empty:
        return _layout(go.Figure(), title, height=300)
    datasets = list(dict.fromkeys(ours["dataset"]))
    metrics = [m for m in METRIC_ORDER if m in set(ours["metric"])] + \
        [m for m in dict.fromkeys(ours["metric"]) if m not in METRIC_ORDER]
    fig = make_subplots(rows=len(datasets), cols=len(metrics), shared_yaxes=True,
                        subplot_titles=[f"{d} · {m}" for d in datasets for m in metrics],
                        vertical_spacing=min(0.15, 0.6 / max(len(datasets), 1)))
    colors = {k: c for k, c in zip(dict.fromkeys(ours[label]), many_colors(ours[label].nunique()))}
    legend: set = set()
    for i, d in enumerate(datasets, start=1):
        for j, m in enumerate(metrics, start=1):
            cell = ours[(ours["dataset"] == d) & (ours["metric"] == m)]
            for _, r in cell.iterrows():
                name = str(r[label])
                ci = r.get("ci95")
                bars = dict(type="data", array=[float(ci)]) if int(r["n"]) >= 2 and pd.notna(ci) else None
                fig.add_trace(go.Bar(x=[name], y=[r["mean"]], name=name, legendgroup=name, showlegend=name not in legend,
                                     marker_color=colors[r[label]], error_y=bars, opacity=0.75,
                                     hovertemplate=f"{name}<br>mean %{{y:.2f}}, n={int(r['n'])}<extra></extra>"),
                              row=i, col=j)
                legend.add(name)
                values = list(r.get("values") or ())
                if values:
                    fig.add_trace(go.Scatter(x=[name] * len(values), y=values, mode="markers", showlegend=False,
                                             legendgroup=name, marker=dict(color="#222222", size=6),
                                             text=[f"seed {s}" for s in str(r.get("seeds", "")).split(",")],
                                             hovertemplate="%{text}: %{y:.2f}<extra></extra>"), row=i, col=j)
    fig.update_xaxes(showticklabels=False)
    lo_hi = pd.concat([ours["mean"] - ours["ci95"].fillna(0), ours["mean"] + ours["ci95"].fillna(0)]
                      + [pd.Series(list(v)) for v in ours["values"] if len(v)]).dropna()
    if len(lo_hi) and lo_hi.min() > 0.5 * lo_hi.max():  # zoom so that 1-3 point differences show
        pad = max(1.0, 0.25 * float(lo_hi.max() - lo_hi.min()))
        fig.update_yaxes(range=[max(0.0, float(lo_hi.min()) - pad), float(lo_hi.max()) + pad])
    fig.update_yaxes(title_text="accuracy (%)", col=1)
    fig = _layout(fig, title, height=max(340, 300 * len(datasets)), barmode="group")
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.05, xanchor="left", x=0,
                                  title_text="bars: mean · dots: seeds · error bars: 95% CI (n ≥ 2)"))
    return fig


def paper_difference(table: pd.DataFrame, *, title: str | None = "Ours − paper") -> go.Figure:
    """Ours − the paper's value per dataset (bars grouped by method, one panel per metric) from an
    `ours_vs_paper` table; error bars: the 95% CI of our mean (the paper's value is a constant), none for
    one seed. Rows without a paper value are left out."""
    from workbench.analysis.compare import METRIC_ORDER, error_bars

    data = table.dropna(subset=["ours", "paper"])
    if data.empty:
        return _layout(go.Figure(), title, height=300)
    metrics = [m for m in METRIC_ORDER if m in set(data["metric"])] + \
        [m for m in dict.fromkeys(data["metric"]) if m not in METRIC_ORDER]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics, shared_yaxes=True)
    methods = list(dict.fromkeys(data["method"]))
    colors = dict(zip(methods, many_colors(len(methods))))
    for j, m in enumerate(metrics, start=1):
        for method in methods:
            cell = data[(data["metric"] == m) & (data["method"] == method)]
            if cell.empty:
                continue
            bars = error_bars(cell)
            fig.add_trace(go.Bar(
                x=cell["dataset"], y=cell["diff"], name=method, legendgroup=method, showlegend=j == 1,
                marker_color=colors[method],
                error_y=dict(type="data", array=bars) if any(b is not None for b in bars) else None,
                customdata=np.stack([cell["ours"], cell["paper"]], axis=-1),
                hovertemplate=f"{method} · %{{x}}<br>ours %{{customdata[0]:.2f}} − paper %{{customdata[1]:.2f}}"
                              " = %{y:+.2f}<extra></extra>"), row=1, col=j)
    fig.add_hline(y=0, line=dict(color="#444444", width=1))
    fig.update_yaxes(title_text="ours − paper (points)", col=1)
    return _layout(fig, title, height=380, barmode="group")
