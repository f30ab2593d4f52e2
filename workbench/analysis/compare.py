"""Our numbers beside the papers': aggregation over seeds, the join with the transcribed tables, a figure.

    runs = registry.list(hash=hashes)                       # Registry.list() rows
    ours = aggregate_runs(runs, ["base", "new", "hm"])      # mean/std/ci95/n/values over seeds
    paper = paper_rows("mmrl", "Table 1")                   # transcribed cells (data_manifests)
    table = ours_vs_paper(ours, paper)                      # ours, paper, diff = ours - paper
    comparison_figure(table)                                # grouped bars, ours vs paper

The statistic over seeds is `workbench.analysis.stats`' (mean, sample std, 95% CI, n, per-seed values).
Method names differ between the workbench (registry keys: ``coop``) and the papers (``CoOp``): each
method class declares its `paper_names`. The metric columns a protocol writes come from its
`ProtocolInfo` (`workbench.protocols.PROTOCOLS`). Toy datasets (and anything else a paper does not
print) have no paper value: ``paper`` and ``diff`` are NaN and ``note`` says why.
"""
from __future__ import annotations

import functools
import json
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from workbench.analysis.stats import NO_VALUE, SeedSummary, format_ci, format_summary, seed_summary

METRIC_ORDER = ("base", "new", "hm", "top1")
# what makes two runs "the same experiment but for the seed" (columns of Registry.list())
GROUP_COLUMNS = ["protocol", "method", "dataset", "shots", "backbone", "pretrained", "preset", "method_config",
                 "train_config", "protocol_settings", "versions"]
AGG_COLUMNS = GROUP_COLUMNS + ["metric", "mean", "std", "ci95", "n", "seeds", "values", "runs"]
TABLE_COLUMNS = ["protocol", "method", "paper_method", "dataset", "shots", "metric", "ours", "ours_std",
                 "ours_ci95", "n", "seeds", "ours_values", "paper", "diff", "note", "paper_table"]
NO_PAPER_TOY = "toy dataset: no paper value"


@functools.lru_cache(maxsize=1)
def paper_method_names() -> dict[str, tuple[str, ...]]:
    """workbench method key -> the names the transcribed papers use (first = the usual one), from each
    method class's own `paper_names` (the key itself when a class declares none)."""
    from workbench.methods import get_method_class, list_methods

    out = {}
    for key in list_methods():
        names = tuple(vars(get_method_class(key)).get("paper_names") or ())  # not inherited from a parent
        out[key] = names or (key,)
    return out


@functools.lru_cache(maxsize=1)
def _paper_to_method() -> dict[str, str]:
    return {p: m for m, names in paper_method_names().items() for p in names}


def __getattr__(name: str):  # the former constant tables, now read from the method classes
    if name == "PAPER_METHOD_NAMES":
        return paper_method_names()
    if name == "PAPER_TO_METHOD":
        return _paper_to_method()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def paper_method_name(method: str) -> str:
    """The paper's usual name for a workbench method key (the key itself when unmapped)."""
    return paper_method_names().get(method, (method,))[0]


def method_key(paper_name: str) -> str | None:
    """The workbench key for a paper's method name (None when the workbench has no counterpart)."""
    return _paper_to_method().get(paper_name)


@functools.lru_cache(maxsize=None)
def _protocol(name: str):
    """The protocol's `ProtocolInfo` (None when not registered)."""
    from workbench.protocols import PROTOCOLS

    return PROTOCOLS.get(name)


def protocol_metric_columns(protocol: str, datasets: Sequence[str]) -> list[str]:
    """The metric columns a run of `protocol` over `datasets` writes: the protocol's `metrics`, plus one
    top-1 column per dataset when it declares `per_dataset_metrics` (the datasets first). Unregistered
    protocols: the datasets, then "average"."""
    info = _protocol(protocol)
    if info is None:
        return list(datasets) + ["average"]
    return (list(datasets) if info.per_dataset_metrics else []) + list(info.metrics)


def _averaged_over_datasets(protocol: str) -> bool:
    """Protocols whose per-dataset results `add_average` averages (not those that average themselves)."""
    info = _protocol(protocol)
    return info is not None and not info.per_dataset_metrics


def is_toy_dataset(name: str) -> bool:
    """True for the embedded toy world's datasets (no paper ever reports them)."""
    try:
        from workbench.data import load_manifest

        return bool(load_manifest(name).is_toy)
    except Exception:  # unknown name: go by the naming convention
        return str(name).startswith("toy_")


# ------------------------------------------------------------------------------------------------
# aggregation over seeds
# ------------------------------------------------------------------------------------------------
def _group_value(row: pd.Series, col: str):
    """A run's value of grouping column `col`, hashable: dicts/lists as sorted JSON, "" for a missing
    pretrained tag, "{}" for a missing config."""
    value = row.get(col)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "" if col == "pretrained" else "{}" if col.endswith(("config", "settings", "versions")) else value
    return value


def _long_metrics(df: pd.DataFrame, metrics: Sequence[str] | None) -> pd.DataFrame:
    """One row per (run, dataset, metric).

    A metric column named after one of the run's datasets (source or target), or "average" of a
    transfer run, is the top-1 accuracy on that dataset (cross-dataset / domain generalization); any
    other metric column is a metric of the source dataset (base/new/hm, top1).
    """
    records = []
    for _, row in df.iterrows():
        datasets = str(row["datasets"]).split(",")
        if metrics is None:
            cols = [c for c in protocol_metric_columns(row["protocol"], datasets) if c in df.columns]
        else:
            cols = list(metrics)
        group = {c: _group_value(row, c) for c in GROUP_COLUMNS if c != "dataset"}
        for col in cols:
            if col not in df.columns:
                raise KeyError(f"no metric column {col!r}; run columns: {list(df.columns)}")
            value = row[col]
            if value is None or isinstance(value, (bool, str)) or pd.isna(value):
                continue
            if col in datasets or (col == "average" and len(datasets) > 1):
                dataset, metric = col, "top1"
            else:
                dataset, metric = row["source"], col
            records.append({**group, "dataset": dataset, "metric": metric, "value": float(value),
                            "seed": row["seed"], "run": row["short_hash"]})
    return pd.DataFrame.from_records(records, columns=GROUP_COLUMNS + ["metric", "value", "seed", "run"])


def aggregate_runs(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The statistic over seeds (`workbench.analysis.stats.seed_summary`) of the finished runs in `df`
    (a `Registry.list()` frame).

    Only runs with status "done" count. Runs are grouped by `GROUP_COLUMNS` (method x dataset x shots x
    protocol, and backbone, pretrained tag and configuration, so differently configured runs are never
    averaged together). `metrics`: the metric columns to aggregate (e.g. ``["base", "new", "hm"]``);
    None = the protocol's own (its `ProtocolInfo.metrics`, plus one column per dataset for protocols
    with `per_dataset_metrics`). A metric column named after a dataset of the run becomes metric "top1"
    of that dataset.

    Returns a long frame with columns `AGG_COLUMNS`: ..., metric, mean, std (sample std, ddof=1; NaN
    for a single seed), ci95 (half-width of the 95% Student-t CI; NaN for a single seed), n (seeds),
    seeds ("1,2,3"), values (the per-seed values, a tuple in seed order) and runs (short hashes, same order).
    """
    if df is None or df.empty:
        return pd.DataFrame(columns=AGG_COLUMNS)
    if "status" in df.columns:
        df = df[df["status"] == "done"]
    long = _long_metrics(df, metrics)
    if long.empty:
        return pd.DataFrame(columns=AGG_COLUMNS)
    long["shots"] = pd.to_numeric(long["shots"], errors="coerce").fillna(-1).astype(int)  # groupby drops NaN
    long = long.sort_values("seed", kind="stable")  # seeds, values and runs listed in seed order
    rows = []
    for key, grp in long.groupby(GROUP_COLUMNS + ["metric"], sort=False, dropna=False):
        s = seed_summary(grp["value"])
        rows.append({**dict(zip(GROUP_COLUMNS + ["metric"], key)), "mean": s.mean, "std": s.std,
                     "ci95": s.ci95, "n": s.n, "seeds": ",".join(str(int(v)) for v in grp["seed"]),
                     "values": s.values, "runs": ",".join(grp["run"])})
    out = pd.DataFrame.from_records(rows, columns=AGG_COLUMNS)
    out["shots"] = out["shots"].astype("Int64").where(out["shots"] >= 0)
    out["_m"] = out["metric"].map({m: i for i, m in enumerate(METRIC_ORDER)}).fillna(len(METRIC_ORDER))
    out = out.sort_values(["protocol", "method", "dataset", "shots", "_m"], kind="stable")
    out["n"] = out["n"].astype(int)
    return out.drop(columns="_m").reset_index(drop=True)[AGG_COLUMNS]


def add_average(ours: pd.DataFrame, name: str = "average") -> pd.DataFrame:
    """Append, per method x shots x protocol x metric, the mean over datasets (as dataset `name`), the way
    the papers' "Average" columns are computed: base/new/top1 are means of the per-dataset means; hm is
    the harmonic mean of the average base and average new. Only added where there are 2+ datasets, and
    only for base-to-novel / few-shot (transfer runs report their own average over the targets)."""
    if ours.empty:
        return ours
    keys = [c for c in GROUP_COLUMNS if c != "dataset"]
    rows = []
    averaged = [p for p in ours["protocol"].unique() if _averaged_over_datasets(p)]
    per_dataset = ours[(ours["dataset"] != name) & ours["protocol"].isin(averaged)]
    for key, grp in per_dataset.groupby(keys, sort=False, dropna=False):
        datasets = grp["dataset"].unique()
        if len(datasets) < 2:
            continue
        base = dict(zip(keys, key))
        means = {}
        for metric, g in grp.groupby("metric", sort=False):
            if g["dataset"].nunique() != len(datasets):
                continue  # a metric missing for some dataset: no fair average
            means[metric] = float(g["mean"].mean())
        if "hm" in means and "base" in means and "new" in means:
            b, n = means["base"], means["new"]
            means["hm"] = 0.0 if b + n == 0 else 2 * b * n / (b + n)
        for metric, value in means.items():
            rows.append({**base, "dataset": name, "metric": metric, "mean": value, "std": np.nan,
                         "ci95": np.nan, "n": int(grp[grp["metric"] == metric]["n"].min()),
                         "seeds": "", "values": (), "runs": f"mean over {len(datasets)} datasets"})
    if not rows:
        return ours
    out = pd.concat([ours, pd.DataFrame.from_records(rows, columns=ours.columns)], ignore_index=True)
    out["shots"] = out["shots"].astype("Int64")
    return out


# ------------------------------------------------------------------------------------------------
# the join with the paper
# ------------------------------------------------------------------------------------------------
def paper_rows(paper: str = "mmrl", tables: str | Iterable[str] | None = None,
               protocol: str | None = None) -> pd.DataFrame:
    """Transcribed cells of `paper` (see `workbench.data.paper_results`), optionally only `tables`
    ("Table 1", or a list: ["Table 10", "Table 11"]) and one `protocol`."""
    from workbench.data.paper_results import load_paper_results

    df = load_paper_results(paper)
    if tables is not None:
        names = [tables] if isinstance(tables, str) else list(tables)
        names = [t if str(t).lower().startswith("table") else f"Table {t}" for t in names]
        df = df[df["table"].isin(names)]
    if protocol is not None:
        df = df[df["protocol"] == protocol]
    return df.reset_index(drop=True)


def _paper_lookup(paper: pd.DataFrame) -> dict:
    """(method key, dataset, metric) -> list of (shots, value, table, note)."""
    lookup: dict = {}
    for _, r in paper.iterrows():
        key = method_key(r["method"])
        if key is None:
            continue
        shots = None if pd.isna(r["shots"]) else int(r["shots"])
        lookup.setdefault((key, r["dataset"], r["metric"]), []).append(
            (shots, float(r["value"]), r["table"], r["method"], r["setting"]))
    for cells in lookup.values():  # cells of the main rows (empty setting) first
        cells.sort(key=lambda c: c[4] not in ("", None))
    return lookup


def ours_vs_paper(ours: pd.DataFrame, paper: pd.DataFrame, *, average: bool = True,
                  paper_only: bool = False, setting: str | None = None) -> pd.DataFrame:
    """Our aggregated numbers (`aggregate_runs`) joined with the paper's cells (`paper_rows`).

    Rows are matched on method (via the methods' `paper_names`), dataset, metric and shots; zero-shot rows
    (the paper's `CLIP`, printed with 0 shots) match whatever shot count our zero-shot run used, and a
    paper cell with no stated shot count matches any. When several cells match, a main-row cell (empty
    `setting`) wins, else the first printed one; `setting` as a string keeps only the paper rows of that
    setting (e.g. "source ImageNet").

    average: also compare the mean over our datasets with the paper's "average" column (the paper value
    is only filled in when we ran every dataset the paper averages; otherwise it is NaN with a note).
    paper_only: also list paper cells of mapped methods we did not run (ours NaN).

    Columns `TABLE_COLUMNS`: ours (mean over seeds), ours_std (sample std), ours_ci95 (95% CI
    half-width), n, seeds, ours_values (per-seed values), paper, diff = ours − paper, note (why a value
    is missing), paper_table.
    """
    if setting is not None:
        paper = paper[paper["setting"].fillna("") == setting]
    lookup = _paper_lookup(paper)
    if average:
        ours = add_average(ours)
    rows = []
    for _, r in ours.iterrows():
        shots = None if pd.isna(r["shots"]) else int(r["shots"])
        cells = lookup.get((r["method"], r["dataset"], r["metric"]), [])
        if r["method"] == "zeroshot":
            match = cells
        else:
            match = [c for c in cells if c[0] is None or c[0] == shots]
        note, value, table, pname = "", np.nan, "", paper_method_name(r["method"])
        if match:
            _, value, table, pname, _ = match[0]
        if r["dataset"] == "average" and match:
            same = ((ours["method"] == r["method"]) & (ours["metric"] == r["metric"])
                    & (ours["protocol"] == r["protocol"]) & (ours["dataset"] != "average"))
            if r["method"] != "zeroshot":
                same &= ours["shots"].fillna(-1) == (-1 if shots is None else shots)
            ours_sets = set(ours[same]["dataset"])
            paper_sets = {d for (m, d, met), cs in lookup.items()
                          if m == r["method"] and met == r["metric"] and d != "average"
                          and any(r["method"] == "zeroshot" or c[0] is None or c[0] == shots for c in cs)}
            if not paper_sets <= ours_sets:
                note = (f"paper average is over {len(paper_sets)} datasets; ours over {len(ours_sets)} "
                        f"({', '.join(sorted(ours_sets))})")
                value, table = np.nan, ""
        elif not match:
            if is_toy_dataset(r["dataset"]):
                note = NO_PAPER_TOY
            elif not cells and not any(k[0] == r["method"] for k in lookup):
                note = f"{pname} is not in this paper table"
            elif cells:
                note = f"paper has no {shots}-shot value"
            else:
                note = "no paper value for this dataset/metric"
        rows.append({"protocol": r["protocol"], "method": r["method"], "paper_method": pname,
                     "dataset": r["dataset"], "shots": shots, "metric": r["metric"], "ours": r["mean"],
                     "ours_std": r["std"], "ours_ci95": r.get("ci95", np.nan), "n": r["n"],
                     "seeds": r.get("seeds", ""), "ours_values": tuple(r.get("values", ()) or ()),
                     "paper": value, "note": note, "paper_table": table})
    if paper_only:
        have = {(row["method"], row["dataset"], row["metric"], row["shots"]) for row in rows}
        protocol = ours["protocol"].iloc[0] if len(ours) and ours["protocol"].nunique() == 1 else ""
        for (m, d, met), cells in lookup.items():
            for shots, value, table, pname, _ in cells:
                if m == "zeroshot" and any(h[0] == m and h[1] == d and h[2] == met for h in have):
                    continue
                if (m, d, met, shots) in have:
                    continue
                rows.append({"protocol": protocol, "method": m, "paper_method": pname, "dataset": d,
                             "shots": shots, "metric": met, "ours": np.nan, "ours_std": np.nan,
                             "ours_ci95": np.nan, "n": 0, "seeds": "", "ours_values": (),
                             "paper": value, "note": "not run", "paper_table": table})
    out = pd.DataFrame.from_records(rows, columns=[c for c in TABLE_COLUMNS if c != "diff"])
    out["ours"] = pd.to_numeric(out["ours"], errors="coerce").astype(float)
    out["ours_std"] = pd.to_numeric(out["ours_std"], errors="coerce").astype(float)
    out["ours_ci95"] = pd.to_numeric(out["ours_ci95"], errors="coerce").astype(float)
    out["paper"] = pd.to_numeric(out["paper"], errors="coerce").astype(float)
    out["shots"] = pd.array([None if pd.isna(s) else int(s) for s in out["shots"]], dtype="Int64")
    out["n"] = out["n"].astype(int)
    out["diff"] = out["ours"] - out["paper"]
    return out[TABLE_COLUMNS]


def table_summary(row, prefix: str = "ours") -> SeedSummary:
    """The `SeedSummary` of one `ours_vs_paper` row (`prefix` "ours") or `aggregate_runs` row ("")."""
    col = (lambda k: f"{prefix}_{k}") if prefix else (lambda k: k)
    mean = row[prefix] if prefix else row["mean"]
    values = row.get(col("values"), ())
    return SeedSummary(float(mean), float(row[col("std")]), float(row.get(col("ci95"), np.nan)),
                       int(row["n"]), tuple(values) if isinstance(values, (tuple, list)) else ())


def wide_table(table: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """`ours_vs_paper` as one row per method x shots x dataset and, per metric, the columns
    "<metric> ours" (`format_summary`: mean ± sample std), "<metric> 95% CI", "<metric> paper" and
    "<metric> Δ" as display strings ("—" = none)."""
    def fmt(v, signed=False):
        if pd.isna(v):
            return NO_VALUE
        return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"

    rows = {}
    metrics = [m for m in METRIC_ORDER if m in set(table["metric"])] + \
        [m for m in dict.fromkeys(table["metric"]) if m not in METRIC_ORDER]
    for _, r in table.iterrows():
        key = (r["method"], "" if pd.isna(r["shots"]) else int(r["shots"]), r["dataset"])
        row = rows.setdefault(key, {"method": r["method"], "shots": key[1], "dataset": r["dataset"]})
        summary = table_summary(r)
        row[f"{r['metric']} ours"] = format_summary(summary, digits)
        row[f"{r['metric']} 95% CI"] = format_ci(summary, digits)
        row[f"{r['metric']} paper"] = fmt(r["paper"])
        row[f"{r['metric']} Δ"] = fmt(r["diff"], signed=True)
        if r["note"]:
            row["note"] = r["note"]
    cols = ["method", "shots", "dataset"] + [f"{m} {k}" for m in metrics
                                             for k in ("ours", "95% CI", "paper", "Δ")] + ["note"]
    out = pd.DataFrame(list(rows.values()))
    for c in cols:
        if c not in out.columns:
            out[c] = ""
    return out[cols].fillna("")


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------
OURS_COLOR, PAPER_COLOR = "#1f77b4", "#ff7f0e"
ERROR_BARS = "error bars: 95% CI over seeds (none for one seed)"


def error_bars(table: pd.DataFrame) -> list:
    """Error-bar half-widths of `ours` rows: the 95% CI (`ours_ci95`); None (no bar) below 2 seeds."""
    ci = table["ours_ci95"] if "ours_ci95" in table.columns else pd.Series(np.nan, index=table.index)
    return [None if pd.isna(c) or n < 2 else float(c) for c, n in zip(ci, table["n"])]


def _hover_text(table: pd.DataFrame) -> list[str]:
    out = []
    for _, r in table.iterrows():
        s = table_summary(r)
        ci = format_ci(s)
        out.append(f"{format_summary(s)}, n={s.n}" + ("" if ci == NO_VALUE else f", 95% CI {ci}"))
    return out


def comparison_figure(table: pd.DataFrame, metric: str | Sequence[str] | None = None, *,
                      title: str | None = "Ours vs paper"):
    """Grouped bars per method: ours (mean, error bar = 95% CI over seeds) beside the paper's value, one
    panel per dataset (columns) and per metric / shot count (rows). Missing paper values (toy datasets)
    leave the bar out and are listed in the panel title ("no paper value")."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    data = table
    if metric is not None:
        data = data[data["metric"].isin([metric] if isinstance(metric, str) else list(metric))]
    data = data.dropna(subset=["ours"]) if data["ours"].notna().any() else data
    if data.empty:
        fig = go.Figure()
        fig.update_layout(title=title, template="plotly_white", height=300)
        return fig
    datasets = list(dict.fromkeys(data["dataset"]))
    shot_values = sorted({int(s) for s in data["shots"].dropna()})
    if len(shot_values) > 1:  # shot-independent rows (zero-shot) appear in every shot count's panel
        flat = data[data["shots"].isna()]
        data = pd.concat([data[data["shots"].notna()]] + [flat.assign(shots=k) for k in shot_values],
                         ignore_index=True)
        data["_k"] = data["shots"].astype(int)
        data = data.sort_values(["_k"], kind="stable").drop(columns="_k")
    data = data.assign(_row=[f"{m}" if len(shot_values) <= 1 else f"{m}, {int(s)} shots"
                             for m, s in zip(data["metric"], data["shots"])])
    rows_keys = list(dict.fromkeys(data["_row"]))
    titles = []
    for rk in rows_keys:
        for d in datasets:
            cell = data[(data["_row"] == rk) & (data["dataset"] == d)]
            missing = cell["paper"].isna().all() and len(cell) > 0
            titles.append(f"{d} · {rk}" + (" (no paper value)" if missing else ""))
    fig = make_subplots(rows=len(rows_keys), cols=len(datasets), subplot_titles=titles, shared_yaxes=True,
                        vertical_spacing=min(0.12, 0.6 / max(len(rows_keys), 1)),
                        horizontal_spacing=min(0.06, 0.3 / max(len(datasets), 1)))
    shown: set = set()  # legend entries already drawn (one per series, only for series with bars)
    for i, rk in enumerate(rows_keys, start=1):
        for j, d in enumerate(datasets, start=1):
            cell = data[(data["_row"] == rk) & (data["dataset"] == d)]
            if cell.empty:
                continue
            bars = error_bars(cell)
            error_y = (dict(type="data", array=bars, visible=True)
                       if any(b is not None for b in bars) else None)  # no bars at all for n = 1
            if cell["ours"].notna().any():
                fig.add_trace(go.Bar(
                    x=cell["method"], y=cell["ours"], name="ours", marker_color=OURS_COLOR,
                    showlegend="ours" not in shown, legendgroup="ours", error_y=error_y,
                    customdata=np.stack([_hover_text(cell)], axis=-1),
                    hovertemplate="%{x}<br>ours %{customdata[0]}<extra></extra>"), row=i, col=j)
                shown.add("ours")
            if cell["paper"].notna().any():  # no empty "paper" series (toy datasets)
                fig.add_trace(go.Bar(
                    x=cell["method"], y=cell["paper"], name="paper", marker_color=PAPER_COLOR,
                    showlegend="paper" not in shown, legendgroup="paper", text=cell["paper_method"],
                    hovertemplate="%{x}<br>paper %{y:.2f} (%{text})<extra></extra>"), row=i, col=j)
                shown.add("paper")
    has_bars = any(b is not None for b in error_bars(data))
    fig.update_layout(barmode="group", template="plotly_white", title=title,
                      height=max(320, 260 * len(rows_keys)), width=max(600, 330 * len(datasets)),
                      legend=dict(orientation="h", yanchor="bottom", y=1.04, xanchor="left", x=0,
                                  title_text=ERROR_BARS if has_bars else "single seed: no error bars"))
    fig.update_yaxes(title_text="accuracy (%)", col=1)
    y_range = value_range(data)
    if y_range is not None:
        fig.update_yaxes(range=y_range)
    return fig


def value_range(table: pd.DataFrame, min_pad: float = 1.0) -> list[float] | None:
    """A y range around the bars' values (ours ± CI and the paper's) so that 1–3 point differences show:
    [low − pad, high + pad] with pad = max(min_pad, 25% of the spread), never below 0; None when the
    lowest value is under a quarter of the highest (then 0 is kept)."""
    ci = table["ours_ci95"].fillna(0) if "ours_ci95" in table.columns else 0
    values = pd.concat([table["ours"] - ci, table["ours"] + ci, table["paper"]]).dropna()
    if values.empty:
        return None
    lo, hi = float(values.min()), float(values.max())
    if hi <= 0 or lo < 0.25 * hi:
        return None
    pad = max(min_pad, 0.25 * (hi - lo))
    return [max(0.0, lo - pad), hi + pad]


def shots_figure(table: pd.DataFrame, metric: str = "top1", *, title: str | None = "Accuracy vs shots"):
    """Few-shot curves: accuracy against shots per method, ours solid (error bars: 95% CI over seeds) and
    the paper dashed, one panel per dataset."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    flat = table[(table["metric"] == metric) & table["shots"].isna() & table["ours"].notna()]
    data = table[(table["metric"] == metric) & table["shots"].notna()]
    datasets = list(dict.fromkeys(data["dataset"])) or list(dict.fromkeys(flat["dataset"])) or [""]
    fig = make_subplots(rows=1, cols=len(datasets), subplot_titles=datasets, shared_yaxes=True)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    methods = list(dict.fromkeys(data["method"]))
    for j, d in enumerate(datasets, start=1):
        for k, m in enumerate(methods):
            cell = data[(data["dataset"] == d) & (data["method"] == m)].sort_values("shots")
            if cell.empty:
                continue
            color = palette[k % len(palette)]
            x = cell["shots"].astype(int).to_numpy()
            if cell["ours"].notna().any():
                fig.add_trace(go.Scatter(x=x, y=cell["ours"], mode="lines+markers", name=f"{m} (ours)",
                                         legendgroup=f"{m}-ours", showlegend=j == 1, line=dict(color=color),
                                         error_y=dict(type="data", array=error_bars(cell)),
                                         text=_hover_text(cell),
                                         hovertemplate=f"{m}, %{{x}} shots<br>ours %{{text}}<extra></extra>"),
                              row=1, col=j)
            if cell["paper"].notna().any():
                fig.add_trace(go.Scatter(x=x, y=cell["paper"], mode="lines+markers", name=f"{m} (paper)",
                                         legendgroup=f"{m}-paper", showlegend=j == 1,
                                         line=dict(color=color, dash="dash"), marker=dict(symbol="x")),
                              row=1, col=j)
    ticks = sorted({int(s) for s in data["shots"]}) or [1, 16]
    for j, d in enumerate(datasets, start=1):  # shot-independent methods (zero-shot): a flat dotted line
        for k, (_, r) in enumerate(flat[flat["dataset"] == d].iterrows()):
            fig.add_trace(go.Scatter(x=[ticks[0], ticks[-1]], y=[r["ours"], r["ours"]], mode="lines",
                                     name=f"{r['method']} (ours, no shots)", legendgroup=f"{r['method']}-flat",
                                     showlegend=j == 1, line=dict(color="#555555", dash="dot")), row=1, col=j)
    fig.update_xaxes(type="log", tickvals=sorted({int(s) for s in data["shots"]}) or None, title_text="shots")
    fig.update_yaxes(title_text=f"{metric} (%)", col=1)
    fig.update_layout(template="plotly_white", title=title, height=380, width=max(600, 360 * len(datasets)),
                      legend_title_text=ERROR_BARS)
    return fig


def summary_lines(table: pd.DataFrame, metric: str, digits: int = 2) -> list[str]:
    """Plain-language sentences about `table` for notebook markdown, every number taken from the table:
    the best method per dataset (and shot count; shot-independent rows such as zero-shot compete at every
    shot count) and the largest gap to the paper."""
    lines = []
    data = table[(table["metric"] == metric) & table["ours"].notna()]
    shot_values = sorted({int(s) for s in data["shots"].dropna()})
    for d in dict.fromkeys(data["dataset"]):
        rows = data[data["dataset"] == d]
        for k in shot_values or [None]:
            grp = rows if k is None else rows[rows["shots"].isna() | (rows["shots"] == k)]
            if grp.empty or (k is not None and not (grp["shots"] == k).any()):
                continue
            top = grp["ours"].max()
            winners = grp[grp["ours"] == top]
            names = " and ".join(f"**{m}**" for m in winners["method"])
            seeds = sorted({int(n) for n in winners["n"]})
            seed_txt = "/".join(str(n) for n in seeds) + (" seeds" if seeds != [1] else " seed")
            shot_txt = "" if k is None else f", {k} shot{'s' if k != 1 else ''}"
            lines.append(f"On **{d}**{shot_txt}, our best {metric} is {names}{' (tied)' if len(winners) > 1 else ''} "
                         f"with {top:.{digits}f} (over {seed_txt}).")
    compared = data.dropna(subset=["paper"])
    if compared.empty:
        lines.append(f"No {metric} cell has a paper value to compare with (e.g. toy datasets), so no "
                     "difference to the paper is reported.")
    else:
        worst = compared.loc[compared["diff"].abs().idxmax()]
        shot_txt = "" if pd.isna(worst["shots"]) else f", {int(worst['shots'])} shots"
        lines.append(f"The largest {metric} gap to the paper is {worst['method']} on {worst['dataset']}{shot_txt}: "
                     f"ours {worst['ours']:.{digits}f} vs paper {worst['paper']:.{digits}f} "
                     f"({worst['diff']:+.{digits}f}); mean difference over {len(compared)} compared cells: "
                     f"{compared['diff'].mean():+.{digits}f}.")
    return lines


def to_records(table: pd.DataFrame) -> list[dict]:
    """JSON-friendly rows (NaN/NA → None, numpy scalars → Python, floats at full precision) of a table,
    for the notebooks' result files."""
    def plain(v):
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            return None
        if isinstance(v, np.generic):
            v = v.item()
            return None if isinstance(v, float) and np.isnan(v) else v
        if isinstance(v, pd.Timestamp):
            return v.isoformat()
        return v

    return [{k: plain(v) for k, v in row.items()} for row in table.astype(object).to_dict(orient="records")]
