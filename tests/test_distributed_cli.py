"""`workbench run --nproc N` / `torchrun -m workbench run`: the run a 2-process launch records equals the
one-process run (same spec, same metrics and history within float tolerance), written by rank 0 only."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from workbench.cli import build_parser
from workbench.run_cli import _run_argv
from workbench.runs.distributed import torchrun_command

ARGS = ["run", "--method", "finetune", "--protocol", "full_finetune", "--dataset", "toy_objects",
        "toy_objects_shifted", "--shots", "1", "--backbone", "wb-tiny-vit", "--set", "train.epochs=2",
        "--set", "train.batch_size=20", "--device", "cpu", "--quiet"]


def test_nproc_relaunches_the_same_run_arguments_under_torchrun():
    parser = build_parser()
    args = parser.parse_args(ARGS + ["--nproc", "2", "--seed", "1", "2", "--registry", "/r", "--shots", "none"])
    again = parser.parse_args(_run_argv(args))
    assert again.nproc is None
    assert {k: v for k, v in vars(again).items() if k not in ("nproc", "func")} == \
        {k: v for k, v in vars(args).items() if k not in ("nproc", "func")}
    assert args.shots is None
    cmd = torchrun_command(2, _run_argv(args))
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:8] == ["-m", "workbench", "run"]
    with pytest.raises(ValueError):
        torchrun_command(0, ["run"])


@pytest.mark.slow  # two launches of the CLI, one on 2 processes
def test_two_process_cli_run_records_the_one_process_result(toy_data_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        subprocess.run([sys.executable, "-m", "workbench", *ARGS, "--registry", str(tmp_path / name), *extra],
                       check=True, env=env, capture_output=True, text=True, timeout=600)
    (one,), (two,) = [[d for d in (tmp_path / n).iterdir() if (d / "spec.json").exists()] for n in ("one", "two")]
    assert one.name == two.name  # the same spec: the process count is not part of a run's identity
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    for key in ("toy_objects", "toy_objects_shifted", "average"):
        assert m2[key] == pytest.approx(m1[key], abs=1e-9)
    h1, h2 = ([json.loads(line) for line in (d / "history.jsonl").read_text().splitlines()] for d in (one, two))
    assert len(h1) == len(h2) == 2
    for a, b in zip(h1, h2):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["train_acc"] == b["train_acc"]
