"""Several processes creating runs and logging epochs into one registry at once."""
from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
import traceback

from workbench.runs import Registry
from workbench.runs.spec import RunSpec

N_PROCS = 4
RUNS_PER_PROC = 4
EPOCHS = 6
SHARED_EPOCHS_PER_PROC = 3


def _spec(worker: int, i: int) -> RunSpec:
    return RunSpec(method="toy", protocol="few_shot", datasets=("toy_shapes",), shots=1, seed=worker * 100 + i)


SHARED = RunSpec(method="toy", protocol="few_shot", datasets=("toy_shapes",), shots=1, seed=-1, name="shared")


def _worker(root: str, worker: int, start, errors) -> None:
    try:
        start.wait()
        reg = Registry(root)  # every process opens (and races to initialise) the registry itself
        shared = reg.create_or_get(SHARED)  # all processes race to create the same run
        for i in range(RUNS_PER_PROC):
            run = reg.create_or_get(_spec(worker, i))
            run.set_status("running")
            for e in range(EPOCHS):
                run.log_epoch(e, {"loss": 1.0 / (e + 1), "acc": e / EPOCHS, "worker": worker})
                run.set_progress((e + 1) / EPOCHS, f"epoch {e}")
            # distinct epochs of one shared run from every process
            e = worker * SHARED_EPOCHS_PER_PROC + i
            if i < SHARED_EPOCHS_PER_PROC:
                shared.log_epoch(e, {"worker": worker})
            run.write_metrics({"acc": 0.5, "worker": worker})
            run.set_status("done")
    except BaseException:
        errors.put(traceback.format_exc())
        raise


def test_concurrent_writers(tmp_path):
    root = str(tmp_path / "runs")
    ctx = mp.get_context("fork")
    start, errors = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(root, w, start, errors)) for w in range(N_PROCS)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=120)
    errs = []
    while not errors.empty():
        errs.append(errors.get())
    assert not errs, "\n".join(errs)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]

    reg = Registry(root)
    assert reg.integrity_check() == "ok"
    conn = sqlite3.connect(reg.root / "registry.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()

    df = reg.list()
    assert len(df) == N_PROCS * RUNS_PER_PROC + 1
    own = df[df["name"] != "shared"]
    assert (own["status"] == "done").all() and (own["epochs"] == EPOCHS).all() and (own["progress"] == 1.0).all()
    for w in range(N_PROCS):
        for i in range(RUNS_PER_PROC):
            run = reg.get(_spec(w, i).hash)
            hist = run.history()
            assert list(hist["epoch"]) == list(range(EPOCHS)) and (hist["worker"] == w).all()
            lines = (run.dir / "history.jsonl").read_text().splitlines()
            assert [json.loads(x)["epoch"] for x in lines] == list(range(EPOCHS))
            assert run.metrics == {"acc": 0.5, "worker": w}

    shared = reg.get(SHARED.hash)
    expected = sorted(w * SHARED_EPOCHS_PER_PROC + i for w in range(N_PROCS) for i in range(SHARED_EPOCHS_PER_PROC))
    assert list(shared.history()["epoch"]) == expected
    lines = (shared.dir / "history.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["epoch"] for x in lines) == expected
