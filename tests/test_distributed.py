"""Training under DDP (engine.distributed): 2 CPU processes (gloo) with global batch B train the same weights
and record the same history as one process with batch B; only rank 0 writes; a follower resumes from
rank 0's checkpoint."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from workbench.engine.distributed import FollowerRun, shard_bounds
from workbench.engine.train import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_color_dataset  # noqa: E402

torch.set_num_threads(1)


def test_shards_cover_the_batch_in_order_with_sizes_differing_by_at_most_one():
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            bounds = [shard_bounds(n, world, r) for r in range(world)]
            assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        shard_bounds(4, 2, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backbone():
    from workbench.backbone import CLIPBackbone

    torch.manual_seed(0)
    return CLIPBackbone.from_pretrained("wb-tiny-vit")


def _method(name: str, ds, **config):
    from workbench.methods import build_method
    from workbench.methods.base import ClassTask

    torch.manual_seed(0)
    return build_method(name, _backbone(), ClassTask.from_splits(ds), overrides=config)


# 15 images, global batch 4: batches of 4, 4, 4 and 3 (the last one splits 2 + 1 over two ranks)
CFG = dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4, batch_size=4, epochs=2, warmup_epochs=0,
           schedule="cosine", crop_scale=(0.5, 1.0), flip=True, precision="fp32")


def _train(name: str, ds, run=None, **cfg) -> tuple[dict, list]:
    method = _method(name, ds)
    for p in method.stage_parameters("all"):
        p.requires_grad_(True)
    res = fit(method, ds, TrainConfig(**{**CFG, **cfg}), seed=3, run=run, progress=False)
    return {k: v.detach().clone() for k, v in method.trainable_state_dict().items()}, res.history


def _worker(rank: int, world: int, port: int, ds, out: str, names: list, cfg: dict, runs: str | None):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from workbench.engine.distributed import init_distributed

    ctx = init_distributed("cpu")
    assert ctx is not None and ctx.backend == "gloo" and ctx.world_size == world
    run = None
    if runs is not None:
        run = _DiskRun(Path(runs))
        run = run if rank == 0 else FollowerRun(run)
    results = {}
    for name in names:
        state, history = _train(name, ds, run=run, **cfg)
        results[name] = {"state": state, "history": history}
    if rank == 0:
        torch.save(results, out)
    torch.distributed.destroy_process_group()


class _DiskRun:
    """The part of a run handle `fit` uses, on disk (shared by the processes)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def save_checkpoint(self, state, epoch, **kw):
        torch.save((epoch, state), self.folder / f"ckpt_{epoch}.pt")
        (self.folder / f"writer_{os.environ.get('RANK', '0')}").touch()

    def load_checkpoint(self, map_location="cpu", epoch=None):
        found = sorted(self.folder.glob("ckpt_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        return torch.load(found[-1], weights_only=False) if found else None

    def log(self, msg):
        pass

    def log_epoch(self, epoch, record):
        pass

    def set_progress(self, fraction, message=""):
        pass


def _ddp(tmp_path, ds, names: list, cfg: dict | None = None, runs: Path | None = None) -> dict:
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, _free_port(), ds, str(out), names, cfg or {},
                            str(runs) if runs else None), nprocs=2, join=True)
    return torch.load(out, weights_only=False)


def _assert_same(single_state, single_history, ddp):
    assert single_state.keys() == ddp["state"].keys()
    for k, v in single_state.items():
        torch.testing.assert_close(ddp["state"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert [r.keys() for r in ddp["history"]] == [r.keys() for r in single_history]
    for a, b in zip(ddp["history"], single_history):
        for k in b:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k


def test_two_gloo_processes_train_the_weights_of_one_process_with_the_same_global_batch(tmp_path):
    """FT (a per-sample loss: shards weighted), FLYP (a batch-coupled contrastive loss: features gathered) and
    RAda-FT (the mask on top of the tower)."""
    ds = make_color_dataset(tmp_path / "colors")
    ds.templates = ["a photo of a {} square."]  # one caption template: FLYP draws no random template
    ddp = _ddp(tmp_path, ds, ["finetune", "flyp", "rada_fft"])
    for name in ("finetune", "flyp", "rada_fft"):
        single_state, single_history = _train(name, ds)
        _assert_same(single_state, single_history, ddp[name])
        assert any("visual" in k for k in single_state)  # the image tower is trained, and identically


@pytest.mark.slow  # two more 2-process launches
def test_ddp_resumes_from_rank_zeros_checkpoint_and_only_rank_zero_writes(tmp_path):
    runs = tmp_path / "run"
    cfg = {"schedule": "constant"}  # the same schedule whether 1 or 2 epochs are planned
    ds = make_color_dataset(tmp_path / "colors")
    _ddp(tmp_path, ds, ["finetune"], {**cfg, "epochs": 1}, runs)
    assert sorted(p.name for p in runs.glob("writer_*")) == ["writer_0"]
    resumed = _ddp(tmp_path, ds, ["finetune"], {**cfg, "epochs": 2}, runs)["finetune"]  # both ranks load epoch 0, train epoch 1
    single_state, single_history = _train("finetune", ds, **cfg)
    _assert_same(single_state, single_history, resumed)
