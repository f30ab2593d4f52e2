"""Launch: a form that starts `workbench run` as a background process (see workbench.runs.launcher)."""
from __future__ import annotations

import os
import shlex

import streamlit as st

import appcore
from workbench.data import list_manifests
from workbench.methods import get_method_class, list_methods
from workbench.protocols import PROTOCOLS
from workbench import launcher

st.title("Launch runs")
st.caption("Starts `workbench run` in the background (one process, one run per seed). Progress shows up on "
           "the Runs page; the process log is kept in the registry's `launches/` folder.")

methods = list_methods()
protocols = sorted(PROTOCOLS)
datasets = list_manifests()


@st.cache_data(show_spinner=False)
def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


c1, c2 = st.columns(2)
method = c1.selectbox("Method", methods, index=methods.index("coop") if "coop" in methods else 0, key="l_method")
protocol = c2.selectbox("Protocol", protocols,
                        index=protocols.index("base_to_novel") if "base_to_novel" in protocols else 0,
                        key="l_protocol")
presets = sorted(get_method_class(method).presets)
transfer = PROTOCOLS[protocol].max_datasets != 1

with st.form("launch_form"):
    chosen = st.multiselect(
        "Dataset(s)", datasets, default=["toy_objects"] if "toy_objects" in datasets else None, key="l_datasets",
        help=("source first, then the target datasets" if transfer else "exactly one dataset"))
    c1, c2, c3 = st.columns(3)
    shots = c1.selectbox("Shots per class", launcher.SHOTS_CHOICES, index=len(launcher.SHOTS_CHOICES) - 1,
                         key="l_shots")
    seeds = c2.text_input("Seeds", "1", key="l_seeds", help="integers separated by spaces or commas: 1 2 3")
    preset = c3.selectbox("Preset", ["(auto)"] + presets, key="l_preset",
                          help="(auto): chosen per protocol and backbone, as `workbench run` does")
    c1, c2, c3 = st.columns(3)
    backbone = c1.text_input("Backbone", "toy", key="l_backbone",
                             help="'toy' (embedded tiny CLIP), 'wb-tiny-vit' (random init), or an open_clip "
                                  "model name such as ViT-B-16-quickgelu")
    pretrained = c2.text_input("Pretrained", "", key="l_pretrained", help="tag (openai) or weights file; optional")
    devices = ["cuda", "cpu"] if cuda_available() else ["cpu"]
    device = c3.selectbox("Device", devices, key="l_device")
    data_root = st.text_input("Data root", os.environ.get("WORKBENCH_DATA", ""), key="l_root",
                              help="folder holding the real datasets in the CoOp layout (toy datasets need none)")
    settings = st.text_area("Settings (`--set`), one KEY=VALUE per line", "", key="l_settings",
                            placeholder="train.epochs=1\ntrain.lr=0.002\nmethod.n_ctx=4",
                            help="train.* are training settings, method.* the method's; `workbench methods show "
                                 "NAME` lists them. Unknown keys and wrong types are refused.")
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    name = c1.text_input("Display name (optional)", "", key="l_name")
    force = c2.checkbox("Re-run if done", key="l_force")
    submitted = st.form_submit_button("Launch", type="primary")

if submitted:
    try:
        req = launcher.request_from_form(method=method, protocol=protocol, datasets=chosen, shots=shots,
                                         seeds=seeds, backbone=backbone, pretrained=pretrained, device=device,
                                         preset=preset, settings=settings, data_root=data_root, name=name,
                                         force=force)
        launched = launcher.launch(req, appcore.runs_root())
    except launcher.LaunchError as exc:
        st.session_state.pop("last_launch", None)
        st.error("Not launched:\n" + "\n".join(f"- {e}" for e in exc.errors))
    except OSError as exc:
        st.session_state.pop("last_launch", None)
        st.error(f"Could not start the process: {exc}")
    else:
        st.session_state["last_launch"] = {"pid": launched.pid, "args": launched.args,
                                           "log": str(launched.log_path), "seeds": list(req.seeds)}

last = st.session_state.get("last_launch")
if last:
    st.success(f"Started `workbench run` (pid {last['pid']}) for {len(last['seeds'])} seed(s). "
               f"Log: `{last['log']}`")
    st.code(shlex.join(last["args"]), language="bash")
    st.page_link("views/runs.py", label="Follow it on the Runs page", icon="📋")
