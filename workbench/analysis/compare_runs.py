"""Comparing runs with each other (the app's Compare page and notebooks).

    table = metrics_table(runs_df, ["base", "new", "hm"])        # one row per run, Δ to the first run
    test = paired_test(group_a_df, group_b_df, "hm")               # paired t-test over shared seeds
    tests = group_tests(group_a_df, group_b_df, ["base", "new", "hm"])
    diff = settings_diff({"a1b2": spec_a, "c3d4": spec_b})         # resolved settings that differ

`runs_df` frames are `Registry.list()` rows. The statistic of each group is `workbench.analysis.stats`'
(mean, sample std, 95% CI, n); the paired test is scipy's `ttest_rel` on the seeds both groups ran.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.analysis.stats import seed_summary

MISSING = "(not set)"


def metrics_table(runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per run (in the given order): run, name, method, seed, status, each metric and
    "Δ <metric>" = the run's value − the first run's value (NaN where either is missing)."""
    runs = runs.reset_index(drop=True)
    names = runs["name"] if "name" in runs.columns else pd.Series([""] * len(runs))
    out = pd.DataFrame({"run": runs["short_hash"], "name": [n if isinstance(n, str) else "" for n in names],
                        "method": runs["method"], "seed": runs["seed"], "status": runs["status"]})
    for m in metrics:
        values = pd.to_numeric(runs[m], errors="coerce") if m in runs.columns else pd.Series(np.nan, index=runs.index)
        out[m] = values.astype(float)
        out[f"Δ {m}"] = values.astype(float) - (float(values.iloc[0]) if len(values) else np.nan)
    return out


@dataclass(frozen=True)
class PairedTest:
    """Paired t-test of metric B − A over the seeds both groups ran (one value per seed and group)."""

    metric: str
    seeds: tuple[int, ...]  # shared seeds, sorted
    mean_a: float
    mean_b: float
    mean_diff: float  # mean of (b − a) over shared seeds; NaN without shared seeds
    std_diff: float  # sample std of the differences; NaN for n < 2
    t: float  # NaN when undefined
    p: float  # two-sided; NaN when undefined
    note: str  # why t / p are undefined, "" otherwise

    @property
    def n(self) -> int:
        return len(self.seeds)

    def as_dict(self) -> dict:
        return {"metric": self.metric, "n": self.n, "seeds": ",".join(map(str, self.seeds)),
                "mean A": self.mean_a, "mean B": self.mean_b, "mean B − A": self.mean_diff,
                "std of differences": self.std_diff, "t": self.t, "p": self.p, "note": self.note}


def _by_seed(group: pd.DataFrame, metric: str) -> dict[int, float]:
    """seed -> value of `metric` (runs without a value skipped); a seed run twice in a group is an error."""
    out: dict[int, float] = {}
    for _, row in group.iterrows():
        value = pd.to_numeric(pd.Series([row.get(metric)]), errors="coerce").iloc[0]
        if pd.isna(value):
            continue
        seed = int(row["seed"])
        if seed in out:
            raise ValueError(f"seed {seed} appears twice in one group ({metric}); a group holds one run per seed")
        out[seed] = float(value)
    return out


def paired_test(group_a: pd.DataFrame, group_b: pd.DataFrame, metric: str) -> PairedTest:
    """`scipy.stats.ttest_rel(b, a)` on the seeds both groups have a value of `metric` for."""
    a, b = _by_seed(group_a, metric), _by_seed(group_b, metric)
    seeds = tuple(sorted(set(a) & set(b)))
    va = np.array([a[s] for s in seeds], dtype=float)
    vb = np.array([b[s] for s in seeds], dtype=float)
    d = vb - va
    mean_a = seed_summary(a.values()).mean
    mean_b = seed_summary(b.values()).mean
    mean_diff = float(d.mean()) if len(d) else math.nan
    std_diff = float(d.std(ddof=1)) if len(d) > 1 else math.nan
    t = p = math.nan
    if len(seeds) == 0:
        note = "undefined: no seed is in both groups"
    elif len(seeds) == 1:
        note = "undefined: one shared seed (a paired test needs at least 2)"
    elif np.all(d == d[0]):
        note = "undefined: every seed differs by the same amount (zero variance of the differences)"
    else:
        from scipy.stats import ttest_rel

        res = ttest_rel(vb, va)
        t, p, note = float(res.statistic), float(res.pvalue), ""
    return PairedTest(metric, seeds, mean_a, mean_b, mean_diff, std_diff, t, p, note)


def group_tests(group_a: pd.DataFrame, group_b: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """`paired_test` for every metric, as a table (`PairedTest.as_dict` columns)."""
    rows = [paired_test(group_a, group_b, m).as_dict() for m in metrics]
    cols = ["metric", "n", "seeds", "mean A", "mean B", "mean B − A", "std of differences", "t", "p", "note"]
    return pd.DataFrame.from_records(rows, columns=cols)


def _shown(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


def settings_diff(specs: Mapping[str, object], *, all_settings: bool = False) -> pd.DataFrame:
    """Resolved settings (`RunSpec.resolved_settings()`, plus method / protocol / datasets / shots /
    backbone / pretrained) side by side: one row per setting that differs between the runs (every setting
    with `all_settings=True`), one column per run label; MISSING where a run lacks the setting."""
    resolved = {}
    for label, spec in specs.items():
        base = {"method": spec.method, "protocol": spec.protocol, "datasets": ",".join(spec.datasets),
                "shots": spec.shots, "backbone": spec.backbone, "pretrained": spec.pretrained or ""}
        settings = spec.legacy if getattr(spec, "is_legacy", False) else spec.resolved_settings()
        resolved[label] = {**base, **{k: v for k, v in settings.items()}}
    keys = list(dict.fromkeys(k for r in resolved.values() for k in r))
    rows = []
    for k in keys:
        values = [_shown(r[k]) if k in r else MISSING for r in resolved.values()]
        if all_settings or len(set(values)) > 1:
            rows.append({"setting": k, **dict(zip(resolved, values))})
    return pd.DataFrame.from_records(rows, columns=["setting", *resolved])


CONFIG_COLUMNS = ["method", "protocol", "datasets", "shots", "backbone", "pretrained", "preset", "method_config",
                  "train_config", "protocol_settings"]


def seed_groups(runs: pd.DataFrame) -> dict[str, list[str]]:
    """Runs that are the same experiment but for the seed: label -> short hashes (in seed order). Labels
    read "method · protocol · datasets · shots · backbone · preset", with "#2", "#3" for configurations
    that differ only in settings (see `settings_diff`)."""
    from workbench.analysis.compare import _group_value

    groups: dict[tuple, list] = {}
    for _, row in runs.sort_values("seed", kind="stable").iterrows():
        key = tuple(_group_value(row, c) if c in row.index else None for c in CONFIG_COLUMNS)
        groups.setdefault(key, []).append(row)
    out: dict[str, list[str]] = {}
    for rows in groups.values():
        r = rows[0]
        shots = "full" if r.get("shots") is None or pd.isna(r.get("shots")) else f"{int(r['shots'])}-shot"
        preset = r.get("preset") if isinstance(r.get("preset"), str) and r.get("preset") else "default"
        label = f"{r['method']} · {r['protocol']} · {r['datasets']} · {shots} · {r['backbone']} · {preset}"
        base, k = label, 2
        while label in out:
            label, k = f"{base} #{k}", k + 1
        out[label] = [x["short_hash"] for x in rows]
    return out
