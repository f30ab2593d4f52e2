"""The one training loop every method uses: optimizers and schedules the papers use, AMP on CUDA,
per-epoch checkpoints and exact resume, deterministic seeding, NaN guard, progress, history."""
from __future__ import annotations

import math
import random
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ..data.images import ImageDataset, check_skipped, collate_skip_none
from ..data.transforms import train_transform
from ..data.types import DatasetSplits
from .distributed import distributed_step
from .features import FeatureCache, encode_images
from .grad_transforms import GRAD_TRANSFORMS, StepStatistics, grad_transform_from


def config_from_dict(cls, values: dict[str, Any] | None, what: str):
    """A settings dataclass from a dict (as stored: lists for tuples); unknown keys are an error listing
    the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values or {}) - known)
    if unknown:
        raise KeyError(f"unknown {what} settings {unknown}; known: {sorted(known)}")
    values = dict(values or {})
    if "crop_scale" in values:
        values["crop_scale"] = tuple(values["crop_scale"])
    return cls(**values)


@dataclass
class TrainConfig:
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.002
    weight_decay: float = 5e-4
    momentum: float = 0.9
    epochs: int = 10
    batch_size: int = 32
    warmup_epochs: int = 1  # constant warm-up (Dassl's "constant" warmup)
    warmup_lr: float = 1e-5
    schedule: str = "cosine"  # cosine | constant
    schedule_unit: str = "epoch"  # epoch (Dassl) | iter (CLIP-LoRA)
    max_iters: int | None = None  # stop after this many optimizer steps (iteration-budgeted methods)
    precision: str = "amp"  # amp (fp16 autocast + grad scaling) | bf16 | fp32; CPU always runs fp32
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True
    grad_clip: float | None = None
    eval_batch_size: int = 128
    num_workers: int = 0
    feature_views: int = 10  # augmented views cached per image for methods trained on features
    # methods with a frozen image tower (CoOp family) train on `feature_views` cached augmented views,
    # epoch e reading view e % feature_views, instead of encoding fresh crops every epoch
    cached_features: bool = False
    # a second forward/backward at θ + ρ·g/‖g‖ (engine.grad_transforms): sam updates with that gradient
    # g′, gradreg (GLAD's Algorithm 1) with (1 − α)·g + α·g′ after removing a conflict with g
    grad_transform: str = "none"  # none | sam | gradreg
    grad_rho: float = 0.1  # ρ: the perturbation radius (SAM's and GLAD's 0.1)
    grad_alpha: float = 0.5  # α: gradreg's weight of g′ (GLAD's 0.5)
    grad_delta: float = 1e-12  # δ: gradreg's stabilizer in ⟨g, g′⟩/(‖g‖² + δ) (GLAD: "a small constant")

    CHOICES = {"optimizer": ("sgd", "adamw"), "schedule": ("cosine", "constant"), "schedule_unit": ("epoch", "iter"),
               "precision": ("amp", "bf16", "fp32"), "grad_transform": GRAD_TRANSFORMS}

    def __post_init__(self) -> None:
        problems = [f"train.{k} must be one of {', '.join(v)}, got {getattr(self, k)!r}"
                    for k, v in self.CHOICES.items() if getattr(self, k) not in v]
        at_least = {"epochs": 1, "batch_size": 1, "warmup_epochs": 0, "eval_batch_size": 1, "num_workers": 0,
                    "feature_views": 1, "weight_decay": 0, "warmup_lr": 0}
        problems += [f"train.{k} must be at least {low}, got {getattr(self, k)!r}"
                     for k, low in at_least.items() if getattr(self, k) < low]
        if not self.lr > 0:
            problems.append(f"train.lr must be positive, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            problems.append(f"train.momentum must be in [0, 1), got {self.momentum!r}")
        if self.max_iters is not None and self.max_iters < 1:
            problems.append(f"train.max_iters must be at least 1 (or null), got {self.max_iters!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"train.grad_clip must be positive (or null), got {self.grad_clip!r}")
        if not self.grad_rho > 0:
            problems.append(f"train.grad_rho must be positive, got {self.grad_rho!r}")
        if not 0 <= self.grad_alpha <= 1:
            problems.append(f"train.grad_alpha must be in [0, 1], got {self.grad_alpha!r}")
        if not self.grad_delta >= 0:
            problems.append(f"train.grad_delta must be at least 0, got {self.grad_delta!r}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            problems.append(f"train.crop_scale must be two numbers 0 < low <= high <= 1, got {self.crop_scale!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "TrainConfig":
        return config_from_dict(cls, values, "training")

    def to_dict(self) -> dict:
        return asdict(self)


class NonFiniteLossError(FloatingPointError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


ITER_COSINE_MIN_LR = 1e-6  # CLIP-LoRA's CosineAnnealingLR(eta_min=1e-6) over all iterations


def lr_at(cfg: TrainConfig, epoch: int, step_in_epoch: int = 0, steps_per_epoch: int = 1) -> float:
    """Learning rate of a given step: constant warm-up epochs, then cosine.

    Per epoch (Dassl: constant warm-up chained to CosineAnnealingLR(T_max=epochs), WARMUP_RECOUNT=True,
    stepped after each epoch): epoch e >= W runs at lr * (1 + cos(pi (e - W) / E)) / 2, so the first
    epoch after warm-up is at the peak. Per iteration (CLIP-LoRA): cosine from lr to 1e-6 over the run.
    """
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule != "cosine":
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    if cfg.schedule_unit == "iter":
        total = cfg.max_iters or cfg.epochs * steps_per_epoch
        t = min(epoch * steps_per_epoch + step_in_epoch, total)
        low = ITER_COSINE_MIN_LR
        return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * t / total))
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / cfg.epochs))


TEST_TIME_PHASE = "test_time"  # engine.test_time's checkpoints, which carry the training checkpoint


def training_checkpoint(run, map_location: Any = "cpu") -> tuple[int, dict] | None:
    """The run's latest training checkpoint, looking through test-time checkpoints (which carry it)."""
    loaded = run.load_checkpoint(map_location=map_location)
    if loaded is not None and isinstance(loaded[1], dict) and loaded[1].get("phase") == TEST_TIME_PHASE:
        return loaded[1].get("carry")
    return loaded


def build_optimizer(method, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = method.param_groups(cfg.lr, cfg.weight_decay)
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise ValueError(f"method {method.name!r} has no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use sgd or adamw")


def set_training_modes(method: torch.nn.Module) -> None:
    """Train mode except in sub-trees whose parameters are all frozen (the pretrained CLIP, frozen
    teachers), which stay in eval. So what a method trains, also inside the backbone (LoRA, adapters),
    runs with its dropout on; parameter-free modules follow their parent."""
    method.train()

    def visit(module):
        for child in module.children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                child.eval()
            else:
                visit(child)

    visit(method)


def _set_lr(optimizer, lr: float, base_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int | None = None
    skipped_images: int = 0
    steps: int = 0


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def _train_batches(method, ds: DatasetSplits, cfg: TrainConfig, seed: int, device, cache, progress=True):
    """Returns make_loader(epoch) -> iterable of (inputs, labels), and what has `.skipped` (paths)."""
    backbone = method.backbone
    transform = train_transform(backbone.image_size, backbone.mean, backbone.std, scale=cfg.crop_scale, flip=cfg.flip)
    if method.trains_on_cached_features(cfg):
        enc = encode_images(backbone, ds.train, ds.image_root, transform, views=cfg.feature_views, seed=seed,
                            cache=cache, desc=f"{ds.name}/train features", progress=progress)

        def make_loader(epoch):
            view = epoch % enc.features.shape[0]
            data = TensorDataset(enc.features[view], enc.labels)
            g = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
            return DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=g)

        return make_loader, enc
    dataset = ImageDataset(ds.train, ds.image_root, transform)

    def make_loader(epoch):
        g = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=g,
                          num_workers=cfg.num_workers, collate_fn=collate_skip_none,
                          pin_memory=device.type == "cuda")

    return make_loader, dataset


def fit(method, ds: DatasetSplits, cfg: TrainConfig, *, seed: int = 1, device: str | torch.device = "cpu",
        run=None, cache: FeatureCache | None = None, progress: bool = True) -> FitResult:
    """Train `method` on `ds.train`. With a registry `run`, every epoch is logged and checkpointed,
    and a run that was interrupted resumes from its last checkpoint with identical results."""
    device = torch.device(device)
    method.to(device)
    result = FitResult()
    if not method.trainable:
        return result
    seed_everything(seed)
    if method.closed_form:
        return _fit_closed_form(method, ds, cfg, seed, device, run, cache, result, progress)

    optimizer = build_optimizer(method, cfg)
    use_scaler = device.type == "cuda" and cfg.precision == "amp"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    start_epoch = 0
    if run is not None:
        loaded = training_checkpoint(run, map_location=device)
        if loaded is not None:
            epoch_done, state = loaded
            method.load_trainable_state_dict(state["method"])
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            result.history = state.get("history", [])
            result.steps = state.get("steps", 0)
            start_epoch = epoch_done + 1
            result.resumed_from_epoch = epoch_done
            run.log(f"resumed from checkpoint of epoch {epoch_done}")

    make_loader, image_dataset = _train_batches(method, ds, cfg, seed, device, cache, progress)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    transform = grad_transform_from(cfg.grad_transform, cfg.grad_rho, cfg.grad_alpha, cfg.grad_delta)
    ddp = distributed_step(method, device, cfg.grad_transform)  # None unless under torchrun with N > 1
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.max_iters is not None and result.steps >= cfg.max_iters:
            break
        seed_everything(_epoch_seed(seed, epoch))
        set_training_modes(method)
        loader = make_loader(epoch)
        steps_per_epoch = max(len(loader), 1)
        totals: dict[str, float] = {}
        seen = correct = 0
        transform_stats = StepStatistics()
        bar = tqdm(loader, desc=f"{method.name} epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress)
        for step, batch in enumerate(bar):
            if batch is None:
                continue
            if cfg.max_iters is not None and result.steps >= cfg.max_iters:
                break
            inputs, labels = batch[0].to(device), batch[1].to(device)
            _set_lr(optimizer, lr_at(cfg, epoch, step, steps_per_epoch), cfg.lr)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, cfg.precision):
                if ddp is None:
                    out = method.backward(inputs, labels, scale=scaler.scale if scaler else (lambda loss: loss))
                else:  # this rank's shard of the global batch
                    out, labels, n_local = ddp.backward(inputs, labels, scaler.scale if scaler else (lambda loss: loss))
            loss_value = float(out.loss.detach())
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"{method.name}: the loss became {loss_value} at epoch {epoch + 1}, step {step + 1}. "
                    f"Lower the learning rate (now {cfg.lr}; e.g. --set train.lr={cfg.lr / 10:g}) or use "
                    "--set train.precision=fp32; the last good checkpoint is kept for inspection.")
            if transform is not None:  # before clipping; works on unscaled gradients
                def rerun():
                    with _autocast(device, cfg.precision):
                        method.backward(inputs, labels, scale=scaler.scale if scaler else (lambda loss: loss))

                transform_stats.add(transform.apply(params, rerun, scaler.get_scale() if scaler else 1.0))
            if cfg.grad_clip:
                if scaler:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            result.steps += 1
            n = labels.shape[0] if ddp is None else n_local
            seen += n
            totals["loss"] = totals.get("loss", 0.0) + loss_value * n
            for k, v in out.scalars.items():
                totals[k] = totals.get(k, 0.0) + float(v) * n
            if out.logits is not None:
                correct += int((out.logits.argmax(-1) == labels).sum())
            if progress:
                bar.set_postfix(loss=f"{loss_value:.3f}")
        check_skipped(image_dataset.skipped, len(ds.train), ds.name, image_root=ds.image_root)  # before the checkpoint
        method.on_epoch_end(epoch, cfg.epochs)
        if ddp is not None:  # sums over ranks: the history of one process with the global batch
            totals, seen, correct = ddp.reduce_epoch(totals, seen, correct)
        record = {k: v / max(seen, 1) for k, v in totals.items()}
        record["train_acc"] = 100.0 * correct / max(seen, 1)
        record["lr"] = optimizer.param_groups[0]["lr"]
        record.update(transform_stats.record())
        record.update({k: float(v) for k, v in method.learned_scalars().items()})
        record["epoch"] = epoch
        result.history.append(record)
        if run is not None:
            run.log_epoch(epoch, record)
            run.save_checkpoint({"method": method.trainable_state_dict(), "optimizer": optimizer.state_dict(),
                                 "scaler": scaler.state_dict() if scaler else None,
                                 "history": result.history, "steps": result.steps}, epoch)
            run.set_progress((epoch + 1) / cfg.epochs, f"epoch {epoch + 1}/{cfg.epochs} loss {record['loss']:.4f}")
    if ddp is not None:
        ddp.close()
    if image_dataset is not None:
        result.skipped_images = len(image_dataset.skipped)
    return result


def _fit_closed_form(method, ds, cfg, seed, device, run, cache, result: FitResult, progress=True) -> FitResult:
    backbone = method.backbone
    transform = train_transform(backbone.image_size, backbone.mean, backbone.std, scale=cfg.crop_scale, flip=cfg.flip)
    enc = encode_images(backbone, ds.train, ds.image_root, transform, views=cfg.feature_views, seed=seed,
                        cache=cache, desc=f"{ds.name}/train features", progress=progress)
    check_skipped(enc.skipped, len(ds.train), ds.name, image_root=ds.image_root)
    result.skipped_images = len(enc.skipped)
    val = None
    if ds.val:
        from ..data.transforms import test_transform

        val = encode_images(backbone, ds.val, ds.image_root,
                            test_transform(backbone.image_size, backbone.mean, backbone.std), cache=cache,
                            desc=f"{ds.name}/val features", progress=progress)
    scalars = method.fit_closed_form(enc.features, enc.labels, val.features[0] if val else None,
                                     val.labels if val else None)
    record = {"epoch": 0, **{k: float(v) for k, v in scalars.items()}}
    result.history.append(record)
    if run is not None:
        run.log_epoch(0, record)
        run.set_progress(1.0, "fitted")
    return result
