"""CLIP Adaptation Workbench app: `streamlit run app/main.py`.

Pages (app/views/, registered with st.navigation; not `pages/`, which Streamlit would also
auto-discover): Runs (the registry, live progress), Launch (start `workbench run` in the background),
Results (ours beside the papers), Run detail (curves, similarities, embeddings, confusion, the method's
inspector plots), Compare runs (overlaid curves, metric differences, paired test over seeds, settings diff). The registry is `$WORKBENCH_RUNS` (default `workbench.paths.runs_dir()`). The app holds no
method logic: it calls `workbench.runs`, `workbench.analysis` and `workbench.launcher`.
Served on 127.0.0.1 by `.streamlit/config.toml` when started from the repository root.
"""
from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR) not in sys.path:  # `appcore` lives beside this file
    sys.path.insert(0, str(APP_DIR))

import streamlit as st  # noqa: E402

import appcore  # noqa: E402
from workbench import launcher  # noqa: E402

st.set_page_config(page_title="CLIP Adaptation Workbench", page_icon="🧪", layout="wide")

PAGES = [
    st.Page(str(APP_DIR / "views" / "runs.py"), title="Runs", icon="📋", default=True),
    st.Page(str(APP_DIR / "views" / "launch.py"), title="Launch", icon="🚀", url_path="launch"),
    st.Page(str(APP_DIR / "views" / "results.py"), title="Results", icon="📊", url_path="results"),
    st.Page(str(APP_DIR / "views" / "run_detail.py"), title="Run detail", icon="🔎", url_path="run"),
    st.Page(str(APP_DIR / "views" / "compare.py"), title="Compare runs", icon="⚖️", url_path="compare"),
]

page = st.navigation(PAGES)
with st.sidebar:
    st.caption("CLIP Adaptation Workbench")
    address = st.get_option("server.address")
    if not launcher.loopback_only(address):  # e.g. started outside the repo root: no .streamlit/config.toml
        st.warning(f"Listening on `{address or 'every interface'}`, not only localhost"
                   + ("." if launcher.serving_allowed(address) else ": launching is off."))
    st.caption(f"Registry: `{appcore.runs_root()}`")
    st.radio("Figure downloads (📷 in each figure's toolbar)", ["png", "svg"], key="fig_format", horizontal=True,
             format_func=str.upper)
page.run()
