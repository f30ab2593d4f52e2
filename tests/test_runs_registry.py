"""Registry round trip, skip-if-done / force, history replacement, predictions, export and CLI."""
from __future__ import annotations

import argparse
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.runs import cli as runs_cli
from workbench.runs import Registry
from workbench.runs.spec import RunSpec


def spec(**changes) -> RunSpec:
    base = dict(method="coop", protocol="few_shot", datasets=("toy_shapes", "toy_colors"), shots=4, seed=1,
                method_config={"lr": 0.002}, backbone="toy")
    base.update(changes)
    return RunSpec(**base)


@pytest.fixture
def reg(tmp_path) -> Registry:
    return Registry(tmp_path / "runs")


def test_default_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "envruns"))
    r = Registry()
    assert r.root == tmp_path / "envruns" and (r.root / "registry.sqlite").exists()
    conn = sqlite3.connect(r.root / "registry.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_round_trip(reg):
    s = spec(name="my coop")
    run = reg.create_or_get(s)
    assert run.dir == reg.root / s.short_hash
    assert run.status == "pending" and not run.is_done
    for f in ("spec.json", "status.json"):
        assert (run.dir / f).exists()
    assert (run.dir / "checkpoints").is_dir()
    assert json.loads((run.dir / "spec.json").read_text())["hash"] == s.hash

    # idempotent by hash; name is only a label
    again = reg.create_or_get(spec())
    assert again.hash == run.hash and len(reg.list()) == 1
    assert reg.get(s.hash[:6]).hash == s.hash
    assert reg.get(s.hash).spec == s
    assert reg.find(s).hash == s.hash and reg.find(spec(seed=2)) is None
    with pytest.raises(KeyError):
        reg.get("ffffffffff")

    run.set_status("running")
    run.set_progress(0.5, "epoch 1/2")
    info = run.info()
    assert info["status"] == "running" and info["progress"] == 0.5 and info["message"] == "epoch 1/2"
    assert json.loads((run.dir / "status.json").read_text())["message"] == "epoch 1/2"
    run.log_epoch(0, {"loss": 1.5, "acc": np.float32(0.25), "alpha": 0.1})
    run.log_epoch(1, {"loss": 0.5, "acc": 0.75, "ctx_norm": 3.0})
    run.write_metrics({"test": {"acc": 0.8, "loss": 0.4}, "new_acc": 0.6})
    run.save_predictions("test", np.array([0, 1, 2]), np.array([0, 1, 1]), logits=np.eye(3, dtype=np.float32))
    run.save_predictions("toy_colors/test", [1, 0], [1, 1])
    run.log("hello\nworld")
    run.set_status("done")

    assert run.is_done and run.progress == 1.0
    hist = reg.history(run.hash)
    assert list(hist["epoch"]) == [0, 1]
    assert hist.loc[0, "alpha"] == pytest.approx(0.1) and np.isnan(hist.loc[0, "ctx_norm"])
    assert hist.loc[1, "acc"] == 0.75
    lines = (run.dir / "history.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]
    assert json.loads((run.dir / "metrics.json").read_text())["test"]["acc"] == 0.8
    preds = run.load_predictions()
    assert set(preds) == {"test", "toy_colors/test"}
    np.testing.assert_array_equal(preds["test"]["preds"], [0, 1, 1])
    assert preds["test"]["logits"].shape == (3, 3) and "logits" not in preds["toy_colors/test"]
    assert "hello" in run.read_log() and "world" in run.read_log()

    df = reg.list()
    row = df.iloc[0]
    assert row["hash"] == s.hash and row["name"] == "my coop" and row["status"] == "done"
    assert row["datasets"] == "toy_shapes,toy_colors" and row["source"] == "toy_shapes"
    assert row["shots"] == 4 and row["epochs"] == 2
    assert row["test.acc"] == 0.8 and row["new_acc"] == 0.6
    assert pd.api.types.is_datetime64_any_dtype(df["created_at"])
    assert json.loads(row["method_config"]) == {"lr": 0.002}


def test_list_filters(reg):
    for method in ("coop", "linear"):
        for seed in (1, 2):
            reg.create_or_get(spec(method=method, seed=seed))
    reg.get(spec(method="linear", seed=2).hash).set_status("done")
    assert len(reg.list()) == 4
    assert set(reg.list(method="coop")["seed"]) == {1, 2}
    assert len(reg.list(method="linear", status="done")) == 1
    assert len(reg.list(seed=[1, 2], protocol="few_shot")) == 4
    assert len(reg.list(shots=None)) == 0
    with pytest.raises(TypeError):
        reg.list(colour="red")
    empty = Registry(reg.root / "empty").list()
    assert empty.empty and "status" in empty.columns


def test_relogged_epoch_replaces(reg):
    run = reg.create_or_get(spec())
    for e in range(3):
        run.log_epoch(e, {"loss": float(e)})
    run.log_epoch(2, {"loss": 20.0, "acc": 0.5})  # after a resume
    run.log_epoch(1, {"loss": 10.0})
    run.log_epoch(3, {"loss": 3.0})
    hist = run.history()
    assert list(hist["epoch"]) == [0, 1, 2, 3]
    assert list(hist["loss"]) == [0.0, 10.0, 20.0, 3.0]
    entries = [json.loads(x) for x in (run.dir / "history.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in entries] == [0, 1, 2, 3] and entries[2] == {"epoch": 2, "loss": 20.0, "acc": 0.5}
    # a torn last line (crash mid-append) is dropped on the next write
    with open(run.dir / "history.jsonl", "a") as f:
        f.write('{"epoch": 4, "lo')
    run.log_epoch(4, {"loss": 4.0})
    entries = [json.loads(x) for x in (run.dir / "history.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in entries] == [0, 1, 2, 3, 4]


def test_should_run_and_force(reg):
    s = spec()
    assert reg.should_run(s)  # unknown
    run = reg.create_or_get(s)
    assert reg.should_run(s)  # pending
    run.set_status("failed", error=RuntimeError("boom"))
    assert run.info()["error"] == "RuntimeError: boom"
    assert reg.should_run(s)  # failed runs are retried
    run.set_status("running")
    run.log_epoch(0, {"loss": 1.0})
    run.write_metrics({"acc": 0.9})
    run.save_predictions("test", [0], [0])
    run.save_checkpoint({"w": 1}, epoch=0)
    run.set_status("done")
    assert not reg.should_run(s)
    assert not reg.should_run(s.replace(name="other label"))
    assert reg.should_run(s.replace(seed=2))
    assert run.is_done  # should_run without force changes nothing

    assert reg.should_run(s, force=True)
    assert run.status == "pending" and run.metrics == {} and run.history().empty
    assert run.dir.is_dir() and (run.dir / "spec.json").exists() and "reset" in run.read_log()
    assert not (run.dir / "history.jsonl").exists() and not (run.dir / "metrics.json").exists()
    assert not (run.dir / "predictions.npz").exists() and run.latest_checkpoint() is None
    assert len(reg.list()) == 1


def test_embeddings_round_trip_and_merge(reg):
    from workbench.runs import embedding_keys, load_embeddings

    run = reg.create_or_get(spec())
    assert run.load_embeddings("base") == {} and embedding_keys(run.dir) == []
    rng = np.random.default_rng(0)
    image, classes = rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
    run.save_embeddings("base", image, np.array([0, 1, 0, 1, 1]), ["cat", "dog"], classes)  # labels cut to 3
    run.save_embeddings("new", rng.normal(size=(2, 4)), [2, 2], ("fox",))
    with np.load(run.dir / "embeddings.npz", allow_pickle=False) as z:  # the format readers rely on
        assert sorted(z.files) == ["base/classes", "base/classnames", "base/image", "base/labels",
                                   "new/classnames", "new/image", "new/labels"]
        assert z["base/image"].dtype == np.float16 and z["base/classes"].dtype == np.float16
    base = load_embeddings(run.dir, "base")
    np.testing.assert_allclose(base["image"], image, atol=1e-2)
    np.testing.assert_array_equal(base["labels"], [0, 1, 0])
    assert list(base["classnames"]) == ["cat", "dog"] and base["classes"].shape == (2, 4)
    assert set(run.load_embeddings("new")) == {"image", "labels", "classnames"}
    assert embedding_keys(run.dir) == ["base", "new"]

    run.save_embeddings("base", np.ones((1, 4)), [1], ["cat", "dog"])  # replaces base only, classes included
    assert set(run.load_embeddings("base")) == {"image", "labels", "classnames"}
    assert len(run.load_embeddings("new")["image"]) == 2 and run.load_embeddings("test") == {}
    assert [p.name for p in run.dir.iterdir() if ".tmp-" in p.name] == []


def test_crash_mid_write_keeps_old_predictions(reg, monkeypatch):
    run = reg.create_or_get(spec())
    run.save_predictions("test", [0, 1], [0, 0])

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(OSError, match="disk full"):
        run.save_predictions("val", [1], [1])
    monkeypatch.undo()
    assert set(run.load_predictions()) == {"test"}
    np.testing.assert_array_equal(run.load_predictions("test")["preds"], [0, 0])
    assert [p.name for p in run.dir.iterdir() if ".tmp-" in p.name] == []


def test_reset_forgets_every_artifact(reg):
    from workbench.fileio import temp_path

    s = spec()
    run = reg.create_or_get(s)
    with run.running():
        run.log_epoch(0, {"loss": 1.0})
        run.set_progress(0.5, "half way")
        run.save_checkpoint({"w": 1}, epoch=0)
        run.save_predictions("test", [0], [0], logits=np.zeros((1, 2)))
        run.save_embeddings("test", np.zeros((1, 4)), [0], ["a", "b"], np.zeros((2, 4)))
        run.write_metrics({"acc": 0.9})
        run.log("old run's secret")
    temp_path(run.dir / "predictions.npz").write_bytes(b"killed writer")  # leftovers of crashed writers
    temp_path(run.checkpoint_dir / "epoch_0001.pt").write_bytes(b"killed writer")
    (run.dir / "extra").mkdir()  # anything else the run wrote
    (run.dir / "extra" / "plot.png").write_bytes(b"png")
    spec_text = (run.dir / "spec.json").read_text()

    assert reg.should_run(s, force=True)
    assert sorted(p.name for p in run.dir.iterdir()) == [".lock", "checkpoints", "log.txt", "spec.json", "status.json"]
    assert list(run.checkpoint_dir.iterdir()) == [] and run.latest_checkpoint() is None
    assert (run.dir / "spec.json").read_text() == spec_text
    log = run.read_log()
    assert "reset" in log and "secret" not in log and "status -> done" not in log and len(log.splitlines()) == 1
    status = json.loads((run.dir / "status.json").read_text())
    assert status["status"] == "pending" and status["progress"] == 0 and status["message"] == ""
    assert run.status == "pending" and run.metrics == {} and run.history().empty
    assert run.load_predictions() == {} and run.load_embeddings("test") == {}
    assert reg.list().iloc[0]["epochs"] == 0

    with run.running():  # the rerun starts from nothing
        assert run.load_checkpoint() is None
        run.log_epoch(0, {"loss": 2.0})
    assert list(run.history()["loss"]) == [2.0]


def test_running_context_manager(reg):
    run = reg.create_or_get(spec())
    with run.running():
        assert run.status == "running"
    assert run.status == "done"
    run2 = reg.create_or_get(spec(seed=5))
    with pytest.raises(ValueError):
        with run2.running():
            raise ValueError("bad lr")
    assert run2.status == "failed" and "bad lr" in run2.info()["error"] and "Traceback" in run2.read_log()
    with pytest.raises(ValueError):
        run2.set_status("exploded")


def test_checkpoints_keep_last_two(reg):
    run = reg.create_or_get(spec())
    assert run.latest_checkpoint() is None and run.load_checkpoint() is None
    for e in range(4):
        run.save_checkpoint({"epoch_value": e, "arr": torch.arange(e)}, epoch=e)
    names = sorted(p.name for p in run.checkpoint_dir.iterdir())
    assert names == ["epoch_0002.pt", "epoch_0003.pt"]
    epoch, path = run.latest_checkpoint()
    assert epoch == 3 and path.name == "epoch_0003.pt"
    epoch, state = run.load_checkpoint()
    assert epoch == 3 and state["epoch_value"] == 3
    assert run.load_checkpoint(epoch=2)[1]["epoch_value"] == 2


def test_export_csv_and_parquet(reg, tmp_path):
    for seed in (1, 2):
        run = reg.create_or_get(spec(seed=seed))
        run.write_metrics({"acc": 0.5 + seed / 10})
        run.set_status("done")
    reg.create_or_get(spec(seed=3, shots=None))
    csv = reg.export(tmp_path / "out" / "runs.csv")
    pq = reg.export(tmp_path / "runs.parquet")
    forced = reg.export(tmp_path / "runs.data", fmt="parquet")
    a, b, c = pd.read_csv(csv), pd.read_parquet(pq), pd.read_parquet(forced)
    assert len(a) == len(b) == len(c) == 3
    assert sorted(a["seed"]) == [1, 2, 3] and sorted(b["seed"]) == [1, 2, 3]
    assert b["acc"].iloc[:2].tolist() == pytest.approx([0.6, 0.7]) and pd.isna(b["acc"].iloc[2])
    assert len(pd.read_csv(reg.export(tmp_path / "done.csv", status="done"))) == 2
    with pytest.raises(ValueError):
        reg.export(tmp_path / "x", fmt="xlsx")


def test_rebuild_index_from_folders(reg):
    run = reg.create_or_get(spec(name="keep me"))
    run.set_status("running")
    run.log_epoch(0, {"loss": 1.0})
    run.log_epoch(1, {"loss": 0.5})
    run.write_metrics({"acc": 0.7})
    run.set_status("done")
    (reg.root / "registry.sqlite").unlink()
    for extra in ("registry.sqlite-wal", "registry.sqlite-shm"):
        (reg.root / extra).unlink(missing_ok=True)
    fresh = Registry(reg.root)  # a lost index beside run folders is rebuilt on opening
    assert fresh.rebuilt == 1 and len(fresh.list()) == 1
    assert fresh.rebuild_index() == 1  # idempotent
    row = fresh.list().iloc[0]
    assert row["status"] == "done" and row["acc"] == 0.7 and row["name"] == "keep me" and row["epochs"] == 2


def _cli(root, *argv) -> int:
    parser = argparse.ArgumentParser(prog="workbench")
    runs_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["runs", "--root", str(root), *argv])
    return args.func(args)


def test_cli(reg, tmp_path, capsys):
    assert _cli(reg.root, "list") == 0
    assert "no runs" in capsys.readouterr().out
    run = reg.create_or_get(spec(name="cli run"))
    run.log_epoch(0, {"loss": 0.123})
    run.write_metrics({"acc": 0.5})
    run.set_status("done")
    reg.create_or_get(spec(method="linear"))
    assert _cli(reg.root, "list") == 0
    out = capsys.readouterr().out
    assert run.short_hash in out and "cli run" in out and "linear" in out
    assert _cli(reg.root, "list", "--method", "linear") == 0
    out = capsys.readouterr().out
    assert "linear" in out and run.short_hash not in out
    assert _cli(reg.root, "list", "--status", "done") == 0
    assert run.short_hash in capsys.readouterr().out
    assert _cli(reg.root, "show", run.hash[:8]) == 0
    out = capsys.readouterr().out
    assert run.hash in out and "0.123" in out and '"acc": 0.5' in out
    assert _cli(reg.root, "show", "abcdef0123") == 1
    assert _cli(reg.root, "export", str(tmp_path / "e.parquet")) == 0
    assert len(pd.read_parquet(tmp_path / "e.parquet")) == 2
    assert _cli(reg.root, "export", str(tmp_path / "e.txt"), "--format", "csv") == 0
    assert len(pd.read_csv(tmp_path / "e.txt")) == 2


def test_runs_of_dead_processes_become_interrupted(reg):
    import subprocess
    import sys

    alive = reg.create_or_get(spec(seed=7))
    alive.set_status("running")  # this process: still alive
    dead = reg.create_or_get(spec(seed=8))
    dead.set_status("running")
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead._update(pid=int(child.stdout))  # a process that has exited
    assert reg.mark_orphans_interrupted() == [dead.short_hash]
    assert dead.status == "interrupted" and "resume" in dead.info()["error"]
    assert alive.status == "running"
    assert reg.should_run(spec(seed=8))
