"""Results: our finished runs aggregated over seeds (mean ± std), beside the numbers the papers print.

Aggregation and the join with the papers are `workbench.analysis.compare`'s (the notebooks use the same).
"""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

import appcore
from workbench.analysis import compare, figures
from workbench.data.paper_results import PAPERS

st.title("Results")
reg = appcore.registry()
runs = appcore.list_runs(reg)
done = runs[runs["status"] == "done"]

if done.empty:
    st.info("No finished runs yet" + (f" ({len(runs)} run(s) not done)" if len(runs) else "") +
            ". Results appear here once runs are done; each cell is the mean ± std over seeds.")
    st.stop()

ours = compare.aggregate_runs(done)
if ours.empty:
    st.info("The finished runs report no accuracy metrics (base / new / hm / top1).")
    st.stop()


def config_label(row) -> str:
    """method · shots · backbone [+ settings that differ from the preset]."""
    shots = "full" if pd.isna(row["shots"]) else f"{int(row['shots'])}-shot"
    extra = []
    for key in ("method_config", "overrides"):
        try:
            values = json.loads(row[key]) if isinstance(row[key], str) else {}
        except json.JSONDecodeError:
            values = {}
        extra += [f"{k}={v}" for k, v in values.items() if k != "preset"]
    tail = f" ({', '.join(extra)})" if extra else ""
    pretrained = f"/{row['pretrained']}" if row.get("pretrained") else ""
    return f"{row['method']} · {shots} · {row['backbone']}{pretrained}{tail}"


ours = ours.assign(config=[config_label(r) for _, r in ours.iterrows()])

st.subheader("Ours (mean ± std over seeds)")
methods = sorted(ours["method"].unique())
chosen_methods = st.multiselect("Methods", methods, default=methods, key="r_methods")
view = ours[ours["method"].isin(chosen_methods)]
for protocol, part in view.groupby("protocol", sort=True):
    part = part.assign(column=part["dataset"] + " · " + part["metric"],
                       shown=[appcore.format_mean_std(m, s) for m, s in zip(part["mean"], part["std"])])
    pivot = part.pivot_table(index="config", columns="column", values="shown", aggfunc="first", sort=False)
    pivot = pivot.join(part.groupby("config", sort=False)["n"].max().rename("seeds"))
    st.markdown(f"**{protocol}**")
    st.dataframe(pivot.reset_index().rename(columns={"config": "method · shots · backbone"}), hide_index=True,
                 width="stretch", key=f"ours_{protocol}")
st.download_button("Download (CSV)", view.drop(columns=["config"]).to_csv(index=False),
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
        "ours": [appcore.format_mean_std(m, s) for m, s in zip(matched["ours"], matched["ours_std"])],
        "seeds": matched["n"], "paper value": matched["paper"], "difference": matched["diff"],
    })
    st.dataframe(table, hide_index=True, width="stretch", key="r_compare",
                 column_config={"paper value": st.column_config.NumberColumn(format="%.2f"),
                                "difference": st.column_config.NumberColumn(format="%+.2f", help="ours − paper")})
    c1, c2 = st.columns(2)
    chart_paper = c1.selectbox("Chart: paper", list(dict.fromkeys(matched["source"])), key="r_chart_paper")
    protocols = list(dict.fromkeys(matched[matched["source"] == chart_paper]["protocol"]))
    chart_protocol = c2.selectbox("Chart: protocol", protocols, key="r_chart_protocol")
    sel = compared[(compared["source"] == chart_paper) & (compared["protocol"] == chart_protocol)]
    st.plotly_chart(figures.comparison_bar(sel.dropna(subset=["paper"]),
                                           title=f"Ours vs {chart_paper} · {chart_protocol}"), key="r_bar")
unmatched = compared[compared["paper"].isna() & compared["ours"].notna()]
if len(unmatched):
    with st.expander(f"Our results without a paper value ({len(unmatched)})"):
        st.dataframe(unmatched[["source", "protocol", "method", "dataset", "shots", "metric", "ours", "note"]]
                     .rename(columns={"source": "paper"}), hide_index=True, width="stretch", key="r_unmatched")
