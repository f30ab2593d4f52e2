"""The one statistic over seeds used everywhere (demo, app, notebooks, figures).

For the values of one metric over seeds: the mean, the sample standard deviation (ddof=1) and the
half-width of a 95% confidence interval for the mean (Student t with n − 1 degrees of freedom,
t·std/√n). With a single seed neither the std nor the CI exists: both are NaN and shown as "n=1".

Display: ``format_summary`` gives "mean ± std" ("89.17 ± 0.73"); the ± is the sample std, never the
CI, which goes in its own column (``format_ci``: "[87.57, 90.76]"). Error bars in figures are the 95% CI.

    seed_summary([89.9, 88.9, 88.7])                  # SeedSummary(mean, std, ci95, n, values)
    format_summary([89.9, 88.9, 88.7])                 # "89.17 ± 0.64"
    df.groupby("method")["base"].agg(format_summary)   # one display string per group
    summary_table(df, "method", ["base", "new", "hm"])   # method, n, base, new, hm (display strings)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
NO_VALUE = "—"


@dataclass(frozen=True)
class SeedSummary:
    mean: float  # NaN when n == 0
    std: float  # sample std (ddof=1); NaN when n < 2
    ci95: float  # half-width of the 95% CI of the mean (Student t, n-1 dof); NaN when n < 2
    n: int  # number of (non-NaN) values
    values: tuple[float, ...]  # the per-seed values, in the order given

    @property
    def ci_low(self) -> float:
        return self.mean - self.ci95

    @property
    def ci_high(self) -> float:
        return self.mean + self.ci95

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "ci95": self.ci95, "n": self.n, "values": self.values}


SUMMARY_FIELDS = ("mean", "std", "ci95", "n", "values")


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student t quantile for n values (n − 1 degrees of freedom); NaN for n < 2."""
    if n < 2:
        return math.nan
    from scipy.stats import t  # lazy: scipy.stats is slow to import

    return float(t.ppf(0.5 + confidence / 2, n - 1))


def seed_summary(values: Iterable[float] | SeedSummary) -> SeedSummary:
    """Mean, sample std, 95% CI half-width and n of `values` (NaN / None entries are dropped)."""
    if isinstance(values, SeedSummary):
        return values
    arr = np.asarray(pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce"), dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    n = int(arr.size)
    mean = float(arr.mean()) if n else math.nan
    std = float(arr.std(ddof=1)) if n > 1 else math.nan
    ci95 = t_quantile(n) * std / math.sqrt(n) if n > 1 else math.nan
    return SeedSummary(mean, std, float(ci95), n, tuple(float(v) for v in arr))


def format_summary(summary: SeedSummary | Iterable[float], digits: int = 2) -> str:
    """ "89.17 ± 0.73" (mean ± sample std); "74.44 (n=1)" for one seed; "—" for none; just the mean
    when a summary carries no std otherwise (a derived value, e.g. a mean over datasets).
    Takes a `SeedSummary` or the raw values, so ``groupby(...)[col].agg(format_summary)`` works."""
    s = seed_summary(summary)
    if s.n == 0 or math.isnan(s.mean):
        return NO_VALUE
    if math.isnan(s.std):
        return f"{s.mean:.{digits}f}" + (" (n=1)" if s.n == 1 else "")
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def format_ci(summary: SeedSummary | Iterable[float], digits: int = 2) -> str:
    """The 95% CI of the mean as "[low, high]"; "—" when it is undefined (fewer than 2 seeds)."""
    s = seed_summary(summary)
    if s.n < 2 or math.isnan(s.ci95):
        return NO_VALUE
    return f"[{s.ci_low:.{digits}f}, {s.ci_high:.{digits}f}]"


def format_values(values: Sequence[float], digits: int = 2) -> str:
    """Per-seed values as "90.00, 92.00, 94.00"."""
    return ", ".join(f"{float(v):.{digits}f}" for v in values)


def summary_columns(values: Iterable[float]) -> pd.Series:
    """`seed_summary` as a Series (mean, std, ci95, n, values): ``groupby(...)[col].apply(summary_columns)``."""
    return pd.Series(seed_summary(values).as_dict(), index=list(SUMMARY_FIELDS), dtype=object)


def summarize(df: pd.DataFrame, by: str | Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Long frame: one row per group of `by` (first-seen order) and metric, with `SUMMARY_FIELDS`."""
    keys = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, grp in df.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            rows.append({**dict(zip(keys, key)), "metric": metric, **seed_summary(grp[metric]).as_dict()})
    return pd.DataFrame.from_records(rows, columns=keys + ["metric", *SUMMARY_FIELDS])


def summary_table(df: pd.DataFrame, by: str | Sequence[str], metrics: Sequence[str], *, digits: int = 2,
                  ci: bool = False) -> pd.DataFrame:
    """Display table: one row per group of `by` (first-seen order), column "n" (rows in the group) and
    per metric `format_summary`; with ``ci=True`` also "<metric> 95% CI" (`format_ci`)."""
    keys = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, grp in df.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = {**dict(zip(keys, key)), "n": len(grp)}
        for metric in metrics:
            s = seed_summary(grp[metric])
            row[metric] = format_summary(s, digits)
            if ci:
                row[f"{metric} 95% CI"] = format_ci(s, digits)
        rows.append(row)
    cols = keys + ["n"] + [c for m in metrics for c in ([m, f"{m} 95% CI"] if ci else [m])]
    return pd.DataFrame.from_records(rows, columns=cols)
