"""Results: our finished runs aggregated over seeds, beside the numbers the papers print.

The statistic is `workbench.analysis.stats`' (mean ± sample std, a 95% Student-t CI, n, per-seed values);
aggregation and the join with the papers are `workbench.analysis.compare`'s (the notebooks use the same).
"""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

import appcore
from workbench.analysis import compare, figures
from workbench.analysis.stats import format_ci, format_summary, format_values
from workbench.data.paper_results import PAPERS
from workbench.protocols.builder import differences_from_preset

st.title("Results")
reg = appcore.registry()
runs = appcore.list_runs(reg)
done = runs[runs["status"] == "done"]

if done.empty:
    st.info("No finished runs yet" + (f" ({len(runs)} run(s) not done)" if len(runs) else "") +
            ". Results appear here once runs are done; each cell is the mean ± sample std over seeds.")
    st.stop()

stale = done["stale"].fillna("").astype(bool) if "stale" in done.columns else pd.Series(False, index=done.index)
if stale.any() and not stale.all():  # runs of an older version beside current ones: the same cell twice
    keep_stale = st.toggle(f"Include {int(stale.sum())} stale run(s)", value=False, key="r_stale",
                           help="runs made by an older version of a method or protocol (never reused); "
                                "hidden by default so that a cell is not listed once per version")
    if not keep_stale:
        done = done[~stale]
elif stale.all():
    st.caption("Every finished run here was made by an older version (stale); shown as they are.")

ours = compare.aggregate_runs(done)
if ours.empty:
    st.info("The finished runs report no accuracy metrics (base / new / hm / top1).")
    st.stop()


def config_label(row) -> str:
    """method · shots · backbone · preset [+ settings that differ from what the preset resolves to]."""
    shots = "full" if pd.isna(row["shots"]) else f"{int(row['shots'])}-shot"

    def parsed(key):
        try:
            return json.loads(row[key]) if isinstance(row.get(key), str) else {}
        except json.JSONDecodeError:
            return {}

    preset = row.get("preset") if isinstance(row.get("preset"), str) else None
    extra = differences_from_preset(row["method"], row["protocol"], [row["dataset"]], preset,
                                    parsed("method_config"), parsed("train_config"), row["backbone"])
    tail = f" ({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else ""
    pretrained = f"/{row['pretrained']}" if row.get("pretrained") else ""
    return f"{row['method']} · {shots} · {row['backbone']}{pretrained} · {preset or 'default'}{tail}"


ours = ours.assign(config=[config_label(r) for _, r in ours.iterrows()])

st.subheader("Ours (mean ± std over seeds)")
st.caption("± is the sample standard deviation over seeds (n − 1); one seed shows “(n=1)”. The 95% confidence "
           "interval of the mean (Student t, n − 1 degrees of freedom) and every seed's value, with a link to its "
           "run, are in the other tabs; error bars in the charts are that 95% CI.")
methods = sorted(ours["method"].unique())
chosen_methods = st.multiselect("Methods", methods, default=methods, key="r_methods")
view = ours[ours["method"].isin(chosen_methods)]
for protocol, part in view.groupby("protocol", sort=True):
    summaries = [compare.table_summary(r, prefix="") for _, r in part.iterrows()]
    part = part.assign(column=part["dataset"] + " · " + part["metric"],
                       shown=[format_summary(s) for s in summaries])
    pivot = part.pivot_table(index="config", columns="column", values="shown", aggfunc="first", sort=False)
    pivot = pivot.join(part.groupby("config", sort=False)["n"].max().rename("seeds"))
    st.markdown(f"**{protocol}**")
    t_mean, t_stats, t_seeds = st.tabs(["mean ± std", "mean, std, 95% CI, n", "per seed"])
    with t_mean:
        appcore.table(pivot.reset_index().rename(columns={"config": "method · shots · backbone"}),
                      key=f"ours_{protocol}", name=f"ours_{protocol}")
    with t_stats:
        appcore.table(pd.DataFrame({
            "method · shots · backbone": part["config"], "dataset": part["dataset"], "metric": part["metric"],
            "mean": part["mean"], "std": part["std"], "95% CI ±": part["ci95"],
            "95% CI": [format_ci(s) for s in summaries], "n": part["n"], "seeds": part["seeds"],
            "values": [format_values(s.values) for s in summaries]}),
            key=f"stats_{protocol}", name=f"ours_stats_{protocol}", column_config={
                c: st.column_config.NumberColumn(c, format="%.2f") for c in ("mean", "std", "95% CI ±")})
    with t_seeds:
        per_seed = [{"method · shots · backbone": r["config"], "dataset": r["dataset"], "metric": r["metric"],
                     "seed": int(seed), "value": value, "run": f"run?run={short}"}
                    for _, r in part.iterrows()
                    for seed, value, short in zip(str(r["seeds"]).split(","), r["values"], str(r["runs"]).split(","))]
        appcore.table(pd.DataFrame(per_seed), key=f"seeds_{protocol}", name=f"ours_per_seed_{protocol}",
                     column_config={"value": st.column_config.NumberColumn("value", format="%.2f"),
                                    "run": st.column_config.LinkColumn("run", display_text="open ↗",
                                                                       help="open the run detail page")})
    appcore.plot(figures.seeds_figure(part, label="config", title=f"Ours · {protocol}"), key=f"r_seeds_{protocol}",
                 name=f"ours_{protocol}")
st.download_button("Download (CSV)", view.drop(columns=["config"]).assign(values=view["values"].map(format_values))
                   .to_csv(index=False),
                   file_name="workbench_results.csv", mime="text/csv", key="r_download")

st.subheader("Beside the papers")
papers = st.multiselect("Papers", list(PAPERS), default=list(PAPERS), key="r_papers", format_func=str.upper)
st.caption("Matched on protocol, method, dataset, metric and shot count (zero-shot CLIP matches any shot "
           "count; a paper cell without a stated shot count matches any); the papers' main rows only.")


@st.cache_data(show_spinner=False)
def paper_cells(paper: str, protocol: str) -> pd.DataFrame:
    return compare.paper_rows(paper, protocol=protocol)


tables = []
for paper in papers:
    for protocol, part in view.groupby("protocol", sort=True):
        cells = paper_cells(paper, protocol)
        if cells.empty:
            continue
        t = compare.ours_vs_paper(part.drop(columns=["config"]), cells)
        tables.append(t.assign(source=paper.upper()))
compared = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=compare.TABLE_COLUMNS + ["source"])
matched = compared.dropna(subset=["paper", "ours"])
if matched.empty:
    notes = sorted(set(compared["note"].dropna()) - {""}) if len(compared) else []
    st.info("None of the chosen papers prints these method / dataset / metric / shot combinations"
            + (f" ({'; '.join(notes[:3])})" if notes else "") + ".")
else:
    table = pd.DataFrame({
        "paper": matched["source"], "table": matched["paper_table"], "protocol": matched["protocol"],
        "method": matched["method"], "as printed": matched["paper_method"], "dataset": matched["dataset"],
        "shots": matched["shots"], "metric": matched["metric"],
        "ours": [format_summary(compare.table_summary(r)) for _, r in matched.iterrows()],
        "95% CI": [format_ci(compare.table_summary(r)) for _, r in matched.iterrows()],
        "seeds": matched["n"], "paper value": matched["paper"], "difference": matched["diff"],
    })
    appcore.table(table, key="r_compare", name="ours_vs_papers",
                 column_config={"paper value": st.column_config.NumberColumn(format="%.2f"),
                                "difference": st.column_config.NumberColumn(format="%+.2f", help="ours − paper")})
    c1, c2 = st.columns(2)
    chart_paper = c1.selectbox("Chart: paper", list(dict.fromkeys(matched["source"])), key="r_chart_paper")
    protocols = list(dict.fromkeys(matched[matched["source"] == chart_paper]["protocol"]))
    chart_protocol = c2.selectbox("Chart: protocol", protocols, key="r_chart_protocol")
    sel = compared[(compared["source"] == chart_paper) & (compared["protocol"] == chart_protocol)]
    appcore.plot(figures.comparison_bar(sel.dropna(subset=["paper"]),
                                        title=f"Ours vs {chart_paper} · {chart_protocol}"), key="r_bar",
                 name=f"ours_vs_{chart_paper}_{chart_protocol}")
    appcore.plot(figures.paper_difference(sel, title=f"Ours − {chart_paper} · {chart_protocol}"), key="r_diff",
                 name=f"ours_minus_{chart_paper}_{chart_protocol}")
    st.caption("Error bars: 95% CI of our mean over seeds (none for a single seed).")
unmatched = compared[compared["paper"].isna() & compared["ours"].notna()]
if len(unmatched):  # each of our cells once, whichever papers lack it (not once per paper)
    cells: dict = {}
    for _, r in unmatched.iterrows():
        k = (r["protocol"], r["method"], r["dataset"], None if pd.isna(r["shots"]) else int(r["shots"]), r["metric"])
        first = cells.setdefault(k, {"row": r, "papers": [], "notes": []})
        first["papers"].append(r["source"])
        if r["note"] and r["note"] not in first["notes"]:
            first["notes"].append(r["note"])
    summaries = [compare.table_summary(c["row"]) for c in cells.values()]
    shown = pd.DataFrame({
        **{c: [k[i] for k in cells] for i, c in enumerate(["protocol", "method", "dataset", "shots", "metric"])},
        "ours": [format_summary(s) for s in summaries], "95% CI": [format_ci(s) for s in summaries],
        "seeds": [s.n for s in summaries], "values": [format_values(s.values) for s in summaries],
        "papers without it": [", ".join(dict.fromkeys(c["papers"])) for c in cells.values()],
        "note": ["; ".join(c["notes"]) for c in cells.values()]})
    shown["shots"] = shown["shots"].astype("Int64")
    with st.expander(f"Our results without a paper value ({len(shown)})"):
        appcore.table(shown, key="r_unmatched", name="ours_without_paper_value")
