"""Helpers shared by the app's pages: where the registry is, table formatting, small widgets."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

from workbench.runs import Registry
from workbench.runs.registry import RUN_COLUMNS

STATUS_ICONS = {"pending": "⏳", "running": "🏃", "done": "✅", "failed": "❌", "interrupted": "⏸️"}
ACTIVE = ("pending", "running")
# metric columns shown in the runs table when present (the rest are in the run detail)
HEADLINE_METRICS = ("base", "new", "hm", "top1", "average")
RUN_DETAIL_PAGE = "views/run_detail.py"


def runs_root() -> Path:
    """`$WORKBENCH_RUNS`, else `workbench.paths.runs_dir()`."""
    from workbench.paths import runs_dir

    env = os.environ.get("WORKBENCH_RUNS")
    return Path(env).expanduser() if env else runs_dir()


def registry() -> Registry:
    """The registry, or an error message and a stopped page when it cannot be opened."""
    root = runs_root()
    try:
        return Registry(root)
    except Exception as exc:  # permissions, a newer schema, a damaged file...
        st.error(f"Cannot open the run registry at `{root}`: {exc}")
        st.stop()


def list_runs(reg: Registry) -> pd.DataFrame:
    try:
        reg.mark_orphans_interrupted()  # runs whose process died show as interrupted, not running forever
        return reg.list()
    except Exception as exc:
        st.error(f"Cannot read the run registry at `{reg.root}`: {exc}")
        st.stop()


def run_label(row: pd.Series | dict) -> str:
    shots = row.get("shots")
    shots = "full" if shots is None or pd.isna(shots) else f"{int(shots)}-shot"
    icon = STATUS_ICONS.get(row.get("status"), "")
    name = row.get("name")
    tail = f" “{name}”" if isinstance(name, str) and name else ""
    return (f"{row['short_hash']} · {row['method']} / {row['protocol']} / {row['datasets']} / {shots} / "
            f"seed {row['seed']} · {icon} {row['status']}{tail}")


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in RUN_COLUMNS]


def runs_display_table(df: pd.DataFrame) -> pd.DataFrame:
    """The runs table as shown: what identifies a run and its headline metrics first (they fit at 1400 px),
    then status with icon ("(stale)": made by an older version, never reused), progress 0..1, the rest."""
    metrics = [c for c in HEADLINE_METRICS if c in df.columns]
    names = df["name"] if "name" in df.columns else pd.Series([""] * len(df), index=df.index)
    out = pd.DataFrame({
        "run": df["short_hash"],
        "name": [n if isinstance(n, str) else "" for n in names],
        "method": df["method"],
        "datasets": df["datasets"],
        "shots": df["shots"],
        "seed": df["seed"],
        "status": [f"{STATUS_ICONS.get(s, '')} {s}" + (" (stale)" if stale else "")
                   for s, stale in zip(df["status"], df.get("stale", pd.Series([""] * len(df))).astype(bool))],
        "progress": df["progress"].astype(float),
        **{m: df[m] for m in metrics},
        "protocol": df["protocol"],
        "backbone": df["backbone"],
        "message": [e if isinstance(e, str) and e else m for m, e in zip(df["message"], df["error"])],
        "epochs": df["epochs"],
        "updated": df["updated_at"].dt.tz_convert(None).dt.strftime("%m-%d %H:%M:%S"),
        "details": [f"run?run={h}" for h in df["short_hash"]],
    })
    return out.reset_index(drop=True)


def runs_column_config(metrics: list[str]) -> dict:
    cfg = {
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
        "details": st.column_config.LinkColumn("details", display_text="open ↗",
                                               help="open the run detail page (new tab)"),
        "shots": st.column_config.NumberColumn("shots", format="%d", width="small"),
        "message": st.column_config.TextColumn("message", width="medium"),
        "seed": st.column_config.NumberColumn("seed", format="%d", width="small"),
    }
    for m in metrics:
        cfg[m] = st.column_config.NumberColumn(m, format="%.2f", width="small")
    return cfg


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def format_value(v) -> str:
    """Metric values for display: ints as ints, floats to 4 significant digits (2 decimals for percents)."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.2f}" if 1 <= abs(v) < 1000 else f"{v:.4g}"
    return str(v)


def format_mean_std(mean, std, digits: int = 2) -> str:
    """"92.00 ± 2.00"; just the mean for a single seed (std NaN); "" when there is no mean."""
    if mean is None or pd.isna(mean):
        return ""
    if std is None or pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def open_run_detail(short_hash: str) -> None:
    st.switch_page(RUN_DETAIL_PAGE, query_params={"run": short_hash})


def plot(fig, key: str, name: str | None = None) -> None:
    """st.plotly_chart whose modebar camera button downloads the figure as PNG or SVG (the sidebar's
    "Figure downloads" choice, session state `fig_format`)."""
    from workbench.analysis.figures import download_config

    fmt = st.session_state.get("fig_format", "png")
    st.plotly_chart(fig, key=key, config=download_config(name or key, fmt=fmt))


def csv_button(df: pd.DataFrame, name: str, key: str, label: str = "Download CSV") -> None:
    """A CSV download of a shown table (tuples / lists as comma-joined text)."""
    plain = df.copy()
    for c in plain.columns:
        if plain[c].map(lambda v: isinstance(v, (tuple, list))).any():
            plain[c] = plain[c].map(lambda v: ", ".join(map(str, v)) if isinstance(v, (tuple, list)) else v)
    st.download_button(label, plain.to_csv(index=False), file_name=f"{name}.csv", mime="text/csv", key=key)


def table(df: pd.DataFrame, key: str, name: str | None = None, **kwargs) -> None:
    """st.dataframe and its CSV download below it."""
    st.dataframe(df, key=key, **{"hide_index": True, "width": "stretch", **kwargs})
    csv_button(df, name or key, key=f"{key}_csv")
