"""Atomic checkpoints and resume-after-SIGKILL through the RunHandle checkpoint API.

`train()` below is a tiny deterministic training loop using the same API the real engine will use:
resume from `load_checkpoint()`, `log_epoch` every epoch, `save_checkpoint` (model + optimizer + all
RNG states) after every epoch. It runs in subprocesses that are SIGKILLed part-way.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from workbench.fileio import temp_files
from workbench.runs import Registry
from workbench.runs.spec import RunSpec

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
EPOCHS = 6


class MomentumSGD:
    """Minimal SGD with momentum and a state dict (torch.optim pulls in torch._dynamo: seconds of import)."""

    def __init__(self, params, lr: float = 0.05, momentum: float = 0.9):
        self.params, self.lr, self.momentum = list(params), lr, momentum
        self.buffers = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p, buf in zip(self.params, self.buffers):
            buf.mul_(self.momentum).add_(p.grad)
            p.add_(buf, alpha=-self.lr)

    def state_dict(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "buffers": [b.clone() for b in self.buffers]}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.momentum = state["lr"], state["momentum"]
        for buf, saved in zip(self.buffers, state["buffers"]):
            buf.copy_(saved)


def _plain_numpy_state() -> tuple:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, keys.tolist(), int(pos), int(has_gauss), float(cached)


def toy_spec(seed: int = 0) -> RunSpec:
    return RunSpec(method="toy_linear", protocol="unit", datasets=("synthetic",), seed=seed,
                   train_config={"epochs": EPOCHS})


def train(root: str, seed: int, kill_in_epoch: int | None = None) -> None:
    """Train; with `kill_in_epoch=k`, SIGKILL ourselves after logging epoch k but before checkpointing it."""
    torch.set_num_threads(1)
    reg = Registry(root)
    run = reg.create_or_get(toy_spec(seed))
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)

    g = torch.Generator().manual_seed(1234)  # fixed synthetic data, independent of the seed
    x = torch.randn(96, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))
    opt = MomentumSGD(model.parameters())

    start = 0
    ckpt = run.load_checkpoint()
    if ckpt is not None:
        epoch, state = ckpt
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        name, keys, pos, has_gauss, cached = state["numpy_rng"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        start = epoch + 1
        run.log(f"resumed from epoch {epoch}")
    run.set_status("running")

    for epoch in range(start, EPOCHS):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(x)).split(16):  # torch RNG
            noise = torch.from_numpy(np.random.randn(len(idx), 8).astype(np.float32))  # numpy RNG
            scale = 0.05 * random.random()  # python RNG
            loss = torch.nn.functional.cross_entropy(model(x[idx] + scale * noise), y[idx])  # dropout: torch RNG
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        run.log_epoch(epoch, {"loss": total / len(x), "acc": acc, "w_norm": model[0].weight.norm().item()})
        run.set_progress((epoch + 1) / EPOCHS, f"epoch {epoch + 1}/{EPOCHS}")
        if epoch == kill_in_epoch:
            os.kill(os.getpid(), signal.SIGKILL)
        run.save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "numpy_rng": _plain_numpy_state(),  # checkpoints hold plain values (weights_only)
            },
            epoch,
        )

    model.eval()
    with torch.no_grad():
        logits = model(x)
    run.save_predictions("train", y, logits.argmax(1), logits)
    run.write_metrics({"acc": (logits.argmax(1) == y).float().mean().item(),
                       "loss": torch.nn.functional.cross_entropy(logits, y).item()})
    run.set_status("done")


def _python(code: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, **popen)


def _train_subprocess(*calls: tuple[Path, int, int | None]) -> int:
    """Run `train(root, seed, kill_in_epoch)` for each call, in order, in one fresh interpreter."""
    code = "import test_runs_resume as t\n" + "".join(f"t.train({str(r)!r}, {s}, {k!r})\n" for r, s, k in calls)
    return _python(code).wait(timeout=120)


def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    seed, k = 7, 2
    ref_root, kill_root = tmp_path / "ref", tmp_path / "killed"

    # dies after logging epoch k+1, before checkpointing it
    assert _train_subprocess((kill_root, seed, k + 1)) == -signal.SIGKILL
    killed = Registry(kill_root).get(toy_spec(seed).hash)
    assert killed.status == "running"  # a killed run is left as it was
    assert killed.latest_checkpoint()[0] == k
    assert list(killed.history()["epoch"]) == list(range(k + 2))

    # rerun: resumes from epoch k; then (same interpreter, saving a torch import) an uninterrupted reference run
    assert _train_subprocess((kill_root, seed, None), (ref_root, seed, None)) == 0
    assert "resumed from epoch 2" in killed.read_log()

    ref = Registry(ref_root).get(toy_spec(seed).hash)
    assert "resumed" not in ref.read_log()
    assert ref.status == killed.status == "done"
    (ref_epoch, ref_state), (res_epoch, res_state) = ref.load_checkpoint(), killed.load_checkpoint()
    assert ref_epoch == res_epoch == EPOCHS - 1
    for key, value in ref_state["model"].items():
        assert torch.equal(value, res_state["model"][key]), key
    assert torch.equal(ref_state["torch_rng"], res_state["torch_rng"])
    assert ref.metrics == killed.metrics
    # epoch k+1 was logged twice (before the kill and after the resume): one row, same values as the reference
    ref_hist, res_hist = ref.history(), killed.history()
    assert list(res_hist["epoch"]) == list(range(EPOCHS))
    assert ref_hist.equals(res_hist)
    lines = (killed.dir / "history.jsonl").read_text().splitlines()
    assert len(lines) == EPOCHS
    np.testing.assert_array_equal(ref.load_predictions("train")["logits"], killed.load_predictions("train")["logits"])


# The writer child stubs `torch.save` (importing torch would cost seconds): it writes the first half of a
# real serialized checkpoint (made by the parent), flushes, signals, and hangs until it is SIGKILLed.
SLOW_WRITER = r"""
import sys, time, types
root, payload_path, marker = sys.argv[1:4]
def half_then_hang(obj, f, *a, **kw):
    data = open(payload_path, "rb").read()
    f.write(data[: len(data) // 2])
    f.flush()
    open(marker, "w").write("mid-write")
    time.sleep(60)
    f.write(data[len(data) // 2 :])
never = type("Never", (), {})  # the type names check_plain_state looks up
sys.modules["torch"] = types.SimpleNamespace(save=half_then_hang, Tensor=never, Size=never, dtype=never, device=never)
from workbench.runs import Registry
from workbench.runs.spec import RunSpec
run = Registry(root).create_or_get(RunSpec(method="ckpt", protocol="unit", datasets=("synthetic",)))
run.save_checkpoint({"w": None}, 2)
"""


def test_checkpoint_never_half_written(tmp_path):
    root, marker, payload = tmp_path / "runs", tmp_path / "marker", tmp_path / "payload.pt"
    spec = RunSpec(method="ckpt", protocol="unit", datasets=("synthetic",))
    run = Registry(root).create_or_get(spec)
    for e in (0, 1):
        run.save_checkpoint({"w": torch.full((256, 1024), float(e))}, e)
    torch.save({"epoch": 2, "state": {"w": torch.full((256, 1024), 2.0)}}, payload)

    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(root), str(payload), str(marker)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 60
    while not marker.exists():
        assert proc.poll() is None, "writer exited early"
        assert time.time() < deadline, "writer never reached the middle of a checkpoint"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL

    ckpt_dir = run.checkpoint_dir
    tmp_files = temp_files(ckpt_dir)
    assert len(tmp_files) == 1 and tmp_files[0].stat().st_size > 0  # the half-written temp file ...
    try:
        torch.load(tmp_files[0], weights_only=False)
        half_loadable = True
    except Exception:
        half_loadable = False
    assert not half_loadable  # ... really is broken,
    assert sorted(p.name for p in ckpt_dir.glob("epoch_*.pt")) == ["epoch_0000.pt", "epoch_0001.pt"]  # never renamed
    epoch, state = run.load_checkpoint()  # the latest complete checkpoint is intact
    assert epoch == 1 and torch.equal(state["w"], torch.full((256, 1024), 1.0))

    run.save_checkpoint({"w": torch.zeros(1)}, 2)  # next save cleans the stray temp file
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]
