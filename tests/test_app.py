"""The Streamlit app (app/main.py) through streamlit.testing's AppTest, every page: empty registry
(friendly empty states) and a registry holding a real tiny run (CoOp, base-to-novel on fabricated
EuroSAT, random-init tiny CLIP); the launch form's validation and the argument list it starts."""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from data_fixtures import EURO_RENAMED, make_eurosat  # noqa: E402
from workbench.analysis.metrics import confusion_matrix  # noqa: E402
from workbench import launcher  # noqa: E402
from workbench.runs import Registry, RunSpec  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "app" / "main.py"
TIMEOUT = 240  # seconds per script run: first imports and the first UMAP (numba compile) on a busy 2-CPU box


def app(monkeypatch, registry_root, data_root=None) -> AppTest:
    monkeypatch.setenv("WORKBENCH_RUNS", str(registry_root))
    if data_root is not None:
        monkeypatch.setenv("WORKBENCH_DATA", str(data_root))
    else:
        monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def arr(value) -> np.ndarray:
    """A plotly JSON array: a plain list, or plotly's typed-array form {"dtype", "bdata"[, "shape"]}."""
    if isinstance(value, dict) and "bdata" in value:
        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        if shape:
            out = out.reshape([int(v) for v in str(shape).split(",")])
        return out
    return np.asarray(value)


def frame(at: AppTest, column: str):
    """The value of the first st.dataframe with `column` (plain dataframes carry no key in AppTest)."""
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no dataframe with a {column!r} column; have {[list(d.value.columns) for d in at.dataframe]}")


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("info", "error", "success", "warning", "caption", "markdown") for e in getattr(at, kind)]
    return "\n".join(map(str, parts))


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """A registry with one real finished run: CoOp, 2 epochs, base-to-novel, 2-shot fabricated EuroSAT."""
    from workbench.protocols import build_spec
    from workbench.runs.execute import execute

    root = tmp_path_factory.mktemp("app_populated")
    data = root / "data"
    make_eurosat(data)
    reg = Registry(root / "runs")
    spec = build_spec("coop", "base_to_novel", "eurosat", shots=2, seed=1, backbone="wb-tiny-vit", preset="toy",
                      data_root=str(data),
                      settings={"train.epochs": 2, "train.batch_size": 4})
    run = execute(spec, reg, data_root=str(data), progress=False, device="cpu")
    assert run.status == "done"
    return reg, run, data


# ------------------------------------------------------------------------------------------------
# empty registry
# ------------------------------------------------------------------------------------------------
def test_every_page_has_a_friendly_empty_state(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "empty").run()
    no_exceptions(at)
    assert at.title[0].value == "Runs" and "No runs yet" in at.info[0].value
    assert str(tmp_path / "empty") in texts(at)  # the sidebar says which registry this is
    at.switch_page("views/results.py").run()
    no_exceptions(at)
    assert at.title[0].value == "Results" and "No finished runs yet" in at.info[0].value
    at.switch_page("views/run_detail.py").run()
    no_exceptions(at)
    assert at.title[0].value == "Run detail" and "No runs yet" in at.info[0].value
    at.switch_page("views/launch.py").run()
    no_exceptions(at)
    assert at.title[0].value == "Launch runs" and not at.error
    assert "coop" in at.selectbox(key="l_method").options


# ------------------------------------------------------------------------------------------------
# a registry with a real run
# ------------------------------------------------------------------------------------------------
def test_runs_page_lists_the_run_and_opens_its_detail(monkeypatch, populated):
    reg, run, _ = populated
    at = app(monkeypatch, reg.root).run()
    no_exceptions(at)
    table = frame(at, "progress")
    assert list(table["run"]) == [run.short_hash] and table["status"].iloc[0].endswith("done")
    assert table["progress"].iloc[0] == 1.0 and table["method"].iloc[0] == "coop"
    assert table["hm"].iloc[0] == pytest.approx(run.metrics["hm"])
    assert table["details"].iloc[0] == f"run?run={run.short_hash}"
    # what fits at 1400 px comes first: identity, name, status, progress, then base / new / HM
    assert list(table.columns[:11]) == ["run", "name", "method", "datasets", "shots", "seed", "status", "progress",
                                        "base", "new", "hm"]
    assert at.toggle(key="runs_autorefresh").value is True  # watches for new runs even when none is active
    assert "refreshing" not in texts(at)  # ...but the table itself only refreshes while something runs
    at.multiselect(key="f_status").set_value(["done"]).run()
    assert len(frame(at, "progress")) == 1
    at.multiselect(key="f_method").set_value(["coop"]).run()
    assert len(frame(at, "progress")) == 1
    at.button(key="open_run_button").click().run()
    no_exceptions(at)
    assert at.title[0].value == "Run detail" and at.selectbox(key="d_run").value == run.short_hash


def test_run_detail_views(monkeypatch, populated):
    from workbench.runs import load_embeddings

    reg, run, _ = populated
    at = app(monkeypatch, reg.root)
    at.query_params["run"] = run.short_hash
    at.run()
    at.switch_page("views/run_detail.py").run()
    no_exceptions(at)
    assert at.selectbox(key="d_run").value == run.short_hash
    metrics = frame(at, "metric").set_index("metric")["value"]
    assert float(metrics["hm"]) == pytest.approx(run.metrics["hm"], abs=0.01)

    # training curves: one line per numeric history column, values from the registry
    (spec,) = chart_specs(at)
    history = reg.history(run)
    assert [t["name"] for t in spec["data"]] == ["loss", "train_acc", "lr"]
    np.testing.assert_allclose(arr(spec["data"][0]["y"]), history["loss"].to_numpy())
    at.multiselect(key="d_series").set_value(["loss"]).run()
    assert [t["name"] for t in chart_specs(at)[0]["data"]] == ["loss"]

    # similarities: the true-class trace holds cos(image, own class)
    at.radio(key="d_view").set_value("similarity").run()
    no_exceptions(at)
    assert at.selectbox(key="d_sim_split").options == ["base", "new"]
    (spec,) = chart_specs(at)
    stored = load_embeddings(run.dir, "base")
    img = stored["image"].astype(np.float64)
    cls = stored["classes"].astype(np.float64)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    expected = (img @ cls.T)[np.arange(len(img)), stored["labels"]]
    np.testing.assert_allclose(arr(spec["data"][0]["x"]), expected, atol=1e-9)
    assert spec["data"][0]["name"].startswith("true class")

    # embeddings: the projection asked for (t-SNE first), base + new images coloured base vs new
    at.radio(key="d_view").set_value("embeddings").run()
    no_exceptions(at)
    n_images = sum(len(load_embeddings(run.dir, k)["image"]) for k in ("base", "new"))
    for method, label in (("tsne", "t-SNE"), ("umap", "UMAP")):
        at.radio(key="d_emb_method").set_value(method).run()
        no_exceptions(at)
        (s,) = chart_specs(at)  # only the one asked for
        assert s["layout"]["title"]["text"].split(" ·")[0] == label
        assert [t["name"] for t in s["data"]] == ["base classes", "new classes"]
        assert sum(len(arr(t["x"])) for t in s["data"]) == n_images
    at.radio(key="d_emb_color").set_value("class").run()
    (s,) = chart_specs(at)
    assert [t["name"] for t in s["data"]] == EURO_RENAMED  # CoOp's EuroSAT names, one colour each
    assert len({t["marker"]["color"] for t in s["data"]}) == len(EURO_RENAMED)

    # confusion: z is the confusion matrix of the stored predictions, with class names
    at.radio(key="d_view").set_value("confusion").run()
    no_exceptions(at)
    (spec,) = chart_specs(at)
    preds = run.load_predictions("base")
    names = [str(c) for c in load_embeddings(run.dir, "base")["classnames"]]
    np.testing.assert_array_equal(arr(spec["data"][0]["z"]),
                                  confusion_matrix(preds["labels"], preds["preds"], len(names)))
    assert spec["data"][0]["x"] == names == EURO_RENAMED[:3]  # base half, as CoOp renames EuroSAT's classes
    at.selectbox(key="d_conf_split").set_value("new").run()
    assert arr(chart_specs(at)[0]["data"][0]["z"]).sum() == len(run.load_predictions("new")["labels"])

    at.radio(key="d_view").set_value("log").run()
    no_exceptions(at)
    assert "status -> done" in at.code[0].value


def test_run_detail_unknown_run_is_reported(monkeypatch, populated):
    reg, run, _ = populated
    at = app(monkeypatch, reg.root)
    at.query_params["run"] = "ffffffffffff"
    at.run()
    at.switch_page("views/run_detail.py").run()
    no_exceptions(at)
    assert "No run 'ffffffffffff'" in at.error[0].value
    assert at.selectbox(key="d_run").value is None  # no other run in its place
    assert not at.dataframe and not at.get("plotly_chart")
    at.selectbox(key="d_run").set_value(run.short_hash).run()  # picking one shows it
    no_exceptions(at)
    assert not at.error and frame(at, "metric") is not None and at.query_params["run"] in (run.short_hash, [run.short_hash])


def test_results_page_aggregates_and_compares(monkeypatch, populated):
    reg, run, _ = populated
    at = app(monkeypatch, reg.root).run()
    at.switch_page("views/results.py").run()
    no_exceptions(at)
    ours = frame(at, "eurosat · hm")
    assert ours["eurosat · hm"].iloc[0] == f"{run.metrics['hm']:.2f} (n=1)" and ours["seeds"].iloc[0] == 1
    # a 2-shot toy-backbone run has no paper counterpart at that shot count: said, not hidden
    assert "None of the chosen papers" in texts(at)
    assert at.expander[0].label == "Our results without a paper value (3)"  # base/new/hm once, not once per paper
    unmatched = frame(at, "papers without it")
    assert list(unmatched["metric"]) == ["base", "new", "hm"] and "MMRL" in unmatched["papers without it"].iloc[0]
    # a figure of ours over seeds even without any paper value: bars = the run's values
    bars = [t for t in chart_specs(at)[0]["data"] if t["type"] == "bar"]
    assert [t["y"][0] for t in bars] == pytest.approx([run.metrics[m] for m in ("base", "new", "hm")])
    at.multiselect(key="r_methods").set_value([]).run()
    no_exceptions(at)


def test_results_page_difference_to_the_paper(monkeypatch, tmp_path):
    """Runs at 16 shots on EuroSAT meet MMRL / GLAD Table 1 (CoOp base 92.19): difference = ours − paper."""
    reg = Registry(tmp_path / "runs")
    for seed, base in ((1, 90.0), (2, 94.0)):
        r = reg.create_or_get(RunSpec(method="coop", protocol="base_to_novel", datasets=("eurosat",), shots=16,
                                      seed=seed, backbone="toy"))
        r.write_metrics({"base": base, "new": 50.0, "hm": 2 * base * 50 / (base + 50)})
        r.set_status("done")
    at = app(monkeypatch, reg.root).run()
    at.switch_page("views/results.py").run()
    no_exceptions(at)
    table = frame(at, "paper value")
    row = table[(table["paper"] == "MMRL") & (table["metric"] == "base")].iloc[0]
    assert row["ours"] == f"92.00 ± {np.std([90, 94], ddof=1):.2f}" and row["paper value"] == 92.19
    assert row["difference"] == pytest.approx(92.0 - 92.19)
    ours_fig, bar, diff = chart_specs(at)  # ours over seeds, ours vs the paper, ours − paper
    chosen = table[(table["paper"] == at.selectbox(key="r_chart_paper").value)]
    expected = chosen.set_index("metric")["difference"]
    got = {t["name"]: arr(t["y"])[0] for t in diff["data"] if t["type"] == "bar"}
    assert set(got) == {"coop"} and len(diff["data"]) == len(expected)
    assert sorted(arr(t["y"])[0] for t in diff["data"]) == pytest.approx(sorted(expected))
    paper = [t for t in bar["data"] if t["name"] == "paper"]
    assert paper and all(v is not None for t in paper for v in arr(t["y"]))
    assert bar["layout"]["yaxis"]["range"][0] > 0  # zoomed: differences of a few points show


# ------------------------------------------------------------------------------------------------
# launch form
# ------------------------------------------------------------------------------------------------
class FakePopen:
    calls: list = []

    def __init__(self, args, **kwargs):
        FakePopen.calls.append((list(args), kwargs))
        self.pid = 424242

    def poll(self):
        return None


@pytest.fixture
def fake_popen(monkeypatch):
    FakePopen.calls = []
    monkeypatch.setattr(launcher, "POPEN", FakePopen)
    yield FakePopen
    launcher._PROCESSES.pop(424242, None)


def fill_form(at: AppTest, **values) -> AppTest:
    at.multiselect(key="l_datasets").set_value(values.get("datasets", ["eurosat"]))
    at.selectbox(key="l_shots").set_value(values.get("shots", 2))
    at.text_input(key="l_seeds").input(values.get("seeds", "1 2"))
    at.text_input(key="l_backbone").input(values.get("backbone", "wb-tiny-vit"))
    at.selectbox(key="l_device").set_value("cpu")
    at.text_area(key="l_settings").input(values.get("settings", "train.epochs=1\n# a comment\n\nmethod.n_ctx=2"))
    if "root" in values:
        at.text_input(key="l_root").input(values["root"])
    if "preset" in values:
        at.selectbox(key="l_preset").set_value(values["preset"])
    at.checkbox(key="l_force").set_value(values.get("force", False))
    at.form_submit_button[0].click().run()
    no_exceptions(at)
    return at


def test_launch_form_rejects_invalid_input(monkeypatch, tmp_path, fake_popen, populated):
    _, _, data = populated
    at = app(monkeypatch, tmp_path / "runs", data_root=data).run()
    at.switch_page("views/launch.py").run()
    fill_form(at, settings="method.nctx=2")
    assert "no setting 'nctx'" in at.error[0].value and not fake_popen.calls
    fill_form(at, settings="train.epochs=1", seeds="1 x")
    assert "seed 'x'" in at.error[0].value
    fill_form(at, settings="train.epochs=1", seeds="1", datasets=["eurosat", "dtd"])
    assert "base_to_novel takes exactly one dataset" in at.error[0].value
    fill_form(at, settings="train.epochs", seeds="1")
    assert "not KEY=VALUE" in at.error[0].value
    fill_form(at, settings="", seeds="1", root=str(tmp_path / "nowhere"))  # outside the configured roots
    assert "paths must be under the configured roots" in at.error[0].value
    monkeypatch.setenv(launcher.ALLOWED_ROOTS_ENV, str(tmp_path))
    fill_form(at, settings="", seeds="1", root=str(tmp_path / "nowhere"))
    assert "is not a folder" in at.error[0].value
    fill_form(at, settings="", seeds="1", root=str(tmp_path), datasets=["eurosat"])  # no eurosat under it
    assert "dataset 'eurosat' not found" in at.error[0].value
    assert not fake_popen.calls and not at.success


def test_launch_form_starts_the_run_command(monkeypatch, tmp_path, fake_popen, populated):
    _, _, data = populated
    root = tmp_path / "runs"
    at = app(monkeypatch, root, data_root=data).run()
    at.switch_page("views/launch.py").run()
    assert at.text_input(key="l_root").value == str(data)  # prefilled from WORKBENCH_DATA
    fill_form(at)
    assert not at.error and "Started `workbench run`" in at.success[0].value
    ((args, kwargs),) = fake_popen.calls
    assert args == [sys.executable, "-m", "workbench", "run", "--method=coop", "--protocol=base_to_novel",
                    "--dataset", "eurosat", "--shots=2", "--seed", "1", "2", "--backbone=wb-tiny-vit",
                    "--device=cpu", "--set=train.epochs=1", "--set=method.n_ctx=2", f"--root={data.resolve()}",
                    f"--registry={root.resolve()}", "--quiet"]
    assert kwargs["start_new_session"] is True and "shell" not in kwargs
    log = Path(kwargs["stdout"].name)
    assert log.parent == root / "launches" and log.suffix == ".log"
    record = json.loads(log.with_suffix(".json").read_text())
    assert record["pid"] == 424242 and record["args"] == args

    at.switch_page("views/runs.py").run()  # the launch is listed (no run in the registry yet)
    no_exceptions(at)
    assert "No runs yet" in at.info[0].value and "appear here as soon as they register" in texts(at)
    launches = frame(at, "pid")
    assert launches["pid"].tolist() == [424242] and launches["state"].tolist() == ["running"]


def test_launcher_builds_only_the_run_command(monkeypatch, tmp_path, populated):
    _, _, data = populated
    monkeypatch.setenv("WORKBENCH_DATA", str(data))  # a configured root
    req = launcher.request_from_form(method="zeroshot", protocol="cross_dataset", datasets=["toy_objects", "toy_vocab"],
                                     shots="4", seeds="3, 1", backbone="toy", pretrained="", preset="(auto)",
                                     settings="", name="--force; rm -rf /")
    assert launcher.validate(req) == []
    args = launcher.build_command(req, tmp_path)
    assert args[:4] == [sys.executable, "-m", "workbench", "run"]
    assert "--name=--force; rm -rf /" in args and "--force" not in args  # a value is never an option
    assert args[args.index("--seed") + 1:args.index("--seed") + 3] == ["3", "1"]
    # toy datasets live in the rendered toy root: a data root (prefilled from WORKBENCH_DATA) is not passed on
    toy = launcher.request_from_form(method="coop", protocol="few_shot", datasets=["toy_objects"], shots=4,
                                     data_root=str(data))
    assert launcher.validate(toy) == [] and not any(a.startswith("--root") for a in launcher.build_command(toy, tmp_path))

    def errors(**changes):
        base = dict(method="coop", protocol="few_shot", datasets=("eurosat",), shots=4, seeds=(1,),
                    data_root=str(data))
        return " | ".join(launcher.validate(launcher.LaunchRequest(**{**base, **changes})))

    assert errors() == ""
    assert "unknown method 'nope'" in errors(method="nope")
    assert "unknown protocol" in errors(protocol="long_tail")
    assert "unknown dataset(s) 'mnist'" in errors(datasets=("mnist",))
    assert "needs a source dataset" in errors(protocol="cross_dataset")
    assert "shots must be one of 1, 2, 4, 8, 16" in errors(shots=3)
    assert "non-negative" in errors(seeds=(-1,))
    assert "has no preset 'fast'" in errors(preset="fast")
    assert "not a model name" in errors(backbone="--help")
    assert "device 'tpu'" in errors(device="tpu")
    assert "invalid setting: no train setting 'nope'" in errors(settings=("train.nope=1",))
    with pytest.raises(launcher.LaunchError) as info:
        launcher.launch(launcher.LaunchRequest(method="nope", protocol="few_shot", datasets=("mnist",)), tmp_path)
    assert len(info.value.errors) == 2 and not (tmp_path / "launches").exists()


FORCE_FORM = dict(seeds="1", preset="toy", settings="train.epochs=2\ntrain.batch_size=4", force=True)


def finished_run(root: Path, data: Path, status: str = "done", seed: int = 1):
    """A run in `root` with exactly the spec the form FORCE_FORM builds (for `seed`)."""
    from workbench.protocols.builder import build_specs

    (spec,) = build_specs(["coop"], "base_to_novel", [("eurosat",)], shots=2, seeds=(seed,), backbone="wb-tiny-vit",
                          presets={"coop": "toy"}, settings=["train.epochs=2", "train.batch_size=4"], strict=True,
                          data_root=str(data))
    run = Registry(root).create_or_get(spec)
    run.set_status(status)
    return run


def test_rerun_if_done_asks_before_deleting_finished_runs(monkeypatch, tmp_path, fake_popen, populated):
    _, _, data = populated
    root = tmp_path / "runs"
    at = app(monkeypatch, root, data_root=data)  # sets WORKBENCH_DATA, which the spec builder reads
    run = finished_run(root, data)
    at.run()
    at.switch_page("views/launch.py").run()
    fill_form(at, **FORCE_FORM)
    assert not fake_popen.calls and not at.success  # nothing started yet
    (warning,) = at.warning
    assert "delete and recompute **1 finished run(s)**" in warning.value and run.short_hash in warning.value
    assert at.button(key="l_force_confirm").label == "Delete and recompute 1 finished run(s)"
    at.button(key="l_force_cancel").click().run()
    no_exceptions(at)
    assert not fake_popen.calls and not at.warning and Registry(root).get(run.hash).status == "done"

    fill_form(at, **FORCE_FORM)
    at.button(key="l_force_confirm").click().run()
    no_exceptions(at)
    ((args, _),) = fake_popen.calls
    assert args[-3:] == ["--force", f"--registry={root.resolve()}", "--quiet"]
    assert "Started `workbench run`" in at.success[0].value and not at.warning


def test_rerun_if_done_names_other_runs_it_resets_and_skips_asking_when_none_exist(monkeypatch, tmp_path, fake_popen,
                                                                                  populated):
    _, _, data = populated
    root = tmp_path / "runs"
    at = app(monkeypatch, root, data_root=data).run()
    at.switch_page("views/launch.py").run()
    fill_form(at, **FORCE_FORM)  # no run of this request exists: nothing to confirm, nothing to force
    ((args, _),) = fake_popen.calls
    assert "--force" not in args and not at.warning

    fake_popen.calls.clear()
    run = finished_run(root, data, status="interrupted")
    fill_form(at, **FORCE_FORM)
    assert not fake_popen.calls
    assert "**0 finished run(s)**" in at.warning[0].value and "1 interrupted run(s)" in at.warning[0].value
    assert run.short_hash in at.warning[0].value
    assert at.button(key="l_force_confirm").label == "Delete and recompute 1 existing run(s)"


def test_rerun_if_done_asks_again_when_more_runs_finished_meanwhile(monkeypatch, tmp_path, fake_popen, populated):
    _, _, data = populated
    root = tmp_path / "runs"
    at = app(monkeypatch, root, data_root=data)
    finished_run(root, data, seed=1)
    at.run()
    at.switch_page("views/launch.py").run()
    fill_form(at, **{**FORCE_FORM, "seeds": "1 2"})
    assert "**1 finished run(s)**" in at.warning[0].value
    later = finished_run(root, data, seed=2)  # finishes before the click
    at.button(key="l_force_confirm").click().run()
    no_exceptions(at)
    assert not fake_popen.calls and "**2 finished run(s)**" in at.warning[0].value and later.short_hash in at.warning[0].value
    at.button(key="l_force_confirm").click().run()
    assert len(fake_popen.calls) == 1 and "--force" in fake_popen.calls[0][0]


def test_rerun_if_done_counts_the_runs_of_the_data_root_in_the_form(monkeypatch, tmp_path, fake_popen, populated):
    """The data root is part of a run's identity: the count uses the form's root, not WORKBENCH_DATA."""
    _, _, data = populated
    other = tmp_path / "other_data"
    make_eurosat(other)
    monkeypatch.setenv(launcher.ALLOWED_ROOTS_ENV, str(tmp_path))
    root = tmp_path / "runs"
    at = app(monkeypatch, root, data_root=data)
    run = finished_run(root, other)
    at.run()
    at.switch_page("views/launch.py").run()
    fill_form(at, **FORCE_FORM, root=str(other))
    assert not fake_popen.calls and run.short_hash in at.warning[0].value


# ------------------------------------------------------------------------------------------------
# every state of a run, many runs, Compare, method inspectors
# ------------------------------------------------------------------------------------------------
def fake_run(reg: Registry, seed: int, status: str, method: str = "coop", metrics: dict | None = None, **spec):
    run = reg.create_or_get(RunSpec(method=method, protocol="base_to_novel", datasets=("eurosat",), shots=16,
                                    seed=seed, backbone="toy", **spec))
    if metrics:
        run.write_metrics(metrics)
    run.set_status(status, error="RuntimeError: boom" if status == "failed" else None)
    return run


@pytest.mark.parametrize("status", ["pending", "running", "failed", "interrupted"])
def test_pages_in_every_run_state(monkeypatch, tmp_path, status):
    reg = Registry(tmp_path / "runs")
    run = fake_run(reg, 1, status)
    at = app(monkeypatch, reg.root).run()
    no_exceptions(at)
    assert status in frame(at, "progress")["status"].iloc[0]
    assert ("refreshing every 2 s" in texts(at)) == (status in ("pending", "running"))
    at.query_params["run"] = run.short_hash
    at.switch_page("views/run_detail.py").run()
    no_exceptions(at)
    assert at.selectbox(key="d_run").value == run.short_hash
    if status == "failed":
        assert "RuntimeError: boom" in at.error[0].value
    for page in ("views/results.py", "views/compare.py"):
        at.switch_page(page).run()
        no_exceptions(at)
        assert at.info  # nothing finished / one run only: said so


def test_runs_page_groups_a_sweeps_runs_with_its_progress(monkeypatch, tmp_path):
    from workbench.runs.groups import write_group

    reg = Registry(tmp_path / "runs")
    in_sweep = [fake_run(reg, seed, "done", metrics={"base": 80.0, "new": 70.0, "hm": 74.67}) for seed in (1, 2, 3)]
    in_sweep.append(fake_run(reg, 4, "running"))
    outside = fake_run(reg, 9, "done", method="kgcoop", metrics={"base": 1.0, "new": 1.0, "hm": 1.0})
    not_started = ["a" * 64, "b" * 64]  # in the sweep file, no job has registered them yet
    write_group(reg.root, "grid", [r.hash for r in in_sweep] + not_started, source="/tmp/grid.yaml")
    at = app(monkeypatch, reg.root).run()
    no_exceptions(at)
    assert len(frame(at, "progress")) == 5  # "All runs" first
    at.selectbox(key="f_sweep").set_value("grid").run()
    no_exceptions(at)
    assert sorted(frame(at, "progress")["run"]) == sorted(r.short_hash for r in in_sweep)
    assert outside.short_hash not in set(frame(at, "progress")["run"])
    [bar] = at.get("progress")
    assert "3 of 6 runs done" in bar.proto.text and bar.proto.value == 50  # percent
    assert "1 running · 2 pending" in texts(at)


def test_run_picker_follows_the_status(monkeypatch, tmp_path):
    reg = Registry(tmp_path / "runs")
    run = fake_run(reg, 1, "running")
    at = app(monkeypatch, reg.root)
    at.query_params["run"] = run.short_hash
    at.run()
    at.switch_page("views/run_detail.py").run()
    assert "running" in at.selectbox(key="d_run").options[0]
    run.write_metrics({"base": 90.0, "new": 70.0, "hm": 78.75})
    run.set_status("done")
    at.run()  # what the status panel's rerun does once it sees the run finish
    no_exceptions(at)
    assert at.selectbox(key="d_run").options[0].endswith("done") and "running" not in at.selectbox(key="d_run").options[0]


def test_many_runs(monkeypatch, tmp_path):
    reg = Registry(tmp_path / "runs")
    for seed in range(1, 31):
        fake_run(reg, seed, "done", metrics={"base": 80.0 + seed % 5, "new": 70.0, "hm": 75.0}, name=f"r{seed}")
    at = app(monkeypatch, reg.root).run()
    no_exceptions(at)
    table = frame(at, "progress")
    assert len(table) == 30 and set(table["name"]) == {f"r{s}" for s in range(1, 31)}
    at.switch_page("views/results.py").run()
    no_exceptions(at)
    assert frame(at, "seeds")["seeds"].iloc[0] == 30


def test_compare_two_runs_and_two_groups(monkeypatch, tmp_path):
    from scipy.stats import ttest_rel

    reg = Registry(tmp_path / "runs")
    coop = {1: 90.0, 2: 91.0, 3: 93.0}
    mmrl = {1: 92.0, 2: 92.5, 3: 96.0, 4: 50.0}  # seed 4 has no partner
    runs = {}
    for seed, v in coop.items():
        runs[("coop", seed)] = fake_run(reg, seed, "done", metrics={"hm": v})
    for seed, v in mmrl.items():
        runs[("mmrl", seed)] = fake_run(reg, seed, "done", method="mmrl", metrics={"hm": v})
    a, b = runs[("coop", 1)], runs[("mmrl", 1)]
    at = app(monkeypatch, reg.root)
    at.query_params["runs"] = f"{a.short_hash},{b.short_hash}"
    at.run()
    at.switch_page("views/compare.py").run()
    no_exceptions(at)
    table = frame(at, "Δ hm")
    assert list(table["run"]) == [a.short_hash, b.short_hash] and list(table["Δ hm"]) == [0.0, 2.0]
    diff = frame(at, "setting").set_index("setting")
    assert diff.loc["method", a.short_hash] == "coop" and diff.loc["method", b.short_hash] == "mmrl"

    at.radio(key="c_mode").set_value("groups").run()
    no_exceptions(at)
    labels = at.selectbox(key="c_group_a").options
    at.selectbox(key="c_group_a").set_value(next(o for o in labels if o.startswith("coop")))
    at.selectbox(key="c_group_b").set_value(next(o for o in labels if o.startswith("mmrl"))).run()
    no_exceptions(at)
    test = frame(at, "std of differences").set_index("metric").loc["hm"]
    oracle = ttest_rel([mmrl[s] for s in (1, 2, 3)], [coop[s] for s in (1, 2, 3)])
    assert test["n"] == 3 and test["seeds"] == "1,2,3"
    assert test["t"] == pytest.approx(oracle.statistic) and test["p"] == pytest.approx(oracle.pvalue)
    summary = frame(at, "B − A").set_index("metric").loc["hm"]
    assert summary["A n"] == 3 and summary["B n"] == 4


def test_method_inspector_plots_come_from_the_method_class(monkeypatch, populated):
    from workbench.methods import get_method_class

    reg, run, _ = populated
    monkeypatch.setattr(get_method_class("coop"), "plots",
                        ({"kind": "heatmap", "columns": ["loss", "train_acc"], "title": "declared heatmap"},),
                        raising=False)
    at = app(monkeypatch, reg.root)
    at.query_params["run"] = run.short_hash
    at.run()
    at.switch_page("views/run_detail.py").run()
    no_exceptions(at)
    specs = chart_specs(at)
    heat = [s for s in specs if s["layout"].get("title", {}).get("text") == "declared heatmap"]
    assert len(heat) == 1
    history = reg.history(run).sort_values("epoch")
    np.testing.assert_allclose(arr(heat[0]["data"][0]["z"]), history[["loss", "train_acc"]].to_numpy().T)


def test_constant_series_are_shown_as_settings(monkeypatch, tmp_path):
    reg = Registry(tmp_path / "runs")
    run = fake_run(reg, 1, "done", method="mmrl", metrics={"hm": 80.0})
    for epoch, (loss, norm) in enumerate(((2.0, 0.5), (1.5, 0.7)), start=1):
        run.log_epoch(epoch, {"loss": loss, "alpha": 0.7, "lambda": 0.5, "token_norm.vision.1": norm})
    at = app(monkeypatch, reg.root)
    at.query_params["run"] = run.short_hash
    at.run()
    at.switch_page("views/run_detail.py").run()
    no_exceptions(at)
    assert at.multiselect(key="d_series").options == ["loss", "token_norm.vision.1"]  # only what changes
    constants = frame(at, "series").set_index("series")["value"]
    assert constants.to_dict() == {"alpha": 0.7, "lambda": 0.5}


def test_every_table_has_a_csv_download_and_figures_download_as_chosen(monkeypatch, tmp_path):
    reg = Registry(tmp_path / "runs")
    for seed in (1, 2):
        fake_run(reg, seed, "done", metrics={"base": 90.0 + seed, "new": 70.0, "hm": 78.0})
    at = app(monkeypatch, reg.root).run()
    at.radio(key="fig_format").set_value("svg")
    at.switch_page("views/results.py").run()
    no_exceptions(at)
    shown = len(at.dataframe)
    assert shown >= 3 and len(at.get("download_button")) >= shown  # a CSV per table (+ the full results CSV)
    config = json.loads(at.get("plotly_chart")[0].proto.config)
    assert config["toImageButtonOptions"]["format"] == "svg"


def test_results_hide_stale_runs_beside_current_ones(monkeypatch, populated, tmp_path):
    """A run of an older version next to a current one: one row by default, both on request."""
    import shutil

    reg, run, _ = populated
    root = tmp_path / "runs"
    shutil.copytree(reg.root, root)
    copy = Registry(root)
    fake_run(copy, 1, "done", metrics={"base": 50.0, "new": 50.0, "hm": 50.0})  # no versions recorded: stale
    at = app(monkeypatch, root).run()
    at.switch_page("views/results.py").run()
    no_exceptions(at)
    assert len(frame(at, "seeds")) == 1
    at.toggle(key="r_stale").set_value(True).run()
    no_exceptions(at)
    assert len(frame(at, "seeds")) == 2
