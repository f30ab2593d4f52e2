"""Training under `torchrun` with DistributedDataParallel (gloo on CPU, NCCL on GPU).

N processes with a global batch B reproduce ONE process with batch B (within float tolerance):

- every rank builds the same shuffled order of the epoch and loads the same global batch (so random
  augmentations are drawn in the same order as in one process), then keeps its contiguous shard
  (`shard_bounds`: sizes differ by at most one, DistributedSampler-style);
- the local mean loss is weighted by n_r·N/n before backward, so DDP's average of the gradients is the
  gradient of the global-batch mean even for an uneven last batch (a rank left without a sample runs one
  sample at weight 0, which keeps every rank in the collective);
- epoch statistics (loss, accuracy, loss terms) are summed over ranks before they are recorded.
`train.batch_size` stays the GLOBAL batch: the run's spec, and so its identity, do not depend on the
number of processes. The cost of exactness is that every rank decodes the whole global batch.

Only rank 0 writes the run folder: the other ranks see the run through `FollowerRun` (reads
checkpoints, so resume works on every rank; writes nothing).

Methods that rewrite gradients in `backward` (ProGrad-style) need several backward passes per step,
which DDP's one-reduction-per-step contract does not allow: they are refused with a clear error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or any launcher setting RANK / WORLD_SIZE) with more
    than one process."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str | None = None) -> DistributedContext | None:
    """Join the process group torchrun set up (env://): NCCL when the run is on CUDA, gloo on CPU.
    None when not launched by torchrun. On CUDA, each rank uses GPU LOCAL_RANK."""
    if not launched_by_torchrun():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())


def rank_device(ctx: DistributedContext | None, device: str | None) -> str | None:
    """The device this rank trains on: cuda:LOCAL_RANK under NCCL, else `device`."""
    if ctx is not None and ctx.backend == "nccl":
        return f"cuda:{ctx.local_rank}"
    return device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (a picklable value)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_bounds(n: int, world: int, index: int) -> tuple[int, int]:
    """[start, stop) of shard `index` when n items are cut into `world` contiguous shards whose sizes
    differ by at most one (the first n % world shards get one more)."""
    if world < 1 or not 0 <= index < world:
        raise ValueError(f"shard {index} of {world} does not exist")
    base, extra = divmod(n, world)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's `x` [n_r, ...] concatenated in rank order, differentiable (the backward sums the
    gradients of all ranks into each rank's part); shards may differ in size."""
    if not active():
        return x
    world = dist.get_world_size()
    sizes = [None] * world
    dist.all_gather_object(sizes, int(x.shape[0]))
    longest = max(sizes)
    padded = torch.cat([x, x.new_zeros((longest - x.shape[0],) + tuple(x.shape[1:]))]) if x.shape[0] < longest else x
    import torch.distributed.nn.functional as dist_fn

    parts = dist_fn.all_gather(padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def rewrites_gradients(method) -> bool:
    """Whether `method` overrides `Method.backward` (several passes per step, gradient rewrites)."""
    return getattr(type(method).backward, "__qualname__", "") != "Method.backward"


class _TrainingLoss(nn.Module):
    """The module DDP wraps: its forward is the method's training loss, so DDP's hooks see every step."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor):
        return self.method.training_loss(inputs, labels)


class DistributedStep:
    """One rank's share of every training step (see the module doc). Built by `fit` when a process
    group is active; `close()` removes DDP's hooks (each stage of staged training builds its own)."""

    def __init__(self, method: nn.Module, device: torch.device):
        if rewrites_gradients(method):
            raise ValueError(f"method {method.name!r} rewrites gradients in backward() (several backward passes "
                             "per step), which DistributedDataParallel does not support: run it in one process "
                             "(without torchrun / --nproc)")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.gathered = getattr(method, "distributed_loss", "local_mean") == "gathered"
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(_TrainingLoss(method), device_ids=device_ids)

    def backward(self, inputs: torch.Tensor, labels: torch.Tensor, scale: Callable = lambda loss: loss):
        """Forward and backward of this rank's shard of the global batch; returns (LossOutput, the shard's
        labels, how many real samples it held)."""
        n = labels.shape[0]
        start, stop = shard_bounds(n, self.world, self.rank)
        count = stop - start
        if count == 0:  # fewer samples than ranks: one sample at weight 0 keeps this rank in the reduction
            start, stop = 0, 1
        out = self.ddp(inputs[start:stop], labels[start:stop])
        # a loss over the gathered global batch (distributed_loss = "gathered") is already the global one
        weight = 1.0 if self.gathered else count * self.world / n
        scale(out.loss * weight).backward()
        if count == 0:
            out.logits = None
        return out, labels[start:stop], count

    def reduce_epoch(self, totals: dict[str, float], seen: int, correct: int) -> tuple[dict[str, float], int, int]:
        """Sums of the per-rank epoch statistics (every rank gets the same values)."""
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, (totals, seen, correct))
        summed: dict[str, float] = {}
        for part, _, _ in gathered:
            for k, v in part.items():
                summed[k] = summed.get(k, 0.0) + v
        return summed, sum(g[1] for g in gathered), sum(g[2] for g in gathered)

    def close(self) -> None:
        del self.ddp


def distributed_step(method: nn.Module, device: torch.device, grad_transform: str = "none") -> DistributedStep | None:
    """The DDP step helper when a process group with several ranks is active, else None."""
    if not active():
        return None
    if grad_transform != "none":
        raise ValueError(f"train.grad_transform={grad_transform} needs a second forward/backward per step, which "
                         "DistributedDataParallel does not support: run it in one process (without torchrun / --nproc)")
    return DistributedStep(method, device)


class FollowerRun:
    """The run as ranks other than 0 see it: checkpoints are read (resume), nothing is written."""

    def __init__(self, run):
        self.run = run

    def load_checkpoint(self, map_location: Any = "cpu", epoch: int | None = None):
        return self.run.load_checkpoint(map_location=map_location, epoch=epoch) if self.run is not None else None

    def latest_checkpoint(self):
        return self.run.latest_checkpoint() if self.run is not None else None

    def save_checkpoint(self, state: dict, epoch: int, **kw) -> None:
        return None

    def _nothing(self, *args, **kwargs) -> None:
        return None

    log = log_epoch = set_progress = save_predictions = save_embeddings = write_metrics = set_status = _nothing

    def __getattr__(self, item):  # reads (hash, spec, status, ...) from the real run
        if self.run is None:
            raise AttributeError(item)
        return getattr(self.run, item)


__all__ = ["DistributedContext", "DistributedStep", "FollowerRun", "active", "barrier", "broadcast_object",
           "distributed_step", "gather_with_grad", "init_distributed", "is_main", "launched_by_torchrun", "rank", "rank_device",
           "rewrites_gradients", "shard_bounds", "world_size"]
