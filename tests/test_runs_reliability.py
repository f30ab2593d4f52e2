"""Reliability of the run registry (issue 18): one owner per run, damaged / empty / read-only indexes,
reindex keeping metrics, atomic exports, full disks, SIGTERM, weights-only checkpoints, CLI edges."""
from __future__ import annotations

import argparse
import errno
import json
import os
import pickle
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from workbench import fileio
from workbench.runs import Registry
from workbench.runs import cli as runs_cli
from workbench.runs.files import CheckpointError, RunBusyError
from workbench.runs.index import IndexDamagedError, RegistryNotFoundError, RegistryReadOnlyError
from workbench.runs.spec import RunSpec

REPO = Path(__file__).resolve().parents[1]


def spec(seed: int = 1, **kw) -> RunSpec:
    return RunSpec(method="toy", protocol="unit", datasets=("synthetic",), seed=seed, **kw)


def _python(code: str, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=REPO, **popen)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"child exited early: {proc.returncode}"
        assert time.time() < deadline, f"child never wrote {path}"
        time.sleep(0.05)


def _cli(root, *argv) -> int:
    parser = argparse.ArgumentParser(prog="workbench")
    runs_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["runs", "--registry", str(root), *argv])
    return args.func(args)


def _filled(root: Path, n: int = 3) -> Registry:
    reg = Registry(root)
    for s in range(n):
        run = reg.create_or_get(spec(s))
        for e in range(3):
            run.log_epoch(e, {"loss": 1.0 / (e + 1)})
        run.write_metrics({"acc": 0.5 + s / 10})
        run.set_status("done")
    return reg


# -- 1. one process owns a run ------------------------------------------------------------------
# `execute` with the protocol, backbone and checks stubbed: the body counts how often it trains.
EXECUTE_CHILD = r"""
import os, sys, time, types
root, counter, started = sys.argv[1:4]
import workbench.protocols.registry as preg, workbench.protocols.builder as builder, workbench.models as models
import workbench.runs.execute as ex
from workbench.runs import Registry
from workbench.runs.spec import RunSpec

def train(ctx):
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\n")
    open(started, "w").close()
    release = started + ".release"
    deadline = time.time() + 120
    while not os.path.exists(release) and time.time() < deadline:  # hold the run until the test says so
        time.sleep(0.05)
    return {"acc": 1.0}

preg.get_protocol = lambda name: types.SimpleNamespace(run=train)
builder.check_resolved = lambda spec: None
ex._data_root_for = lambda spec, data_root: data_root
ex.preflight = lambda spec, device: None
models.load_backbone = lambda *a, **k: types.SimpleNamespace(model_id="stub")
spec = RunSpec(method="toy", protocol="unit", datasets=("synthetic",), seed=1)
run = ex.execute(spec, Registry(root), device="cpu", cache=object(), progress=False)
print("STATUS", run.status, flush=True)
"""


def test_second_process_waits_for_the_owner_and_reuses_its_result(tmp_path):
    root, counter, started = tmp_path / "runs", tmp_path / "counter", tmp_path / "started"
    Registry(root)
    first = _python(EXECUTE_CHILD, str(root), str(counter), str(started), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
    _wait_for(started, first)
    err_file = tmp_path / "second.err"
    with open(err_file, "w") as err_out:
        second = _python(EXECUTE_CHILD, str(root), str(counter), str(started), stdout=subprocess.PIPE,
                         stderr=err_out, text=True)
    deadline = time.time() + 120
    while "waiting" not in err_file.read_text():  # the second is blocked on the first
        assert second.poll() is None and time.time() < deadline, err_file.read_text()
        time.sleep(0.05)
    Path(str(started) + ".release").touch()
    out1, err1 = first.communicate(timeout=180)
    out2, _ = second.communicate(timeout=180)
    err2 = err_file.read_text()
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert counter.read_text().split() == [str(first.pid)]  # trained once, by the first
    assert f"is being run by process {first.pid}" in err2 and "waiting" in err2
    assert "STATUS done" in out1 and "STATUS done" in out2
    run = Registry(root).get(spec().hash)
    assert run.status == "done" and run.metrics["acc"] == 1.0


HOLDER_CHILD = r"""
import sys, time
from workbench.runs import Registry
from workbench.runs.spec import RunSpec
root, marker = sys.argv[1:3]
run = Registry(root).create_or_get(RunSpec(method="toy", protocol="unit", datasets=("synthetic",), seed=1))
with run.owned(wait=0):
    open(marker, "w").close()
    time.sleep(120)
"""


def test_busy_run_names_its_owner_and_a_killed_owner_frees_it(tmp_path):
    root, marker = tmp_path / "runs", tmp_path / "held"
    run = Registry(root).create_or_get(spec())
    holder = _python(HOLDER_CHILD, str(root), str(marker))
    try:
        _wait_for(marker, holder)
        told = []
        t0 = time.monotonic()
        with pytest.raises(RunBusyError, match=f"being run by process {holder.pid} on host"):
            with run.owned(wait=0.5, echo=told.append):
                pass
        assert time.monotonic() - t0 >= 0.5 and len(told) == 1 and str(holder.pid) in told[0]
        assert run.owner()["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    with run.owned(wait=0):  # the dead owner's lock went with it: no stale lock to clear
        assert run.owner()["pid"] == os.getpid()


def test_owned_is_reentrant_in_a_thread_and_exclusive_across_threads(tmp_path):
    run = Registry(tmp_path / "runs").create_or_get(spec())
    result = []

    def other():
        try:
            with run.owned(wait=0, echo=None):
                result.append("got it")
        except RunBusyError as exc:
            result.append(str(exc))

    with run.owned(wait=0):
        with run.owned(wait=0):  # nested in the same thread
            pass
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert "being run by process" in result[0]
    with run.owned(wait=0):  # released after the outer block
        pass


# -- 6. damaged / empty index -------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_damaged_index_says_what_to_do_and_reindex_rebuilds_it(tmp_path, capsys, damage):
    root = tmp_path / "runs"
    _filled(root)
    db = root / "registry.sqlite"
    data = db.read_bytes()
    assert not (root / "registry.sqlite-wal").exists()
    damaged = data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data))
    db.write_bytes(damaged)

    with pytest.raises(IndexDamagedError, match="workbench runs reindex"):
        Registry(root)  # what `workbench run` opens
    for argv in (["list"], ["show", spec(0).short_hash], ["export", str(tmp_path / "x.csv")]):
        assert _cli(root, *argv) == 1
        err = capsys.readouterr().err
        assert f"the run index at {db} is damaged" in err and "workbench runs reindex" in err
    assert not (tmp_path / "x.csv").exists()

    assert _cli(root, "reindex") == 0
    out = capsys.readouterr().out
    assert "moved aside" in out and "indexed 3 runs" in out
    aside = list(root.glob("registry.sqlite.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept for inspection
    reg = Registry(root)
    assert reg.integrity_check() == "ok"
    df = reg.list()
    assert sorted(df["acc"]) == pytest.approx([0.5, 0.6, 0.7]) and (df["status"] == "done").all()
    assert (df["epochs"] == 3).all()


def test_empty_index_beside_run_folders_is_rebuilt(tmp_path, capsys):
    root = tmp_path / "runs"
    _filled(root)
    (root / "registry.sqlite").write_bytes(b"")
    assert _cli(root, "list") == 0
    out, err = capsys.readouterr()
    assert "rebuilt it from 3 run folder(s)" in err and "3 run(s)" in out and "no runs" not in out


def test_read_commands_do_not_create_a_registry(tmp_path, capsys):
    typo = tmp_path / "typo"
    for argv in (["list"], ["show", "abc"], ["export", str(tmp_path / "e.csv")]):
        assert _cli(typo, *argv) == 1
        assert f"no registry at {typo}" in capsys.readouterr().err
    assert not typo.exists() and not (tmp_path / "e.csv").exists()
    with pytest.raises(RegistryNotFoundError):
        Registry(typo, create=False)


def test_registry_and_root_options_are_the_same(tmp_path, capsys):
    root = tmp_path / "runs"
    _filled(root, 1)
    parser = argparse.ArgumentParser(prog="workbench")
    runs_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    for argv in (["runs", "--root", str(root), "list"], ["runs", "--registry", str(root), "list"],
                 ["runs", "list", "--registry", str(root)]):
        args = parser.parse_args(argv)
        assert args.func(args) == 0
        assert "1 run(s) in" in capsys.readouterr().out


# -- 7. reindex and lost metrics.json -----------------------------------------------------------
def test_reindex_keeps_index_metrics_when_metrics_json_is_gone(tmp_path):
    reg = _filled(tmp_path / "runs", 1)
    run = reg.get(spec(0).hash)
    (run.dir / "metrics.json").unlink()
    assert reg.rebuild_index() == 1
    assert run.status == "done" and run.metrics == {"acc": 0.5}
    assert json.loads((run.dir / "metrics.json").read_text()) == {"acc": 0.5}


def test_done_run_without_metrics_anywhere_is_rerun(tmp_path):
    root = tmp_path / "runs"
    reg = _filled(root, 1)
    run = reg.get(spec(0).hash)
    (run.dir / "metrics.json").unlink()
    for name in ("registry.sqlite", "registry.sqlite-wal", "registry.sqlite-shm"):
        (root / name).unlink(missing_ok=True)
    fresh = Registry(root)
    assert fresh.rebuilt == 1
    again = fresh.get(spec(0).hash)
    assert again.status == "interrupted" and "metrics.json is missing" in again.info()["error"]
    assert fresh.should_run(spec(0))


# -- 8. export --------------------------------------------------------------------------------
def test_interrupted_export_keeps_the_previous_file(tmp_path, monkeypatch):
    reg = _filled(tmp_path / "runs", 2)
    out = tmp_path / "runs.csv"
    reg.export(out)
    good = out.read_bytes()
    real = pd.DataFrame.to_csv

    def dies_half_way(self, f, **kw):  # stands in for a writer killed mid-write
        real(self.head(1), f, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        reg.export(out)
    assert out.read_bytes() == good and fileio.temp_files(tmp_path) == []


def test_export_refuses_unknown_suffixes(tmp_path, capsys):
    reg = _filled(tmp_path / "runs", 1)
    assert _cli(reg.root, "export", str(tmp_path / "out.xlsx")) == 2
    assert ".xlsx is not a format" in capsys.readouterr().err and not (tmp_path / "out.xlsx").exists()
    with pytest.raises(ValueError, match="suffix says parquet"):
        reg.export(tmp_path / "a.parquet", fmt="csv")
    assert len(pd.read_csv(reg.export(tmp_path / "plain"))) == 1  # no suffix: csv, as before


# -- 9. full disk, stray temp files, SIGTERM ------------------------------------------------------
def test_atomic_write_reports_a_full_disk_in_words(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    def torch_like(f):  # torch.save turns the failed write into a RuntimeError
        try:
            full(f)
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    for write in (full, torch_like):
        with pytest.raises(fileio.DiskFullError, match=f"no space left on the device holding {tmp_path}") as info:
            fileio.atomic_write(target, write)
        assert info.value.errno == errno.ENOSPC
        assert target.read_bytes() == b"old" and fileio.temp_files(tmp_path) == []


def test_full_disk_during_a_run_fails_it_with_what_to_do(tmp_path, monkeypatch):
    run = Registry(tmp_path / "runs").create_or_get(spec())
    run.save_checkpoint({"w": torch.zeros(2)}, 0)

    def save_on_full_disk(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(fileio.DiskFullError, match="free space and re-run; the run resumes from its last checkpoint"):
        with run.running():
            monkeypatch.setattr(torch, "save", save_on_full_disk)
            run.save_checkpoint({"w": torch.ones(2)}, 1)
    monkeypatch.undo()
    assert run.status == "failed" and "no space left on the device holding" in run.info()["error"]
    assert fileio.temp_files(run.checkpoint_dir) == [] and run.latest_checkpoint()[0] == 0
    assert Registry(run.registry.root).should_run(spec())


def test_full_index_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    reg = Registry(tmp_path / "runs")
    run = reg.create_or_get(spec())
    connect = reg._connect

    def capped(uri=None):  # a real SQLITE_FULL: the database may not grow past its current size
        conn = connect(uri)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn

    monkeypatch.setattr(reg, "_connect", capped)
    with pytest.raises(fileio.DiskFullError, match=f"no space left on the device holding {reg.root}"):
        for e in range(200):
            run.log_epoch(e, {"pad": "x" * 4000})


def test_stray_temp_files_are_removed_when_a_run_is_next_owned(tmp_path):
    run = Registry(tmp_path / "runs").create_or_get(spec())
    run.save_checkpoint({"w": torch.zeros(1)}, 0)
    strays = [run.dir / f".status.json{fileio.TEMP_MARK}1-0000abcd",
              run.checkpoint_dir / f".epoch_0001.pt{fileio.TEMP_MARK}1-0000abcd"]
    for p in strays:
        p.write_bytes(b"left by a writer that died")
    with run.owned(wait=0):
        assert not any(p.exists() for p in strays)
    assert run.latest_checkpoint()[0] == 0


SIGTERM_CHILD = r"""
import sys, time, torch
from workbench.runs import Registry
from workbench.runs.spec import RunSpec
root, marker = sys.argv[1:3]
run = Registry(root).create_or_get(RunSpec(method="toy", protocol="unit", datasets=("synthetic",), seed=1))
with run.owned(wait=0), run.running():
    run.save_checkpoint({"w": torch.ones(3)}, 0)
    open(marker, "w").close()
    time.sleep(120)
"""


def test_sigterm_interrupts_the_run_and_keeps_its_checkpoint(tmp_path):
    root, marker = tmp_path / "runs", tmp_path / "training"
    child = _python(SIGTERM_CHILD, str(root), str(marker), stderr=subprocess.PIPE, text=True)
    _wait_for(marker, child)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode != 0 and "Terminated" in err
    run = Registry(root).get(spec().hash)
    assert run.status == "interrupted" and "SIGTERM" in run.info()["error"]
    epoch, state = run.load_checkpoint()
    assert epoch == 0 and torch.equal(state["w"], torch.ones(3))
    with run.owned(wait=0):  # the lock went with the process
        pass


# -- 10. read-only registry ---------------------------------------------------------------------
# Tests run as root, where chmod does not stop writes: the child runs the commands once as root (so
# every lazy import is done), makes the registry read-only and, when root, drops to uid/gid nobody
# (65534), for whom the modes hold; then it runs them again. The kernel refuses the writes for real.
READ_ONLY_CHILD = r"""
import contextlib, io, os, stat, sys
from workbench.runs import cli
from workbench.runs.index import Registry, RegistryReadOnlyError
root, out, short = sys.argv[1:4]

def run(*argv):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        code = cli.main(["runs", "--registry", root, *argv])
    return code, o.getvalue(), e.getvalue()

for argv in (["list"], ["show", short], ["export", os.path.join(out, "warm.parquet")]):
    assert run(*argv)[0] == 0
for dirpath, dirs, files in os.walk(root):
    for f in files:
        os.chmod(os.path.join(dirpath, f), 0o444)
    os.chmod(dirpath, 0o555)
if os.getuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
assert not os.access(root, os.W_OK)
for argv in (["list"], ["show", short], ["export", os.path.join(out, "runs.csv")]):
    code, o, e = run(*argv)
    print("CMD", argv[0], code, repr(o), repr(e))
try:
    Registry(root).create_or_get(Registry(root).get(short).spec)
except RegistryReadOnlyError as exc:
    print("WRITE", exc)
"""


def test_read_only_registry_lists_shows_and_exports(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="wb-ro-"))  # outside tmp_path: pytest's folders are root-only
    try:
        os.chmod(base, 0o755)
        root, out = base / "runs", base / "out"
        reg = _filled(root, 2)
        short = spec(0).short_hash
        del reg
        out.mkdir()
        os.chmod(out, 0o777)
        child = _python(READ_ONLY_CHILD, str(root), str(out), short, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
        stdout, stderr = child.communicate(timeout=180)
        assert child.returncode == 0, stderr + stdout
        lines = {ln.split()[1]: ln for ln in stdout.splitlines() if ln.startswith("CMD")}
        for cmd in ("list", "show", "export"):
            assert lines[cmd].split()[2] == "0", lines[cmd]
            assert "read-only: writing is disabled" in lines[cmd]
        assert "2 run(s)" in lines["list"] and short in lines["show"]
        assert len(pd.read_csv(out / "runs.csv")) == 2
        assert "WRITE" in stdout and "read-only" in stdout
        assert not list(root.glob("registry.sqlite-*"))  # nothing was written beside the index
    finally:
        for dirpath, dirs, files in os.walk(base):
            os.chmod(dirpath, stat.S_IRWXU)
        shutil.rmtree(base, ignore_errors=True)


# -- 13. checkpoints are loaded weights-only ------------------------------------------------------
class _Planted:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_pickle_in_checkpoints_is_refused_not_run(tmp_path):
    run = Registry(tmp_path / "runs").create_or_get(spec())
    run.save_checkpoint({"w": torch.zeros(1)}, 0)
    marker = tmp_path / "code-ran"
    planted = run.files.checkpoint_path(5)
    with open(planted, "wb") as f:  # torch.save's zip format, and a bare pickle
        torch.save({"epoch": 5, "state": _Planted(str(marker))}, f)
    with pytest.raises(CheckpointError, match=r"is not a plain state file .*delete it to restart"):
        run.load_checkpoint()
    planted.write_bytes(pickle.dumps({"epoch": 5, "state": _Planted(str(marker))}))
    with pytest.raises(CheckpointError, match="is not a plain state file"):
        run.load_checkpoint()
    assert not marker.exists()
    planted.write_bytes(run.files.checkpoint_path(0).read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="cannot be read"):
        run.load_checkpoint()
    planted.unlink()
    assert run.load_checkpoint()[0] == 0


def test_checkpoints_refuse_what_weights_only_cannot_read(tmp_path):
    import numpy as np

    run = Registry(tmp_path / "runs").create_or_get(spec())
    with pytest.raises(TypeError, match=r"state\['preds'\] is a numpy.ndarray"):
        run.save_checkpoint({"preds": np.zeros(3)}, 0)
    with pytest.raises(TypeError, match="numpy.float64"):
        run.save_checkpoint({"history": [{"loss": np.float64(1.0)}]}, 0)
    assert run.latest_checkpoint() is None
    state = {"model": {"w": torch.ones(2)}, "opt": {"param_groups": [{"betas": (0.9, 0.99), "foreach": None}]},
             "history": [{"loss": 0.5}], "steps": 3, "size": torch.Size([2]), "dtype": torch.float16}
    run.save_checkpoint(state, 0)
    assert run.load_checkpoint()[1]["opt"] == state["opt"]


# -- smaller: a closed pipe ---------------------------------------------------------------------
def test_show_into_a_closed_pipe_ends_quietly(tmp_path):
    reg = _filled(tmp_path / "runs", 1)
    child = _python("import sys; from workbench.runs.cli import main; sys.exit(main(sys.argv[1:]))",
                    "runs", "--registry", str(reg.root), "show", spec(0).short_hash,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # like `| head` having exited
    err = child.stderr.read().decode()
    child.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert child.returncode == 141
