"""Protocols end to end on fabricated CoOp-layout data with the tiny random-init backbone:
metrics, predictions, skip-if-done, force, resume after a killed process, the run command."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import make_eurosat, make_imagenet_family
from workbench.analysis.metrics import accuracy, harmonic_mean
from workbench.cli import main as cli_main
from workbench.protocols import build_spec
from workbench.runs import Registry
from workbench.runs.execute import execute

TINY = "wb-tiny-vit"


@pytest.fixture
def data_root(tmp_path):
    make_eurosat(tmp_path)
    make_imagenet_family(tmp_path)
    return tmp_path


def coop_spec(data_root, epochs=2, seed=1):
    return build_spec("coop", "base_to_novel", "eurosat", shots=4, seed=seed, backbone=TINY, preset="toy",
                      data_root=str(data_root),
                      settings={"train.epochs": epochs, "train.batch_size": 4})


def test_base_to_novel_records_metrics_and_predictions(data_root, tmp_path):
    reg = Registry(tmp_path / "runs")
    run = execute(coop_spec(data_root), reg, data_root=str(data_root), progress=False)
    m = run.metrics
    assert run.status == "done" and m["hm"] == pytest.approx(harmonic_mean(m["base"], m["new"]))
    preds = run.load_predictions()
    assert m["base"] == pytest.approx(accuracy(preds["base"]["labels"], preds["base"]["preds"]))
    assert m["new"] == pytest.approx(accuracy(preds["new"]["labels"], preds["new"]["preds"]))
    # the corrupt Forest test image (a base class) is skipped and counted, not fatal
    assert m["base_skipped_images"] == 1 and len(preds["base"]["labels"]) == 3 * 2 - 1
    history = reg.history(run)
    assert list(history["epoch"]) == [0, 1] and {"loss", "train_acc", "lr"} <= set(history.columns)


def test_done_runs_are_skipped_and_force_reruns(data_root, tmp_path):
    reg = Registry(tmp_path / "runs")
    first = execute(coop_spec(data_root), reg, data_root=str(data_root), progress=False)
    stamp = (first.dir / "metrics.json").stat().st_mtime_ns
    again = execute(coop_spec(data_root), reg, data_root=str(data_root), progress=False)
    assert again.hash == first.hash and (again.dir / "metrics.json").stat().st_mtime_ns == stamp
    forced = execute(coop_spec(data_root), reg, data_root=str(data_root), progress=False, force=True)
    assert (forced.dir / "metrics.json").stat().st_mtime_ns != stamp
    assert forced.metrics["base"] == first.metrics["base"]  # same seed, same result


RUNNER = """
import json, os, signal, sys
from workbench.runs import Registry, RunHandle, RunSpec
from workbench.runs.execute import execute
if len(sys.argv) > 4:  # die by SIGKILL right after the checkpoint of this epoch: a crash at a known point
    kill_after, save = int(sys.argv[4]), RunHandle.save_checkpoint
    def save_then_die(self, state, epoch, **kw):
        path = save(self, state, epoch, **kw)
        if epoch == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return path
    RunHandle.save_checkpoint = save_then_die
spec = RunSpec.from_dict(json.loads(sys.argv[1]))
run = execute(spec, Registry(sys.argv[2]), data_root=sys.argv[3], progress=False)
print(json.dumps(run.metrics))
"""


def test_killed_run_resumes_to_the_same_result(data_root, tmp_path):
    spec = coop_spec(data_root, epochs=6)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [sys.executable, "-c", RUNNER, json.dumps(spec.to_dict()), str(tmp_path / "killed"), str(data_root)]
    killed = subprocess.run(args + ["2"], env=env, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "killed" / spec.short_hash / "checkpoints").glob("*.pt"))[-1:] \
        == ["epoch_0002.pt"]
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=True)
    resumed_metrics = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert "resumed_from_epoch" in resumed_metrics
    straight = execute(spec, Registry(tmp_path / "straight"), data_root=str(data_root), progress=False)
    for key in ("base", "new", "hm"):
        assert resumed_metrics[key] == straight.metrics[key]
    killed_reg = Registry(tmp_path / "killed")
    a = killed_reg.get(spec.hash).load_predictions()
    b = straight.load_predictions()
    assert np.array_equal(a["new"]["logits"], b["new"]["logits"])
    assert list(killed_reg.history(spec.hash)["loss"]) == list(straight.history()["loss"])


def test_domain_generalization_and_cross_dataset_zero_shot(data_root, tmp_path):
    reg = Registry(tmp_path / "runs")
    dg = execute(build_spec("zeroshot", "domain_generalization", ("imagenet", "imagenetv2", "imagenet_a"), shots=2,
                            backbone=TINY, data_root=str(data_root)),
                 reg, data_root=str(data_root), progress=False)
    m = dg.metrics
    assert set(m) >= {"imagenet", "imagenetv2", "imagenet_a", "average"}
    assert m["average"] == pytest.approx((m["imagenetv2"] + m["imagenet_a"]) / 2)
    assert len(dg.load_predictions("imagenet_a")["labels"]) == 2 * 3  # the 2-class subset of ImageNet-A
    cross = execute(build_spec("zeroshot", "cross_dataset", ("imagenet", "fgvc_aircraft"), shots=2, backbone=TINY,
                               data_root=str(data_root)),
                    reg, data_root=str(data_root), progress=False)
    assert cross.metrics["average"] == cross.metrics["fgvc_aircraft"]


def test_run_command(data_root, tmp_path, capsys):
    code = cli_main(["run", "--method", "coop", "--dataset", "eurosat", "--shots", "2", "--seed", "1", "2",
                     "--backbone", TINY, "--set", "train.epochs=1", "--set", "method.n_ctx=2", "--root",
                     str(data_root), "--registry", str(tmp_path / "runs"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and out.count(" coop eurosat shots=2 seed=") == 2 and "hm" in out
    runs = Registry(tmp_path / "runs").list()
    assert sorted(runs["seed"]) == [1, 2] and set(runs["status"]) == {"done"}
    spec = Registry(tmp_path / "runs").get(runs["hash"].iloc[0]).spec
    assert spec.train_config["epochs"] == 1 and spec.method_config["n_ctx"] == 2  # applied, not ignored
    for bad, said in (("method.nctx=2", "no setting 'nctx'"), ("n_ctx=2", "did you mean method.n_ctx"),
                      ("train.lr=abc", "train.lr expects a number")):
        assert cli_main(["run", "--method", "coop", "--set", bad, "--registry", str(tmp_path / "r2")]) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "r2").exists() or Registry(tmp_path / "r2").list().empty


def test_embeddings_are_stored_for_plots(data_root, tmp_path):
    from workbench.runs import load_embeddings

    run = execute(build_spec("zeroshot", "few_shot", "eurosat", shots=2, backbone=TINY, data_root=str(data_root)),
                  Registry(tmp_path / "runs"),
                  data_root=str(data_root), progress=False)
    stored = load_embeddings(run.dir, "test")
    preds = run.load_predictions("test")
    assert stored["image"].shape[0] == len(preds["labels"]) and stored["classes"].shape[0] == 5
    # the stored embeddings reproduce the stored logits: scale * cos(image, class)
    import torch
    img = torch.nn.functional.normalize(torch.tensor(stored["image"]).float(), dim=-1)
    cls = torch.nn.functional.normalize(torch.tensor(stored["classes"]).float(), dim=-1)
    assert np.array_equal((img @ cls.T).argmax(-1).numpy(), preds["preds"])


def test_toy_presets_follow_the_architecture_not_the_name(tmp_path):
    from workbench.data.toy.pretrain import META_FILE, MODEL_NAME
    from workbench.protocols.builder import resolve_preset

    built = tmp_path / "tiny"
    built.mkdir()
    (built / META_FILE).write_text(json.dumps({"model": MODEL_NAME}), encoding="utf-8")
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_preset("coop", "base_to_novel", "toy") == "toy"
    assert resolve_preset("coop", "base_to_novel", f"local-dir:{built}") == "toy"
    assert resolve_preset("coop", "base_to_novel", f"local-dir:{other}") != "toy"
    assert resolve_preset("coop", "base_to_novel", "ViT-B-16-quickgelu") != "toy"
    assert resolve_preset("mmrl", "few_shot", "ViT-B-16-quickgelu", "imagenet") == "few_shot_imagenet"
    assert resolve_preset("mmrl", "few_shot", "ViT-B-16-quickgelu", "dtd") == "few_shot"
    # released configs per shot count, per dataset and shot count, then per protocol
    assert resolve_preset("coop", "few_shot", "ViT-B-16-quickgelu", "dtd", 1) == "few_shot_1shot"
    assert resolve_preset("coop", "few_shot", "ViT-B-16-quickgelu", "dtd", 16) == "few_shot"
    assert resolve_preset("coop", "few_shot", "ViT-B-16-quickgelu", "imagenet", 1) == "few_shot_imagenet"
    assert resolve_preset("prograd", "few_shot", "ViT-B-16-quickgelu", "dtd", 8) == "few_shot_dtd_8shot"
    assert resolve_preset("prograd", "few_shot", "ViT-B-16-quickgelu", "caltech101", 8) == "few_shot"
