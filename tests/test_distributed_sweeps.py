"""Sweep tasks with several GPUs (or CPU processes) run under torchrun: the SLURM submission asks for the
GPUs and hands each task its process count; the local pool gives each worker its group of GPUs; a local
2-process CPU task records the run a 1-process task records."""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import make_eurosat  # noqa: E402
from workbench.runs import Registry  # noqa: E402
from workbench.sweeps import load_sweep, run_sweep  # noqa: E402
from workbench.sweeps.executors import device_groups, task_processes  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_sweep_data")
    make_eurosat(root, corrupt=False)
    return root


def finetune_sweep(data_root, extra: str) -> str:
    return (f"data_root: {data_root}\n"
            "grid:\n"
            "  methods: [finetune]\n"
            "  protocols: few_shot\n"
            "  datasets: [eurosat]\n"
            "  shots: [2]\n"
            "  seeds: [1]\n"
            "  backbones: wb-tiny-vit\n"
            "  settings: {train.epochs: 2, train.batch_size: 7, train.precision: fp32}\n" + extra)


def test_gpus_are_grouped_per_worker_and_a_remainder_is_left_unused():
    assert device_groups([0, 1, 2, 3, 4], 2) == ["0,1", "2,3"]
    assert device_groups(["0", "1"], 1) == ["0", "1"]
    with pytest.raises(ValueError, match="cannot hold"):
        device_groups([0], 2)
    assert task_processes({"gpus_per_task": 4}, "slurm") == 4 and task_processes({}, "slurm") == 1


def test_slurm_submission_requests_the_gpus_and_each_task_runs_under_torchrun(data_root, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch.record"
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" >> {record}\ncat \"$1\" >> {record}\n"
                                    "echo 'Submitted batch job 77'\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    path = tmp_path / "ft.yaml"
    path.write_text(finetune_sweep(data_root, "slurm: {partition: gpu, gpus_per_task: 4, cpus_per_task: 32}\n"))
    out = run_sweep(load_sweep(path), tmp_path / "runs", executor="slurm", folder=tmp_path / "jobs", wait=False,
                    echo=None)
    script = record.read_text()
    for line in ("#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=32",
                 "#SBATCH --nodes=1"):
        assert line in script, line
    assert len(out["jobs"]) == 1
    (pkl,) = (tmp_path / "jobs").glob("*_submitted.pkl")
    delayed = pickle.loads(pkl.read_bytes())
    assert delayed.args[4] == 4  # the task starts its spec on 4 torchrun processes
    assert delayed._checkpoint_function().args == delayed.args  # a requeued task does the same


@pytest.mark.slow  # a torchrun launch of 2 CPU processes and a 1-process task
def test_local_two_process_cpu_task_records_the_one_process_run(data_root, tmp_path):
    results = {}
    for name, extra in (("one", ""), ("two", "  nproc_per_task: 2\n")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(finetune_sweep(data_root, "executor:\n  kind: local\n  workers: 1\n  threads: 1\n" + extra))
        sweep = load_sweep(path)
        out = run_sweep(sweep, tmp_path / name, echo=None)
        assert [r["status"] for r in out["results"]] == ["done"], out["results"]
        results[name] = Registry(tmp_path / name).find(sweep.specs[0])
    one, two = results["one"], results["two"]
    assert one.hash == two.hash
    assert two.metrics["top1"] == pytest.approx(one.metrics["top1"], abs=1e-9)
    h1, h2 = one.history(), two.history()
    assert list(h1["loss"]) == pytest.approx(list(h2["loss"]), rel=1e-5)
