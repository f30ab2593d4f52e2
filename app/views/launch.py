"""Launch: a form that starts `workbench run` as a background process (see workbench.launcher).

"Re-run if done" (`--force`) deletes what existing runs wrote: it asks for a second confirmation
naming those runs. The page refuses to launch when the server listens beyond loopback
(README "Serving the app"), unless WORKBENCH_APP_REMOTE_LAUNCH=1.
"""
from __future__ import annotations

import dataclasses
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

if not launcher.serving_allowed(st.get_option("server.address")):
    st.error(f"Launching is off: this server listens on `{st.get_option('server.address') or 'every interface'}`, "
             "not only on localhost, and the app has no authentication. Start it from the repository root "
             "(`streamlit run app/main.py` reads `.streamlit/config.toml`: 127.0.0.1), or serve it behind an "
             f"authenticating reverse proxy and set {launcher.REMOTE_LAUNCH_ENV}=1.")
    st.stop()

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
    force = c2.checkbox("Re-run if done", key="l_force",
                        help="delete existing runs of this request and compute them again (asks to confirm)")
    submitted = st.form_submit_button("Launch", type="primary")


def start(req: launcher.LaunchRequest) -> None:
    try:
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


def ask_force(req: launcher.LaunchRequest) -> None:
    """Validate, then hold `req` for confirmation when `--force` would reset existing runs."""
    errors = launcher.validate(req)
    if errors:
        raise launcher.LaunchError(errors)
    existing = launcher.existing_runs(req, appcore.runs_root())
    if not existing:  # nothing to delete: the same as a plain launch
        start(dataclasses.replace(req, force=False))
    else:
        st.session_state["pending_force"] = {"req": req, "existing": existing}


if submitted:
    st.session_state.pop("pending_force", None)
    st.session_state.pop("last_launch", None)
    try:
        req = launcher.request_from_form(method=method, protocol=protocol, datasets=chosen, shots=shots,
                                         seeds=seeds, backbone=backbone, pretrained=pretrained, device=device,
                                         preset=preset, settings=settings, data_root=data_root, name=name,
                                         force=force)
        if req.force:
            ask_force(req)
        else:
            start(req)
    except launcher.LaunchError as exc:
        st.session_state.pop("last_launch", None)
        st.error("Not launched:\n" + "\n".join(f"- {e}" for e in exc.errors))

pending = st.session_state.get("pending_force")
if pending:
    existing = pending["existing"]
    done = existing.get("done", [])
    others = {s: h for s, h in existing.items() if s != "done"}
    lines = [f"**Re-run if done** will delete and recompute **{len(done)} finished run(s)**"
             + (f": {', '.join(done)}" if done else "") + "."]
    lines += [f"It also resets {len(h)} {s} run(s), deleting their checkpoints and logs: {', '.join(h)}."
              for s, h in sorted(others.items())]
    label = (f"Delete and recompute {sum(map(len, existing.values()))} existing run(s)" if others
             else f"Delete and recompute {len(done)} finished run(s)")
    holder = st.empty()  # cleared once answered
    with holder.container():
        st.warning("\n\n".join(lines))
        c1, c2 = st.columns(2)
        confirm = c1.button(label, key="l_force_confirm", type="primary")
        cancel = c2.button("Cancel", key="l_force_cancel")
    if cancel:
        st.session_state.pop("pending_force", None)
        holder.empty()
    elif confirm:
        req = pending["req"]
        now = launcher.existing_runs(req, appcore.runs_root())
        confirmed = {h for hashes in existing.values() for h in hashes}
        if {h for hashes in now.values() for h in hashes} - confirmed:  # more would be deleted than was shown
            st.session_state["pending_force"] = {"req": req, "existing": now}
            st.rerun()
        st.session_state.pop("pending_force", None)
        holder.empty()
        start(req)

last = st.session_state.get("last_launch")
if last:
    st.success(f"Started `workbench run` (pid {last['pid']}) for {len(last['seeds'])} seed(s). "
               f"Log: `{last['log']}`")
    st.code(shlex.join(last["args"]), language="bash")
    st.page_link("views/runs.py", label="Follow it on the Runs page", icon="📋")
