"""Numbers transcribed from the five papers' results tables, for "ours beside theirs".

The CSVs live in ``data_manifests/paper_results/<paper>.csv`` (one per paper, long format:
one row per method x dataset x metric x setting). See the README in that folder for the schema
and for every transcription decision.

The folder is found relative to the repository (the package is installed editable); set
``WORKBENCH_MANIFESTS`` to point at another ``data_manifests`` folder.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pandas as pd

PAPERS = ("dam", "dsra", "glad", "mmrl", "rada")
COLUMNS = ["paper", "table", "caption", "protocol", "setting", "backbone", "shots", "method",
           "dataset", "metric", "value", "note"]
PROTOCOLS = ("base_to_novel", "few_shot", "cross_dataset", "domain_generalization", "long_tailed",
             "test_time", "ablation", "efficiency", "other")
# Columns that, together, identify one printed cell.
KEY = ["paper", "table", "setting", "backbone", "shots", "method", "dataset", "metric"]
_TEXT = ["paper", "table", "caption", "protocol", "setting", "backbone", "method", "dataset",
         "metric", "note"]


def manifests_dir() -> Path:
    """`WORKBENCH_MANIFESTS` if set, else `<repo>/data_manifests`."""
    env = os.environ.get("WORKBENCH_MANIFESTS")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "data_manifests"


def results_dir() -> Path:
    return manifests_dir() / "paper_results"


def _read(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={c: str for c in _TEXT}, keep_default_na=False,
                     na_values={"value": [""], "shots": [""]})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    df = df[COLUMNS].copy()
    df["value"] = pd.to_numeric(df["value"], errors="raise").astype(float)
    df["shots"] = pd.to_numeric(df["shots"], errors="raise").astype("Int64")
    return df


def load_paper_results(papers: str | Iterable[str] | None = None) -> pd.DataFrame:
    """All transcribed rows for `papers` (a name, a list of names, or None for all five).

    Text columns are strings ('' when empty), `value` is float, `shots` is a nullable Int64.
    """
    if papers is None:
        names = list(PAPERS)
    elif isinstance(papers, str):
        names = [papers]
    else:
        names = list(papers)
    unknown = [p for p in names if p not in PAPERS]
    if unknown:
        raise KeyError(f"unknown paper(s) {unknown}; expected some of {PAPERS}")
    root = results_dir()
    frames = []
    for p in names:
        path = root / f"{p}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"no transcription for {p!r} at {path}")
        frames.append(_read(path))
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)


def _norm_table(table: str | int) -> str:
    t = str(table).strip()
    return t if t.lower().startswith("table") else f"Table {t}"


def paper_table(paper: str, table: str | int, metric: str | None = None) -> pd.DataFrame:
    """One printed table pivoted to rows = method (plus setting/backbone/shots where the table
    has several), columns = dataset (or metric x dataset when `metric` is None and the table
    holds several metrics). `table` is as printed ("Table III", "Table 10") or just "III"/10.
    """
    df = load_paper_results(paper)
    name = _norm_table(table)
    df = df[df["table"].str.lower() == name.lower()]
    if df.empty:
        have = sorted(load_paper_results(paper)["table"].unique())
        raise KeyError(f"{paper}: no rows for {name!r}; tables are {have}")
    if metric is not None:
        df = df[df["metric"] == metric]
        if df.empty:
            raise KeyError(f"{paper} {name}: no metric {metric!r}")
    index = ["method"] + [c for c in ("setting", "backbone", "shots") if df[c].nunique(dropna=False) > 1]
    columns = ["dataset"] if df["metric"].nunique() == 1 else ["metric", "dataset"]
    out = df.assign(shots=df["shots"].astype("string").fillna("")).pivot_table(
        index=index, columns=columns, values="value", aggfunc="first", sort=False)
    out.columns.name = None if len(columns) == 1 else out.columns.names
    return out
