"""Runs: the registry as a filterable table with live status and progress."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import appcore
from workbench import launcher
from workbench.runs.groups import group_progress, list_groups

st.title("Runs")
reg = appcore.registry()
runs = appcore.list_runs(reg)
launches = launcher.list_launches(reg.root, limit=20)

WATCH_EVERY = 2.0  # seconds between looks at the registry (a launched run appears within this)


def signature(df: pd.DataFrame, recs: list) -> tuple:
    """What changes the page's shape: which runs exist, their status, and which launches still run."""
    return (tuple(zip(df["short_hash"], df["status"])) if not df.empty else (),
            tuple(rec["state"] for rec in recs))


loaded = signature(runs, launches)
launching = any(rec["state"] == "running" for rec in launches)
live = st.session_state.get("runs_autorefresh", True)


@st.fragment(run_every=WATCH_EVERY if live else None)
def watch() -> None:
    """Re-read the registry every 2 s, whether or not anything ran at page load: a new run, a status
    change or a launch ending redraws the page (filters, table, run picker)."""
    if live and signature(appcore.list_runs(reg), launcher.list_launches(reg.root, limit=20)) != loaded:
        st.rerun()


watch()
if runs.empty:
    st.info(f"No runs yet in `{reg.root}`. Start one on the **Launch** page, or from a shell with "
            "`workbench run --method coop --dataset toy_objects`.")
    st.page_link("views/launch.py", label="Launch a run", icon="🚀")
    if launching:
        st.caption("A launched process is starting; its runs appear here as soon as they register.")
    st.toggle("Auto-refresh (2 s)", value=True, key="runs_autorefresh",
              help="look for new runs every 2 seconds while this page is open")
else:
    groups = {g["name"]: g for g in list_groups(reg.root)}
    group = None
    if groups:
        choice = st.selectbox("Sweep", ["All runs", *groups], key="f_sweep",
                              help="the runs of one sweep (`workbench sweep FILE` records each sweep's runs)")
        group = groups.get(choice)
    if group is not None:
        progress = group_progress(group, dict(zip(runs["hash"], runs["status"])))
        st.progress(progress["fraction"], text=f"sweep **{group['name']}**: {progress['done']} of "
                                               f"{progress['total']} runs done")
        st.caption(" · ".join(f"{progress[s]} {s}" for s in ("running", "failed", "interrupted", "pending")
                              if progress[s]) + (f" · file: `{group['source']}`" if group.get("source") else ""))
    cols = st.columns([1, 1, 1, 1, 0.9])
    filters = {
        "method": cols[0].multiselect("Method", sorted(runs["method"].unique()), key="f_method"),
        "protocol": cols[1].multiselect("Protocol", sorted(runs["protocol"].unique()), key="f_protocol"),
        "source": cols[2].multiselect("Dataset", sorted(runs["source"].unique()), key="f_dataset",
                                      help="the run's (source) dataset"),
        "status": cols[3].multiselect("Status", sorted(runs["status"].unique()), key="f_status"),
    }
    active = bool(runs["status"].isin(appcore.ACTIVE).any()) or launching
    cols[4].toggle("Auto-refresh (2 s)", value=True, key="runs_autorefresh",
                   help="re-read the registry every 2 seconds: new runs appear, progress moves while runs are active")

    def apply_filters(df: pd.DataFrame) -> pd.DataFrame:
        if group is not None:
            df = df[df["hash"].isin(group["hashes"])]
        for col, chosen in filters.items():
            if chosen:
                df = df[df[col].isin(chosen)]
        return df

    @st.fragment(run_every=2.0 if live and active else None)
    def live_table() -> None:
        everything = appcore.list_runs(reg) if live and active else runs
        df = apply_filters(everything)
        counts = df["status"].value_counts()
        st.caption(f"{len(df)} run(s) shown · " + " · ".join(
            f"{appcore.STATUS_ICONS.get(s, '')} {counts[s]} {s}" for s in counts.index)
            + (" · refreshing every 2 s" if live and active else ""))
        table = appcore.runs_display_table(df)
        metrics = [c for c in appcore.HEADLINE_METRICS if c in table.columns]
        st.dataframe(table, hide_index=True, width="stretch", column_config=appcore.runs_column_config(metrics),
                     key="runs_table")
        appcore.csv_button(table, "workbench_runs", key="runs_csv")

    live_table()

    shown = apply_filters(runs)
    if not shown.empty:
        st.subheader("Open a run")
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        labels = {row["short_hash"]: appcore.run_label(row) for _, row in shown.iloc[::-1].iterrows()}
        chosen = c1.selectbox("Run", list(labels), format_func=labels.get, key="open_run")
        if c2.button("Open run detail", key="open_run_button", type="primary"):
            appcore.open_run_detail(chosen)

if launches:
    with st.expander(f"Background launches ({len(launches)} most recent)", expanded=any(
            rec["state"] == "running" for rec in launches)):
        table = pd.DataFrame([{
            "started": pd.to_datetime(rec.get("started_at"), unit="s", utc=True).tz_convert(None).strftime(
                "%Y-%m-%d %H:%M:%S"),
            "pid": rec.get("pid"),
            "state": rec["state"] if rec["returncode"] is None else f"{rec['state']} ({rec['returncode']})",
            "method": rec.get("request", {}).get("method"),
            "datasets": ",".join(rec.get("request", {}).get("datasets", [])),
            "seeds": " ".join(map(str, rec.get("request", {}).get("seeds", []))),
            "log": rec.get("log"),
        } for rec in launches])
        appcore.table(table, key="launches_table", name="workbench_launches")
        which = st.selectbox("Log of launch", range(len(launches)), key="launch_log",
                             format_func=lambda i: f"{table['started'][i]} · pid {table['pid'][i]} · {table['state'][i]}")
        st.code(launcher.read_log_tail(launches[which]["log"]) or "(empty log)", language=None)
