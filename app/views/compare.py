"""Compare runs: chosen runs side by side, or two groups of seeds (one configuration against another):
overlaid training curves, a metrics table with differences, a paired t-test over shared seeds, and
the diff of their resolved settings. Computations: `workbench.analysis.compare_runs`."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import appcore
from workbench.analysis import compare_runs as cr
from workbench.analysis import figures
from workbench.analysis.stats import format_ci, format_summary, seed_summary

st.title("Compare runs")
reg = appcore.registry()
runs = appcore.list_runs(reg)
if len(runs) < 2:
    st.info(f"Comparing needs at least two runs; `{reg.root}` holds {len(runs)}. Launch more on the Launch page.")
    st.page_link("views/launch.py", label="Launch runs", icon="🚀")
    st.stop()

labels = {row["short_hash"]: appcore.run_label(row) for _, row in runs.iloc[::-1].iterrows()}
metrics = [c for c in appcore.metric_columns(runs) if pd.api.types.is_numeric_dtype(runs[c])]
metrics = [m for m in appcore.HEADLINE_METRICS if m in metrics] + [m for m in metrics if m not in appcore.HEADLINE_METRICS]
mode = st.radio("Compare", ["runs", "groups"], horizontal=True, key="c_mode",
                format_func={"runs": "chosen runs", "groups": "two groups over seeds (paired test)"}.get)

if mode == "runs":
    wanted = [h.strip() for h in str(st.query_params.get("runs", "")).split(",") if h.strip()]
    default = list(dict.fromkeys(h for w in wanted for h in labels if h.startswith(w))) or list(labels)[:2]
    chosen = st.multiselect("Runs (the first is the reference for Δ)", list(labels), default=default,
                            format_func=labels.get, key="c_runs")
    if len(chosen) < 1:
        st.info("Pick runs to compare.")
        st.stop()
    st.query_params["runs"] = ",".join(chosen)
    picked = runs.set_index("short_hash").loc[chosen].reset_index()
    groups = {h: [h] for h in chosen}
    st.subheader("Metrics")
    table = cr.metrics_table(picked, metrics)
    appcore.table(table, key="c_metrics", name="compare_metrics", column_config={
        c: st.column_config.NumberColumn(c, format="%+.2f" if c.startswith("Δ") else "%.2f")
        for c in table.columns if c in metrics or c.startswith("Δ")})
else:
    options = cr.seed_groups(runs)
    names = list(options)
    if len(names) < 2:
        st.info("All runs share one configuration; groups need two (e.g. two methods over the same seeds).")
        st.stop()
    c1, c2 = st.columns(2)
    ga = c1.selectbox("Group A", names, index=0, key="c_group_a")
    gb = c2.selectbox("Group B", names, index=1, key="c_group_b")
    a = runs[runs["short_hash"].isin(options[ga])]
    b = runs[runs["short_hash"].isin(options[gb])]
    c1.caption(f"{len(a)} run(s), seeds {', '.join(map(str, sorted(a['seed'])))}")
    c2.caption(f"{len(b)} run(s), seeds {', '.join(map(str, sorted(b['seed'])))}")
    groups = {"A": list(a["short_hash"]), "B": list(b["short_hash"])}
    picked = pd.concat([a, b], ignore_index=True)
    chosen = list(picked["short_hash"])
    done_a, done_b = a[a["status"] == "done"], b[b["status"] == "done"]
    st.subheader("Metrics over seeds")
    summary = []
    for m in metrics:
        sa, sb = seed_summary(done_a[m]), seed_summary(done_b[m])
        summary.append({"metric": m, "A": format_summary(sa), "A 95% CI": format_ci(sa), "A n": sa.n,
                        "B": format_summary(sb), "B 95% CI": format_ci(sb), "B n": sb.n, "B − A": sb.mean - sa.mean})
    appcore.table(pd.DataFrame(summary), key="c_group_summary", name="compare_groups",
                  column_config={"B − A": st.column_config.NumberColumn(format="%+.2f")})
    st.subheader("Paired t-test over shared seeds")
    tests = cr.group_tests(done_a, done_b, metrics)
    appcore.table(tests, key="c_tests", name="compare_paired_tests", column_config={
        **{c: st.column_config.NumberColumn(c, format="%.2f") for c in ("mean A", "mean B", "std of differences")},
        "mean B − A": st.column_config.NumberColumn(format="%+.2f"), "t": st.column_config.NumberColumn(format="%.3f"),
        "p": st.column_config.NumberColumn(format="%.4f")})
    st.caption("scipy.stats.ttest_rel(B, A) over the seeds both groups finished (n = shared seeds, two-sided p). "
               "Undefined for fewer than 2 shared seeds or when every seed differs by the same amount.")

st.subheader("Training curves")
histories = {}
for group, hashes in groups.items():
    for h in hashes:
        hist = reg.history(reg.get(h))
        seed = runs.loc[runs["short_hash"] == h, "seed"].iloc[0]
        histories[h if mode == "runs" else f"{group} · seed {seed} · {h[:6]}"] = hist
columns = list(dict.fromkeys(c for hist in histories.values() if not hist.empty
                             for c in figures.numeric_history_columns(hist)))
if not columns:
    st.info("None of these runs logged a per-epoch history (zero-shot runs train nothing).")
else:
    column = st.selectbox("Series", columns, key="c_series")
    appcore.plot(figures.overlay_history(histories, column), key="c_curves", name=f"compare_{column}")

st.subheader("Settings that differ")
specs = {}
for group, hashes in groups.items():
    for h in hashes[:1] if mode == "groups" else hashes:
        specs[h if mode == "runs" else f"{group} ({h})"] = reg.get(h).spec
diff = cr.settings_diff(specs)
if diff.empty:
    st.success("The resolved settings are identical.")
else:
    appcore.table(diff, key="c_settings", name="compare_settings")
    st.caption("Resolved settings (`RunSpec.resolved_settings()`) of each run" +
               (" (the first run of each group; seeds aside, a group shares them)" if mode == "groups" else "") +
               f"; {cr.MISSING} = the run has no such setting.")

if mode == "runs" and len(chosen) >= 2:  # image features of two runs side by side (e.g. DsRA's Fig. 4c)
    from workbench.analysis import embeddings as emb

    st.subheader("Image features side by side")
    pair = chosen[:2]
    dirs = {h: str(reg.get(h).dir) for h in pair}
    common = [k for k in emb.stored_keys(dirs[pair[0]]) if k in emb.stored_keys(dirs[pair[1]])]
    if not common:
        st.info("The first two chosen runs share no split with stored image embeddings.")
    elif st.toggle("Project the first two runs' test image features (t-SNE, the same settings for both)",
                   key="c_tsne"):
        split = st.selectbox("Split", common, key="c_tsne_split")

        @st.cache_data(show_spinner=False, max_entries=8)
        def _projection(run_dir: str, key: str):
            pts = emb.stacked_embeddings(run_dir, [key])
            xy = emb.project(pts.image, "tsne", random_state=0)
            return xy.coords, [str(c) for c in pts.classname[xy.index]]

        for column, h in zip(st.columns(2), pair):
            with column, st.spinner(f"t-SNE of {labels[h]}…"):
                coords, names = _projection(dirs[h], split)
                appcore.plot(figures.embedding_scatter(coords, classnames=names, color_by="class", title=labels[h]),
                             key=f"c_tsne_{h}", name=f"compare_tsne_{h}")
