"""The one spec builder: settings applied or refused (never ignored), identity from the resolved settings
and behaviour versions, one spec for one request whoever builds it, protocol metadata in the launcher."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.methods import get_method_class
from workbench.protocols import build_spec, build_specs
from workbench.protocols.builder import SpecError, check_resolved, stale_reason
from workbench.runs import RunSpec

REPO = Path(__file__).resolve().parents[1]


def test_nested_and_flat_settings_are_applied():
    nested = build_spec("coop", settings={"train": {"epochs": 1, "lr": "1e-3"}, "method": {"n_ctx": 2}})
    flat = build_spec("coop", settings={"train.epochs": 1, "train.lr": 0.001, "method.n_ctx": 2})
    strings = build_spec("coop", settings=["train.epochs=1", "train.lr=1e-3", "method.n_ctx=2"])
    assert nested.train_config["epochs"] == 1 and nested.method_config["n_ctx"] == 2
    assert nested.train_config["lr"] == 0.001  # YAML reads 1e-3 as a string; the float field takes it
    assert nested.hash == flat.hash == strings.hash


@pytest.mark.parametrize("settings, said", [
    ({"epochs": 1}, "did you mean train.epochs"),
    ({"train.epoch": 1}, "did you mean 'train.epochs'"),
    ({"method.nctx": 3}, "coop has no setting 'nctx'"),
    ({"optim.lr": 1}, "unknown namespace 'optim'"),
    ({"train.epochs": "abc"}, "train.epochs expects an integer"),
    ({"train.epochs": 1.5}, "train.epochs expects an integer"),
    ({"train.crop_scale": {"a": 1}}, "train.crop_scale expects"),
    ({"train.flip": "maybe"}, "train.flip expects true or false"),
])
def test_bad_settings_are_refused_with_the_setting_named(settings, said):
    with pytest.raises(SpecError) as info:
        build_spec("coop", settings=settings)
    assert said in str(info.value)


def test_runspec_refuses_overrides_and_execute_refuses_unresolved_specs():
    with pytest.raises(ValueError, match="build_spec"):
        RunSpec(method="coop", protocol="base_to_novel", datasets=("toy_objects",), overrides={"train": {"epochs": 1}})
    partial = RunSpec(method="coop", protocol="base_to_novel", datasets=("toy_objects",), method_config={"n_ctx": 4})
    with pytest.raises(SpecError):
        check_resolved(partial)
    check_resolved(build_spec("coop"))  # a built spec passes, also after a JSON round trip
    check_resolved(RunSpec.from_json(build_spec("coop", settings={"train.epochs": 3}).to_json()))


def test_hash_covers_preset_values_and_behaviour_versions(monkeypatch):
    import workbench.engine.versions as versions

    cls = get_method_class("coop")
    before = build_spec("coop", preset="toy")
    assert build_spec("coop", preset="toy").hash == before.hash  # unchanged request, unchanged identity
    with monkeypatch.context() as m:  # same preset name, other values
        toy = cls.presets["toy"]
        m.setattr(cls, "presets", {**cls.presets, "toy": dataclasses.replace(toy, train={**toy.train, "epochs": 99})})
        assert build_spec("coop", preset="toy").hash != before.hash
    with monkeypatch.context() as m:
        m.setattr(cls, "version", cls.version + 1)
        assert build_spec("coop", preset="toy").hash != before.hash and "method" in stale_reason(before)
    with monkeypatch.context() as m:
        m.setattr(versions, "ENGINE_VERSION", versions.ENGINE_VERSION + 1)
        assert build_spec("coop", preset="toy").hash != before.hash and "engine" in stale_reason(before)
        with pytest.raises(SpecError, match="stale"):
            check_resolved(before)
    assert build_spec("coop", preset="toy").hash == before.hash and stale_reason(before) is None


def test_legacy_specs_keep_their_hash_and_count_as_stale():
    old = {"method": "coop", "method_config": {"preset": "toy"}, "protocol": "base_to_novel",
           "datasets": ["toy_objects"], "shots": 16, "seed": 1, "backbone": "toy", "pretrained": None,
           "overrides": {"train.epochs": 2}, "name": None}
    payload = {k: v for k, v in old.items() if k != "name"}
    old_hash = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    spec = RunSpec.from_dict(old)
    assert spec.is_legacy and spec.hash == old_hash and spec.preset == "toy" and spec.train_config == {"epochs": 2}
    assert "before runs recorded" in stale_reason(spec)
    assert RunSpec.from_json(spec.to_json()).hash == old_hash
    with pytest.raises(SpecError, match="older workbench"):
        check_resolved(spec)


def test_zero_shot_is_one_run_whoever_asks():
    from workbench.demo import demo_specs
    from workbench.notebooks_cli import notebook_specs
    from workbench.run_cli import specs_from_args
    from workbench.cli import build_parser

    demo = [s for s in demo_specs(("zeroshot", "coop"), (1, 2, 3)) if s.method == "zeroshot"]
    notebook = [s for s in notebook_specs(["zeroshot"], "base_to_novel", ["toy_objects"], [16], [1, 2, 3], epochs=5)]
    args = build_parser().parse_args(["run", "--method", "zeroshot", "--seed", "1", "2", "3"])
    cli = specs_from_args(args)
    assert len(demo) == len(notebook) == len(cli) == 1
    assert demo[0].hash == notebook[0].hash == cli[0].hash and demo[0].shots is None
    coop_demo = [s for s in demo_specs(("coop",), (2,))]
    coop_cli = specs_from_args(build_parser().parse_args(["run", "--method", "coop", "--seed", "2"]))
    assert [s.hash for s in coop_demo] == [s.hash for s in coop_cli]


def test_training_settings_for_a_method_that_trains_nothing_are_refused_when_asked_directly():
    with pytest.raises(SpecError, match="zeroshot trains nothing"):
        build_spec("zeroshot", settings={"train.epochs": 2})
    with pytest.raises(SpecError, match="zeroshot trains nothing"):
        build_specs(["zeroshot"], "base_to_novel", ["toy_objects"], settings={"train.epochs": 2}, strict=True)
    grid = build_specs(["zeroshot", "coop"], "base_to_novel", ["toy_objects"], settings={"train.epochs": 2})
    assert [s.method for s in grid] == ["zeroshot", "coop"] and grid[1].train_config["epochs"] == 2
    assert build_spec("zeroshot", settings={"train.eval_batch_size": 64}).train_config["eval_batch_size"] == 64


def test_dataset_count_comes_from_the_protocol():
    with pytest.raises(SpecError, match="exactly one dataset"):
        build_spec("coop", "base_to_novel", ("toy_objects", "toy_vocab"))
    with pytest.raises(SpecError, match="at least 1 target"):
        build_spec("coop", "cross_dataset", ("toy_objects",))
    assert build_spec("coop", "cross_dataset", ("toy_objects", "toy_vocab")).datasets == ("toy_objects", "toy_vocab")


def test_a_protocol_registered_with_its_own_settings_drives_the_builder_and_the_launcher():
    from workbench import launcher
    from workbench.protocols import PROTOCOLS
    from workbench.protocols.base import register_protocol

    @dataclasses.dataclass
    class Views:
        views: int = 8
        steps: int = 1

    register_protocol("unit_tta", metrics=("top1",), settings=Views, max_datasets=3, min_datasets=2)(lambda ctx: {})
    try:
        spec = build_spec("coop", "unit_tta", ("toy_objects", "toy_vocab"), settings={"unit_tta.views": 4})
        assert spec.protocol_settings == {"views": 4, "steps": 1}
        assert spec.resolved_settings()["unit_tta.views"] == 4
        check_resolved(spec)
        with pytest.raises(SpecError, match="no unit_tta setting 'view'"):
            build_spec("coop", "unit_tta", ("toy_objects", "toy_vocab"), settings={"unit_tta.view": 4})
        ok = launcher.request_from_form(method="coop", protocol="unit_tta", datasets=["toy_objects", "toy_vocab"],
                                        shots=16, settings="unit_tta.steps=2")
        assert launcher.validate(ok) == []
        one = launcher.request_from_form(method="coop", protocol="unit_tta", datasets=["toy_objects"], shots=16)
        assert any("at least 1 target" in e for e in launcher.validate(one))
        bad = launcher.request_from_form(method="coop", protocol="unit_tta", datasets=["toy_objects", "toy_vocab"],
                                         shots=16, settings="unit_tta.steps=many")
        assert any("unit_tta.steps expects an integer" in e for e in launcher.validate(bad))
    finally:
        PROTOCOLS.pop("unit_tta", None)


def test_launcher_refuses_unknown_and_bare_settings():
    from workbench import launcher

    for text, said in (("train.epoch=1", "train.epochs"), ("epochs=1", "train.epochs"), ("train.lr=fast", "train.lr")):
        req = launcher.request_from_form(method="coop", protocol="base_to_novel", datasets=["toy_objects"], shots=16,
                                         settings=text)
        errors = launcher.validate(req)
        assert errors and said in " ".join(errors), errors


def test_help_does_not_import_torch():
    code = ("import sys\nfrom workbench.cli import build_parser\nbuild_parser().format_help()\n"
            "heavy = [m for m in ('torch', 'open_clip', 'pandas', 'streamlit') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_methods_list_answers_from_its_index_without_torch(tmp_path):
    env = {"WORKBENCH_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    first = subprocess.run([sys.executable, "-m", "workbench", "methods"], cwd=REPO, env=env, capture_output=True,
                           text=True, check=True)
    assert "coop: presets" in first.stdout
    code = ("import sys\nfrom workbench.cli import main\nmain(['methods'])\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    second = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            check=True)
    assert second.stdout.splitlines()[-1] == "NO TORCH" and "coop: presets" in second.stdout


def test_methods_show_prints_settings_presets_and_parameter_count(capsys):
    from workbench.cli import main

    assert main(["methods", "show", "coop", "--backbone", "ViT-B-16-quickgelu"]) == 0
    out = capsys.readouterr().out
    assert "method.ctx_init: str = ''  # e.g. \"a photo of a\"" in out
    assert "train.lr: float" in out and "base_to_novel:" in out
    # CoOp's default preset: 16 context tokens of width 512 on ViT-B/16 = 8,192 (CoOp paper)
    assert "trainable parameters on ViT-B-16-quickgelu" in out and " 8,192 of " in out


def test_stale_runs_are_marked_in_the_registry_the_cli_and_the_app(tmp_path, capsys, monkeypatch):
    from workbench.cli import main
    from workbench.runs import Registry

    reg = Registry(tmp_path / "runs")
    fresh = reg.create_or_get(build_spec("coop", settings={"train.epochs": 1}))
    legacy = reg.create_or_get(RunSpec.from_dict({
        "method": "coop", "method_config": {"preset": "toy"}, "protocol": "base_to_novel",
        "datasets": ["toy_objects"], "shots": 16, "seed": 1, "backbone": "toy", "pretrained": None,
        "overrides": {"train.epochs": 2}, "name": None}))
    for run in (fresh, legacy):
        run.write_metrics({"base": 80.0})
        run.set_status("done")
    stale = reg.list().set_index("short_hash")["stale"]
    assert stale[fresh.short_hash] == "" and "before runs recorded" in stale[legacy.short_hash]
    assert main(["runs", "--root", str(reg.root), "list"]) == 0
    out = capsys.readouterr().out
    assert "done (stale)" in out and out.count("(stale)") == 1 and "1 stale run(s)" in out
    assert main(["runs", "--root", str(reg.root), "show", fresh.short_hash]) == 0
    shown = capsys.readouterr().out
    assert "train.epochs = 1" in shown and "method.n_ctx = 4" in shown and "versions: engine" in shown
    assert main(["runs", "--root", str(reg.root), "show", legacy.short_hash]) == 0
    assert "stale: made before runs recorded" in capsys.readouterr().out

    import importlib.util
    import sys

    sys.path.insert(0, str(REPO / "app"))
    try:
        if importlib.util.find_spec("streamlit") is None:
            return
        import appcore
        table = appcore.runs_display_table(reg.list())
    finally:
        sys.path.remove(str(REPO / "app"))
    marked = dict(zip(table["run"], table["status"]))
    assert marked[legacy.short_hash].endswith("done (stale)") and not marked[fresh.short_hash].endswith("(stale)")


@pytest.mark.parametrize("kwargs, said", [
    ({"settings": {"train.epochs": 0}}, "train.epochs must be at least 1"),
    ({"settings": {"train.epochs": -3}}, "train.epochs must be at least 1"),
    ({"settings": {"train.batch_size": 0}}, "train.batch_size must be at least 1"),
    ({"settings": {"train.lr": 0}}, "train.lr must be positive"),
    ({"settings": {"train.crop_scale": [0.9, 0.2]}}, "train.crop_scale must be"),
    ({"settings": {"train.optimizer": "adam"}}, "train.optimizer must be one of sgd, adamw"),
    ({"seed": -1}, "seed must be a whole number from 0"),
    ({"shots": 100000}, "shots must be a whole number from 1 to"),
    ({"shots": 0}, "shots must be a whole number from 1 to"),
    ({"datasets": "mnist"}, "unknown dataset(s) 'mnist'"),
    ({"datasets": ("toy_objects", "toy_objects"), "protocol": "cross_dataset"}, "listed twice"),
])
def test_out_of_range_requests_are_refused_where_the_spec_is_built(kwargs, said):
    kwargs = {"protocol": "base_to_novel", "datasets": "toy_objects", **kwargs}
    with pytest.raises(SpecError) as info:
        build_spec("coop", kwargs.pop("protocol"), kwargs.pop("datasets"), **kwargs)
    assert said in str(info.value)


def test_the_data_root_and_its_split_file_are_part_of_the_identity(tmp_path, monkeypatch):
    from data_fixtures import make_eurosat

    first, second = tmp_path / "a", tmp_path / "b"
    make_eurosat(first)
    make_eurosat(second)
    a = build_spec("coop", "base_to_novel", "eurosat", data_root=str(first))
    b = build_spec("coop", "base_to_novel", "eurosat", data_root=str(second))
    assert a.hash != b.hash and a.data_root == str(first.resolve())
    assert build_spec("coop", "base_to_novel", "eurosat", data_root=str(first)).hash == a.hash
    split = next((first / "eurosat").glob("split_zhou_*.json"))
    split.write_text(split.read_text().replace("Forest", "Forest "))  # the same path, other data
    changed = build_spec("coop", "base_to_novel", "eurosat", data_root=str(first))
    assert changed.hash != a.hash
    with pytest.raises(SpecError, match="changed since it was built"):
        check_resolved(a)
    monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    with pytest.raises(SpecError, match="needs a data root"):
        build_spec("coop", "base_to_novel", "eurosat")


def test_the_same_command_on_other_data_is_not_already_done(tmp_path, capsys):
    from data_fixtures import make_eurosat
    from workbench.cli import main

    for name in ("a", "b"):
        make_eurosat(tmp_path / name)
    args = ["run", "--method", "zeroshot", "--dataset", "eurosat", "--backbone", "wb-tiny-vit",
            "--registry", str(tmp_path / "runs"), "--quiet"]
    assert main(args + ["--root", str(tmp_path / "a")]) == 0
    assert main(args + ["--root", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "already done" not in out and out.count(": done in") == 2


@pytest.mark.parametrize("spec_kwargs, device, said", [
    ({}, "cuda:7", "is not available"),
    ({}, "tpu", "is not one of"),
    ({"backbone": "ViT-Nope-99"}, "cpu", "unknown open_clip model"),
    ({"backbone": "ViT-B-16-quickgelu", "pretrained": "openai"}, "cpu", "cannot be downloaded"),
])
def test_bad_devices_and_backbones_fail_before_a_run_folder_exists(tmp_path, monkeypatch, spec_kwargs, device, said):
    from workbench.runs import Registry
    from workbench.runs.execute import execute

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = build_spec("coop", settings={"train.epochs": 1}, **spec_kwargs)
    reg = Registry(tmp_path / "runs")
    with pytest.raises(Exception) as info:
        execute(spec, reg, device=device, progress=False)
    assert said in str(info.value)
    assert reg.list().empty and not list((tmp_path / "runs").glob("*/spec.json"))
