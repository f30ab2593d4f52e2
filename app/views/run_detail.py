"""Run detail: spec, status, metrics; training curves, similarity histograms, t-SNE / UMAP, confusion."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

import appcore
from workbench.analysis import embeddings as emb
from workbench.analysis import figures, inspect
from workbench.analysis.metrics import confusion_matrix, per_class_accuracy
from workbench.methods import get_method_class
from workbench.runs import load_embeddings
from workbench.runs.files import load_inspection

VIEWS = {"curves": "Training curves", "similarity": "Similarities", "embeddings": "Embeddings",
         "confusion": "Confusion", "log": "Log"}

st.title("Run detail")
reg = appcore.registry()
runs = appcore.list_runs(reg)
if runs.empty:
    st.info(f"No runs yet in `{reg.root}`. Launch one on the Launch page.")
    st.page_link("views/launch.py", label="Launch a run", icon="🚀")
    st.stop()

labels = {row["short_hash"]: appcore.run_label(row) for _, row in runs.iloc[::-1].iterrows()}
options = list(labels)
wanted = str(st.query_params.get("run", "")).strip().lower()
if wanted and wanted != st.session_state.get("d_run_param"):  # a link / switch_page asked for this run
    st.session_state["d_run_param"] = wanted
    match = [h for h in options if h.startswith(wanted)]
    if len(match) == 1:
        st.session_state["d_run"] = match[0]
    else:  # say so, and show no run until one is picked (never silently another one)
        st.session_state["d_run_missing"] = (f"No run {wanted!r} in `{reg.root}`" if not match
                                             else f"Run prefix {wanted!r} is ambiguous ({len(match)} runs)")
        st.session_state["d_run"] = None
elif st.session_state.get("d_run") not in options and "d_run_missing" not in st.session_state:
    st.session_state.pop("d_run", None)
if st.session_state.get("d_run") in options:  # a run was picked since
    st.session_state.pop("d_run_missing", None)
missing = st.session_state.get("d_run_missing")
if missing:
    st.error(missing + ". Pick a run below.")
short = st.selectbox("Run", options, format_func=labels.get, key="d_run", index=None if missing else 0,
                     placeholder="Choose a run")
if short is None:
    st.stop()
st.session_state.pop("d_run_missing", None)
st.query_params["run"] = st.session_state["d_run_param"] = short
run = reg.get(short)
row = runs[runs["short_hash"] == short].iloc[0]


# ------------------------------------------------------------------------------------------------
# status, metrics, spec
# ------------------------------------------------------------------------------------------------
@st.fragment(run_every=2.0 if row["status"] in appcore.ACTIVE else None)
def status_panel() -> None:
    info = run.info()
    status = info["status"]
    c1, c2, c3 = st.columns([1, 2, 1])
    c1.metric("Status", f"{appcore.STATUS_ICONS.get(status, '')} {status}")
    with c2:
        st.progress(float(info["progress"]), text=info["message"] or f"{100 * float(info['progress']):.0f}%")
    c3.metric("Epochs logged", len(reg.history(run)))
    if info.get("error"):
        st.error(f"Run failed: {info['error']} (traceback in the Log view)")
    if status in appcore.ACTIVE:
        st.caption("Refreshing every 2 s while the run is active.")
    if status != row["status"]:  # it finished (or started): redraw the whole page (run picker, metrics, plots)
        st.rerun(scope="app")


status_panel()
c1, c2 = st.columns(2)
with c1:
    st.markdown("**Metrics**")
    metrics = run.metrics
    if metrics:
        flat = pd.DataFrame({"metric": list(appcore.flatten(metrics)),
                             "value": [appcore.format_value(v) for v in appcore.flatten(metrics).values()]})
        appcore.table(flat, key="d_metrics", name=f"{short}_metrics")
    else:
        st.caption("No final metrics yet.")
with c2:
    st.markdown("**Spec**")
    spec_obj = run.spec
    summary = {"method": spec_obj.method, "protocol": spec_obj.protocol, "datasets": ", ".join(spec_obj.datasets),
               "shots": "" if spec_obj.shots is None else str(spec_obj.shots), "seed": str(spec_obj.seed),
               "backbone": spec_obj.backbone, "pretrained": spec_obj.pretrained or "", "preset": spec_obj.preset or "",
               "versions": ", ".join(f"{k} {v}" for k, v in sorted(spec_obj.versions.items()))}
    appcore.table(pd.DataFrame({"field": list(summary), "value": list(summary.values())}), key="d_spec",
                  name=f"{short}_spec")
    if row.get("stale"):
        st.warning(f"Stale: {row['stale']}. Kept for reading; the same request runs again instead of reusing it.")
    settings = spec_obj.legacy if spec_obj.is_legacy else spec_obj.resolved_settings()
    with st.expander(f"Resolved settings ({len(settings)})" if not spec_obj.is_legacy
                     else "Settings (legacy run: preset name and overrides only)"):
        explicit = set(spec_obj.settings)
        appcore.table(pd.DataFrame({"setting": list(settings),
                                    "value": [json.dumps(v, sort_keys=True, default=str) for v in settings.values()],
                                    "set explicitly": [k in explicit for k in settings]}),
                      key="d_settings", name=f"{short}_settings")
    st.caption(f"hash `{run.hash}` · folder `{run.dir}`")

view_param = str(st.query_params.get("view", ""))
if view_param in VIEWS and view_param != st.session_state.get("d_view_param"):
    st.session_state["d_view"] = view_param
view = st.radio("View", list(VIEWS), format_func=VIEWS.get, horizontal=True, key="d_view",
                label_visibility="collapsed")
st.query_params["view"] = st.session_state["d_view_param"] = view
st.divider()

try:  # the plots the method declares (`Method.plots`); the app knows no method by name
    plots = inspect.declared_plots(get_method_class(run.spec.method))
except Exception:  # an unregistered (removed) method, a bad declaration: its defaults
    plots = []

stored_keys = emb.stored_keys(run.dir)
predictions = run.load_predictions()
split_keys = list(dict.fromkeys(stored_keys + sorted(predictions, key=emb._key_order)))


def classnames_for(key: str) -> list[str] | None:
    names = load_embeddings(run.dir, key).get("classnames")
    return [str(c) for c in names] if names is not None else None


# ------------------------------------------------------------------------------------------------
# views
# ------------------------------------------------------------------------------------------------
@st.fragment(run_every=2.0 if row["status"] in appcore.ACTIVE else None)
def curves_view() -> None:
    """Training curves; redrawn every 2 s while the run is active (a new epoch, a new point). Series that
    stay constant over training are settings, not learned values: listed, not plotted."""
    history = reg.history(run)
    columns, constants = inspect.split_history(history)
    if history.empty or not (columns or constants):
        st.info("No per-epoch history for this run (zero-shot runs train nothing; running runs log after "
                "each epoch).")
        return
    if columns:
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        gridded = set(inspect.matching(columns, [c for d in plots if d["kind"] == "grid" for c in d["columns"]]))
        chosen = c1.multiselect("Series", columns, default=[c for c in columns if c not in gridded], key="d_series",
                                help="loss, accuracy, learning rate and the values the method records that change")
        separate = c2.toggle("One panel per series", value=True, key="d_separate")
        if chosen:
            appcore.plot(figures.history_figure(history, chosen, separate=separate, title=None), key="d_history",
                         name=f"{short}_history")
    if constants:
        settings = run.spec.resolved_settings() if not run.spec.is_legacy else {}
        same = {k: [s for s, v in settings.items() if s.rsplit(".", 1)[-1] == k or (s.startswith("method.") and v == value)]
                for k, value in constants.items()}
        st.markdown("**Constant over training** (fixed settings the method reports, not learned; every "
                    "resolved setting is in *Resolved settings* above)")
        appcore.table(pd.DataFrame({"series": list(constants), "value": list(constants.values()),
                                    "matching settings": [", ".join(same[k][:4]) for k in constants]}),
                      key="d_constants", name=f"{short}_constants")
    for i, declared in enumerate(plots):
        if declared["kind"] == "arrays":
            arrays_view(declared, i)
            continue
        epoch = None
        if (declared["kind"] == "grid" and history["epoch"].nunique() > 1  # a grid shows one epoch: pick it
                and inspect.matching(list(history.columns), declared["columns"])):
            epochs = sorted(int(e) for e in history["epoch"].unique())
            epoch = st.select_slider(f"Epoch of “{declared['title']}”", options=epochs,
                                     value=declared.get("epoch", epochs[-1]), key=f"d_grid_epoch_{i}")
        fig = inspect.inspector_figure(history, declared, epoch=epoch)
        if fig is not None:
            appcore.plot(fig, key=f"d_inspect_{i}", name=f"{short}_{declared['kind']}_{i}")
    with st.expander("History table"):
        appcore.table(history, key="d_history_table", name=f"{short}_history")


def arrays_view(declared: dict, i: int) -> None:
    """A declared "arrays" plot: arrays the method stored for a few evaluated images of each split."""
    stored = load_inspection(run.dir)
    if not stored:
        st.info(f"“{declared['title']}”: this run stored no inspection arrays (yet: they are written after "
                "each split is evaluated).")
        return
    c1, c2 = st.columns(2)
    key = c1.selectbox(f"Split of “{declared['title']}”", list(stored), key=f"d_arrays_key_{i}")
    count = max(int(np.asarray(a).shape[0]) for a in stored[key].values())
    image = int(c2.number_input("Image", min_value=0, max_value=count - 1, value=0, step=1, key=f"d_arrays_image_{i}",
                                help="which of the stored test images of this split"))
    for j, fig in enumerate(inspect.array_figures(stored[key], declared, image=image)):
        appcore.plot(fig, key=f"d_arrays_{i}_{j}", name=f"{short}_arrays_{i}_{j}")


if view == "curves":
    curves_view()
elif view == "similarity":
    if not split_keys:
        st.info("This run stored no embeddings or predictions (yet).")
    else:
        key = st.selectbox("Split", split_keys, key="d_sim_split")
        stored = load_embeddings(run.dir, key)
        if "image" in stored and "classes" in stored:
            fig = figures.similarity_histogram(image=stored["image"], classes=stored["classes"],
                                               labels=stored["labels"], title=f"{key}: true-class vs other-class cosine")
            appcore.plot(fig, key="d_similarity", name=f"{short}_{key}_similarity")
            st.caption(f"Cosine between each stored image embedding ({len(stored['image'])}) and its own class's "
                       "text embedding vs every other class's.")
        elif key in predictions and "logits" in predictions[key]:
            p = predictions[key]
            fig = figures.similarity_histogram(logits=p["logits"], labels=p["labels"],
                                               title=f"{key}: true-class vs other-class scores")
            appcore.plot(fig, key="d_similarity", name=f"{short}_{key}_similarity")
            st.caption("This method stored no class embeddings, so these are its output scores (logits), not cosines.")
        else:
            st.info(f"No class embeddings or logits stored for {key!r}.")

elif view == "embeddings":
    if not stored_keys:
        st.info("This run stored no image embeddings (yet).")
    else:
        b2n = {"base", "new"} <= set(stored_keys)
        choices = (["base + new"] if b2n else []) + stored_keys
        c1, c2, c3 = st.columns([2, 2, 1])
        which = c1.selectbox("Images of", choices, key="d_emb_split")
        keys = ["base", "new"] if which == "base + new" else [which]
        color_by = c2.radio("Colour by", ["group", "class"], horizontal=True, key="d_emb_color",
                            format_func=lambda v: "base vs new classes" if v == "group" else "class",
                            index=0 if which == "base + new" else 1)
        cap = int(c3.number_input("Max points", 50, emb.DEFAULT_CAP * 5, emb.DEFAULT_CAP, step=50, key="d_emb_cap"))
        method = st.radio("Projection", list(emb.METHODS), format_func=emb.LABELS.get, horizontal=True,
                          key="d_emb_method", help="computed once per run, split and size, then cached")
        pts = emb.stacked_embeddings(run.dir, keys)
        mtime = (run.dir / "embeddings.npz").stat().st_mtime_ns

        @st.cache_data(show_spinner=False, max_entries=32)
        def projected(run_dir: str, mtime: int, keys: tuple, method: str, cap: int):
            p = emb.stacked_embeddings(run_dir, list(keys))
            return emb.project(p.image, method, random_state=0, cap=cap)

        n = min(len(pts.image), cap)
        note = " (the first UMAP in a session compiles numba code: up to a minute)" if method == "umap" else ""
        with st.status(f"{emb.LABELS[method]} of {n} points{note}…", expanded=False) as progress:
            import time as _time

            t0 = _time.perf_counter()
            xy = projected(str(run.dir), mtime, tuple(keys), method, cap)
            progress.update(label=f"{emb.LABELS[method]} of {n} points: {_time.perf_counter() - t0:.1f} s "
                                  "(cached for this run)", state="complete")
        appcore.plot(figures.embedding_scatter(
            xy.coords, classnames=pts.classname[xy.index], groups=pts.group[xy.index], color_by=color_by,
            title=f"{emb.LABELS[method]} · {which} ({len(xy.index)} images)"), key=f"d_{method}",
            name=f"{short}_{method}")
        st.caption("Stored image embeddings (L2-normalised), projected with a fixed random_state; "
                   f"subsampled to at most {cap} points. Hover a point for its class; click a legend entry "
                   "to hide it, double-click to show only it.")

elif view == "confusion":
    if not predictions:
        st.info("This run has no stored predictions (yet).")
    else:
        keys = sorted(predictions, key=emb._key_order)
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        key = c1.selectbox("Split", keys, key="d_conf_split")
        normalize = c2.toggle("Row %", value=False, key="d_conf_norm")
        p = predictions[key]
        names = classnames_for(key)
        appcore.plot(figures.confusion_heatmap(p["labels"], p["preds"], names, normalize=normalize,
                                               title=f"{key}: confusion matrix ({len(p['labels'])} images)"),
                     key="d_confusion", name=f"{short}_{key}_confusion")
        num = max(len(names or []), int(np.max(p["labels"], initial=-1)) + 1, int(np.max(p["preds"], initial=-1)) + 1)
        matrix = confusion_matrix(p["labels"], p["preds"], num)
        names = (names or []) + [f"class {i}" for i in range(len(names or []), num)]
        appcore.table(pd.DataFrame({"class": names, "images": matrix.sum(axis=1),
                                    "accuracy (%)": per_class_accuracy(matrix)}),
                      key="d_per_class", name=f"{short}_{key}_per_class",
                      column_config={"accuracy (%)": st.column_config.NumberColumn(format="%.1f")})

elif view == "log":
    text = run.read_log()
    st.code(text[-20000:] if text else "(empty log)", language=None)
    st.caption(f"`{run.dir / 'log.txt'}`")
    spec_json = json.dumps({**run.spec.to_dict(), "hash": run.hash}, indent=2)
    st.download_button("Download spec.json", spec_json, file_name=f"{short}_spec.json", key="d_spec_dl")
