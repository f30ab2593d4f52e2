"""Sweeps: grid expansion through the spec builder, skipping done runs, the local pool (Ctrl-C and
re-run), submitit's local/debug executors, the SLURM submission against a fake sbatch, two sweeps on
one registry, bad files named by line, results over seeds. Tiny random-init backbone, fabricated data."""
from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import make_eurosat
from workbench.protocols import build_specs
from workbench.runs import Registry
from workbench.runs.groups import GROUPS_DIR, list_groups
from workbench.runs.index import DB_NAME
from workbench.sweeps import (SweepError, load_sweep, merge_index, pending_specs, run_sweep, sweep_results,
                              sweep_status, write_sweep)

TINY = "wb-tiny-vit"
WORKBENCH = [sys.executable, "-m", "workbench"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_data")
    make_eurosat(root, corrupt=False)
    return root


def sweep_yaml(data_root, seeds=(1, 2), shots=(2,), epochs=2, methods=("zeroshot", "coop"), workers=2):
    return (f"data_root: {data_root}\n"
            "grid:\n"
            f"  methods: [{', '.join(methods)}]\n"
            "  protocols: base_to_novel\n"
            "  datasets: [eurosat]\n"
            f"  shots: {list(shots)}\n"
            f"  seeds: {list(seeds)}\n"
            f"  backbones: {TINY}\n"
            "  presets: toy\n"
            f"  settings: {{train.epochs: {epochs}, train.batch_size: 4}}\n"
            f"executor: {{kind: local, workers: {workers}, threads: 1}}\n")


def write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith("seconds") and k != "resumed_from_epoch"}


def folder_metrics(registry: Registry, spec) -> dict:
    return json.loads((registry.run_dir(spec) / "metrics.json").read_text())


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


# -- expansion -------------------------------------------------------------------------------------
def test_expansion_is_the_spec_builders_grid(data_root, tmp_path):
    sweep = load_sweep(write(tmp_path, sweep_yaml(data_root, seeds=(1, 2, 3), shots=(2, 4))))
    expected = build_specs(["zeroshot", "coop"], "base_to_novel", [("eurosat",)], shots=[2, 4], seeds=[1, 2, 3],
                           backbone=TINY, presets="toy", settings={"train.epochs": 2, "train.batch_size": 4},
                           data_root=str(data_root))
    assert [s.hash for s in sweep.specs] == [s.hash for s in expected]
    assert len(sweep.specs) == 1 + 2 * 3  # zero-shot is one run whatever the shots and seeds


def test_explicit_blocks_and_vary_make_a_union_of_products_without_duplicates(data_root, tmp_path):
    text = (f"data_root: {data_root}\nbackbones: {TINY}\ndatasets: [eurosat]\nshots: 2\npresets: toy\n"
            "grid:\n"
            "  - methods: coop\n    seeds: [1, 2]\n    settings: {train.epochs: 1}\n    vary: {train.lr: [0.01, 0.002]}\n"
            "  - methods: [coop, kgcoop]\n    seeds: [2]\n    settings: [{train.epochs: 1, train.lr: 0.01}]\n")
    sweep = load_sweep(write(tmp_path, text))
    got = {(s.method, s.seed, s.train_config["lr"]) for s in sweep.specs}
    assert got == {("coop", 1, 0.01), ("coop", 1, 0.002), ("coop", 2, 0.01), ("coop", 2, 0.002), ("kgcoop", 2, 0.01)}
    assert len(sweep.specs) == 5 and len({s.hash for s in sweep.specs}) == 5


def test_notebook_grid_written_as_a_sweep_file_is_the_same_runs(data_root, tmp_path):
    from workbench.notebooks_cli import notebook_specs

    path = write_sweep(tmp_path / "nb.yaml", ["zeroshot", "coop"], "base_to_novel", ["eurosat"], 2, [1, 2],
                       backbone=TINY, presets="toy", settings={"train.epochs": 1}, data_root=str(data_root))
    specs = notebook_specs(["zeroshot", "coop"], "base_to_novel", ["eurosat"], 2, [1, 2], backbone=TINY,
                           epochs=1, presets="toy", data_root=str(data_root))
    assert [s.hash for s in load_sweep(path).specs] == [s.hash for s in specs]
    # any list of specs a notebook built, e.g. two grids of different settings
    more = specs + notebook_specs(["coop"], "base_to_novel", ["eurosat"], [2, 4], [3], backbone=TINY, epochs=2,
                                  data_root=str(data_root))
    from workbench.sweeps import write_sweep_specs

    again = load_sweep(write_sweep_specs(tmp_path / "nb2.yaml", more))
    assert sorted(s.hash for s in again.specs) == sorted(s.hash for s in more) and len(more) == 5


BAD = [
    ("methods: [coop, copo]\nseeds: [1]\n", 1, "unknown method 'copo'"),
    ("methods: [coop]\nseeds: [1]\nepochs: 3\n", 3, "unknown key 'epochs'"),
    ("methods: [coop]\nseeds: []\n", 2, "seeds: is empty"),
    ("grid: []\n", 1, "grid is empty"),
    ("grid:\n  - methods: [coop]\n    seeds: [1]\n    settings:\n      train.epochs: 1\n      method.n_ctxx: 4\n",
     6, "n_ctxx"),
    ("methods: [coop]\nexecutor: {kind: slurmm}\n", 2, "unknown executor"),
    ("methods: [coop]\nslurm: {gpus_per_task: 0}\n", 2, "gpus_per_task is a whole number of at least 1"),
]


@pytest.mark.parametrize("text,line,words", BAD)
def test_bad_sweep_files_fail_naming_the_line_before_anything_runs(tmp_path, capsys, text, line, words):
    from workbench.cli import main

    path = write(tmp_path, f"backbones: {TINY}\n" + text)  # one line above: numbers shift by one
    with pytest.raises(SweepError) as err:
        load_sweep(path)
    assert str(err.value).startswith(f"{path}:{line + 1}:") and words in str(err.value)
    reg = tmp_path / "runs"
    assert main(["sweep", str(path), "--registry", str(reg)]) == 2
    assert f"{path}:{line + 1}:" in capsys.readouterr().err
    assert not reg.exists()  # nothing created, nothing submitted


# -- skipping, submitit debug / local ----------------------------------------------------------------
def test_partially_done_sweep_runs_only_the_missing_runs_debug_executor(data_root, tmp_path):
    from workbench.runs.execute import execute

    sweep = load_sweep(write(tmp_path, sweep_yaml(data_root)))
    reg = Registry(tmp_path / "runs")
    first = execute(sweep.specs[1], reg, progress=False)  # done before the sweep
    stamp = (first.dir / "metrics.json").stat().st_mtime_ns
    assert [s.hash for s in pending_specs(sweep, reg)] == [sweep.specs[0].hash, sweep.specs[2].hash]
    out = run_sweep(sweep, reg.root, executor="debug", folder=tmp_path / "jobs", echo=None)
    assert [s.hash for s in out["todo"]] == [sweep.specs[0].hash, sweep.specs[2].hash]
    assert all(r["status"] == "done" for r in out["results"]) and len(out["results"]) == 2
    assert (first.dir / "metrics.json").stat().st_mtime_ns == stamp  # not re-run
    assert sweep_status(sweep, reg)["counts"]["done"] == 3
    listed = reg.list()
    assert set(listed["hash"]) == {s.hash for s in sweep.specs} and set(listed["status"]) == {"done"}
    assert run_sweep(sweep, reg.root, executor="debug", folder=tmp_path / "jobs", echo=None)["todo"] == []
    [group] = list_groups(reg.root)  # the app's Runs page groups the sweep's runs by this record
    assert group["name"] == "sweep" and group["hashes"] == [s.hash for s in sweep.specs]
    assert group["source"] == str((tmp_path / "sweep.yaml").resolve())
    from workbench.cli import main

    path = tmp_path / "sweep.yaml"
    assert main(["sweep", "results", str(path), "--registry", str(reg.root), "--metrics", "base", "hm",
                 "--export", str(tmp_path / "res.csv")]) == 0
    import pandas as pd

    per_seed = pd.read_csv(tmp_path / "res.csv")
    assert sorted(per_seed["hash"]) == sorted(s.short_hash for s in sweep.specs)
    for spec in sweep.specs:
        assert per_seed.set_index("hash").loc[spec.short_hash, "hm"] == pytest.approx(folder_metrics(reg, spec)["hm"])
    summary = pd.read_csv(tmp_path / "res.summary.csv")
    coop = summary[(summary["method"] == "coop") & (summary["metric"] == "hm")].iloc[0]
    hms = [folder_metrics(reg, s)["hm"] for s in sweep.specs if s.method == "coop"]
    assert coop["n"] == 2 and coop["mean"] == pytest.approx(np.mean(hms))


def test_submitit_local_executor_writes_only_run_folders_and_status_merges_the_index(data_root, tmp_path):
    sweep = load_sweep(write(tmp_path, sweep_yaml(data_root, seeds=(1,))))
    root = tmp_path / "runs"
    out = run_sweep(sweep, root, executor="submitit-local", folder=tmp_path / "jobs", wait=True, echo=None)
    assert [r["status"] for r in out["results"]] == ["done", "done"]
    reg = Registry(root)
    assert sorted(reg.list()["hash"]) == sorted(s.hash for s in sweep.specs)
    assert set(reg.list()["status"]) == {"done"}
    for spec, result in zip(out["todo"], out["results"]):
        assert result["metrics"] == folder_metrics(reg, spec)  # index rows merged from the folders


# -- SLURM through a fake sbatch ---------------------------------------------------------------------
def test_slurm_submission_is_one_array_with_resources_and_requeue(data_root, tmp_path, monkeypatch):
    import submitit

    from workbench.sweeps.executors import SweepTask

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch.record"
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" >> {record}\ncat \"$1\" >> {record}\n"
                                    "echo 'Submitted batch job 4242'\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for srun to detect SLURM
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    text = sweep_yaml(data_root, seeds=(1, 2, 3)) + ("slurm: {partition: gpu, array_parallelism: 2, gpus_per_task: 1,"
                                                     " cpus_per_task: 8, mem_gb: 32, time_min: 240, max_requeues: 5}\n")
    sweep = load_sweep(write(tmp_path, text))
    out = run_sweep(sweep, tmp_path / "runs", executor="slurm", folder=tmp_path / "jobs", wait=False, echo=None)
    script = record.read_text()
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --time=240",
                 "#SBATCH --signal=USR2@90"):
        assert line in script, line
    assert script.count("Submitted") == 0 and script.count("#SBATCH --array") == 1  # one sbatch call
    assert [j.job_id for j in out["jobs"]] == [f"4242_{i}" for i in range(4)]
    # each task's pickled submission: our callable, its spec, the folders index, 5 requeues allowed
    pickles = sorted((tmp_path / "jobs").glob("*_submitted.pkl"))
    assert len(pickles) == 4
    delayed = pickle.loads(pickles[0].read_bytes())
    assert isinstance(delayed.function, SweepTask) and delayed.args[2] == "folders"
    assert delayed._timeout_countdown == 5
    requeued = delayed._checkpoint_function()  # what submitit resubmits on USR2 (preemption / timeout)
    assert isinstance(requeued, submitit.helpers.DelayedSubmission) and requeued.args == delayed.args
    from workbench.protocols.runspec import RunSpec

    hashes = {RunSpec.from_dict(pickle.loads(p.read_bytes()).args[0]).hash for p in pickles}
    assert hashes == {s.hash for s in sweep.specs}
    assert sweep_status(sweep, Registry(tmp_path / "runs"))["counts"]["pending"] == 4  # jobs have not run


def _pinned(folder):
    (Path(folder) / str(os.getpid())).touch()
    end = time.time() + 120
    while len(list(Path(folder).iterdir())) < 2 and time.time() < end:  # both tasks held at once: two workers
        time.sleep(0.05)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_local_pool_pins_one_gpu_per_worker(tmp_path):
    from workbench.sweeps.executors import worker_pool

    pool = worker_pool(1, devices=["3", "5"])  # two devices: two workers whatever `workers` says
    try:
        seen = dict(pool.map(_pinned, [str(tmp_path)] * 2, chunksize=1))
    finally:
        pool.close()
        pool.join()
    assert sorted(seen.values()) == ["3", "5"]  # two workers, each seeing only its own GPU


# -- local pool: parallel, Ctrl-C, re-run; two sweeps at once; status and results ---------------------
def _wait_for(predicate, timeout=180):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_local_pool_interrupted_then_rerun_equals_an_uninterrupted_sweep(data_root, tmp_path):
    path = write(tmp_path, sweep_yaml(data_root, seeds=(1, 2), epochs=25, methods=("coop",)))
    sweep = load_sweep(path)
    reg_path = tmp_path / "runs"
    proc = subprocess.Popen([*WORKBENCH, "sweep", str(path), "--registry", str(reg_path)], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    first_done = lambda: any(json.loads((reg_path / s.short_hash / "status.json").read_text() or "{}")  # noqa: E731
                             .get("status") == "done" for s in sweep.specs
                             if (reg_path / s.short_hash / "status.json").exists())
    assert _wait_for(first_done), proc.communicate(timeout=5)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group, as in a terminal
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    reg = Registry(reg_path)
    states = sweep_status(sweep, reg)["counts"]
    assert states["running"] == 0 and states["done"] >= 1 and states["done"] + states["interrupted"] + \
        states["pending"] == 2
    rerun = subprocess.run([*WORKBENCH, "sweep", str(path), "--registry", str(reg_path)], env=env(),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{states['done']} done or skipped" in rerun.stdout
    ref = Registry(tmp_path / "ref")
    run_sweep(sweep, ref.root, executor="debug", folder=tmp_path / "jobs", echo=None)  # uninterrupted, serial
    for spec in sweep.specs:
        assert comparable(folder_metrics(reg, spec)) == comparable(folder_metrics(ref, spec))
        assert list(reg.history(spec)["loss"]) == list(ref.history(spec)["loss"])
    # results as the papers print them: mean over seeds, sample std, 95% CI, per-seed values
    summary, per_seed = sweep_results(sweep, reg, ["base", "hm"])
    base = [folder_metrics(reg, s)["base"] for s in sweep.specs]
    row = summary[summary["metric"] == "base"].iloc[0]
    from scipy.stats import t

    assert row["n"] == 2 and list(per_seed["base"]) == base and list(per_seed["seed"]) == [1, 2]
    assert row["mean"] == pytest.approx(np.mean(base)) and row["std"] == pytest.approx(np.std(base, ddof=1))
    assert row["ci95"] == pytest.approx(t.ppf(0.975, 1) * np.std(base, ddof=1) / math.sqrt(2))


def test_two_sweeps_on_one_registry_at_once_lose_and_duplicate_nothing(data_root, tmp_path):
    a = write(tmp_path, sweep_yaml(data_root, seeds=(1, 2), workers=1), "a.yaml")
    b = write(tmp_path, sweep_yaml(data_root, seeds=(2, 3), workers=1), "b.yaml")
    reg_path = tmp_path / "runs"
    procs = [subprocess.Popen([*WORKBENCH, "sweep", str(p), "--registry", str(reg_path)], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in (a, b)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    union = {s.hash: s for p in (a, b) for s in load_sweep(p).specs}
    reg = Registry(reg_path)
    listed = reg.list()
    assert len(union) == 4 and sorted(listed["hash"]) == sorted(union) and set(listed["status"]) == {"done"}
    run_dirs = sorted(d.name for d in reg_path.iterdir() if d.is_dir() and d.name != GROUPS_DIR)
    assert run_dirs == sorted(s.short_hash for s in union.values())
    groups = {g["name"]: g["hashes"] for g in list_groups(reg_path)}  # each sweep's own runs, shared ones in both
    assert groups == {name: [s.hash for s in load_sweep(p).specs] for name, p in (("a", a), ("b", b))}
    for spec in union.values():  # each run executed once, the shared ones included
        assert reg.get(spec).read_log().count("status -> done") == 1


def test_sweep_status_reports_failures_with_their_last_line_and_the_retry_command(data_root, tmp_path):
    path = write(tmp_path, sweep_yaml(data_root))
    sweep = load_sweep(path)
    reg = Registry(tmp_path / "runs")
    reg.create_or_get(sweep.specs[1]).set_status("failed", "Traceback ...\nValueError: the loss is NaN")
    merge_index(reg, sweep.specs)
    res = subprocess.run([*WORKBENCH, "sweep", "status", str(path), "--registry", str(reg.root)], env=env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "3 runs: 0 done, 0 running, 1 failed, 0 interrupted, 2 pending" in res.stdout
    assert f"failed {sweep.specs[1].short_hash}" in res.stdout and "ValueError: the loss is NaN" in res.stdout
    assert f"workbench sweep {path} --only failed --registry {reg.root}" in res.stdout
    dry = subprocess.run([*WORKBENCH, "sweep", str(path), "--registry", str(reg.root), "--only", "failed",
                          "--dry-run"], env=env(), capture_output=True, text=True, timeout=120)
    assert sweep.specs[1].short_hash in dry.stdout and sweep.specs[0].short_hash not in dry.stdout
    assert "3 runs: 0 done, 3 to run" in dry.stdout


def test_a_preempted_task_resumes_from_its_checkpoint_in_folders_mode(data_root, tmp_path):
    from workbench.runs.execute import execute
    from workbench.sweeps.executors import SweepTask

    spec = load_sweep(write(tmp_path, sweep_yaml(data_root, seeds=(1,), epochs=15, methods=("coop",)))).specs[0]
    (tmp_path / "spec.json").write_text(json.dumps(spec.to_dict()))
    root = tmp_path / "runs"
    code = ("import json, sys; from workbench.sweeps.executors import SweepTask; "
            f"SweepTask()(json.load(open({str(tmp_path / 'spec.json')!r})), {str(root)!r}, 'folders')")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env(), stderr=subprocess.PIPE, text=True)
    ckpts = root / spec.short_hash / "checkpoints"
    assert _wait_for(lambda: ckpts.is_dir() and any(ckpts.glob("epoch_*.pt")) or proc.poll() is not None)
    proc.send_signal(signal.SIGTERM)  # the node goes away mid-training
    proc.communicate(timeout=120)
    status = json.loads((root / spec.short_hash / "status.json").read_text())["status"]
    if status == "done":
        pytest.skip("the run finished before it could be stopped")
    assert status == "interrupted" and not (root / DB_NAME).exists()  # the task wrote only its folder
    out = SweepTask()(spec.to_dict(), str(root), "folders")  # the requeued task
    assert out["status"] == "done" and out["metrics"]["resumed_from_epoch"] >= 0
    ref = execute(spec, Registry(tmp_path / "ref"), progress=False)
    assert comparable(out["metrics"]) == comparable(ref.metrics)
