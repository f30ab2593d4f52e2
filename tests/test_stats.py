"""workbench.analysis.stats: the statistic over seeds, against hand-computed values (scipy for the t quantile)."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp

from workbench.analysis.stats import (SeedSummary, format_ci, format_summary, format_values, seed_summary,
                                      summarize, summary_columns, summary_table, t_quantile)


def test_three_seeds_mean_sample_std_and_t_interval():
    s = seed_summary([90.0, 92.0, 94.0])
    assert s.n == 3 and s.values == (90.0, 92.0, 94.0)
    assert s.mean == pytest.approx(92.0)
    assert s.std == pytest.approx(2.0)  # sqrt(((-2)^2 + 0 + 2^2) / (3 - 1)), not the population 1.633
    t = sp.t.ppf(0.975, df=2)
    assert t == pytest.approx(4.303, abs=1e-3)  # printed t tables: t_{0.975, 2} = 4.303
    assert s.ci95 == pytest.approx(t * 2.0 / math.sqrt(3))
    assert (s.ci_low, s.ci_high) == pytest.approx((92.0 - s.ci95, 92.0 + s.ci95))
    assert t_quantile(3) == pytest.approx(t)


def test_two_seeds_and_the_sample_std_of_the_readme_table():
    s = seed_summary(pd.Series([80.0, 84.0]))
    assert s.std == pytest.approx(math.sqrt(8.0)) and s.ci95 == pytest.approx(sp.t.ppf(0.975, 1) * 2.0)
    values = [88.6, 89.9, 89.0]  # ddof=0 would print ± 0.54
    assert seed_summary(values).std == pytest.approx(statistics.stdev(values))
    assert format_summary(values) == f"89.17 ± {statistics.stdev(values):.2f}" == "89.17 ± 0.67"


def test_one_seed_has_no_spread_and_says_n1():
    s = seed_summary([74.44])
    assert s.n == 1 and s.mean == 74.44 and math.isnan(s.std) and math.isnan(s.ci95)
    assert format_summary(s) == "74.44 (n=1)" and format_ci(s) == "—"


def test_empty_and_missing_values():
    assert seed_summary([]).n == 0 and math.isnan(seed_summary([]).mean)
    assert format_summary([]) == "—" and format_ci([np.nan]) == "—"
    s = seed_summary([1.0, None, np.nan, 3.0])  # missing values are not seeds
    assert s.n == 2 and s.values == (1.0, 3.0) and s.mean == 2.0


def test_identical_seeds_have_zero_spread():
    s = seed_summary([74.44] * 3)
    assert s.std == 0.0 and s.ci95 == 0.0
    assert format_summary(s) == "74.44 ± 0.00" and format_ci(s) == "[74.44, 74.44]"


def test_formatting_digits_and_derived_summaries():
    assert format_summary([1.0, 2.0, 3.0], digits=1) == "2.0 ± 1.0"
    lo, hi = 2.0 - sp.t.ppf(0.975, 2) / math.sqrt(3), 2.0 + sp.t.ppf(0.975, 2) / math.sqrt(3)
    assert format_ci([1.0, 2.0, 3.0]) == f"[{lo:.2f}, {hi:.2f}]" == "[-0.48, 4.48]"
    # a mean over datasets carries no std: just the mean
    assert format_summary(SeedSummary(87.0, math.nan, math.nan, 3, ())) == "87.00"
    assert format_values((90.0, 92.5)) == "90.00, 92.50"


def test_pandas_groupby_helpers():
    df = pd.DataFrame({"method": ["coop", "zeroshot", "coop", "coop"], "seed": [1, 1, 2, 3],
                       "base": [90.0, 74.44, 92.0, 94.0], "new": [60.0, 75.0, 50.0, 55.0]})
    shown = df.groupby("method", sort=False)["base"].agg(format_summary)
    assert shown.to_dict() == {"coop": "92.00 ± 2.00", "zeroshot": "74.44 (n=1)"}
    wide = df.groupby("method")["new"].apply(summary_columns).unstack()
    assert wide.loc["coop", "mean"] == pytest.approx(55.0) and wide.loc["coop", "std"] == pytest.approx(5.0)
    assert wide.loc["coop", "n"] == 3 and wide.loc["coop", "values"] == (60.0, 50.0, 55.0)
    table = summary_table(df, "method", ["base", "new"], ci=True)
    assert list(table.columns) == ["method", "n", "base", "base 95% CI", "new", "new 95% CI"]
    assert list(table["method"]) == ["coop", "zeroshot"] and list(table["n"]) == [3, 1]  # first-seen order
    assert table.iloc[0]["new"] == "55.00 ± 5.00" and table.iloc[1]["base 95% CI"] == "—"
    long = summarize(df, "method", ["base"]).set_index("method")
    assert long.loc["coop", "ci95"] == pytest.approx(sp.t.ppf(0.975, 2) * 2.0 / math.sqrt(3))
    assert long.loc["zeroshot", "n"] == 1 and np.isnan(long.loc["zeroshot", "std"])
