"""Training engine: schedules against replays of Dassl's and CLIP-LoRA's schedulers, NaN guard, optimizer choice, method registry errors."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from workbench.engine.train import NonFiniteLossError, TrainConfig, fit, lr_at
from workbench.methods import ClassTask, LossOutput, Method, UnknownMethodError, build_method, register_method


def dassl_epoch_lrs(lr, epochs, warmup_epochs, warmup_lr):
    """Replay of Dassl's build_lr_scheduler(cosine, WARMUP_TYPE=constant, WARMUP_RECOUNT=True) on torch's
    own CosineAnnealingLR, stepped once after each epoch as Dassl's trainers do: the lr each epoch ran at.

    Dassl's ConstantWarmupScheduler counts its own epochs; while the count is below W it sets the
    constant lr, at W it sets the successor's last lr (the peak), and only after that epoch does it
    step the successor."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    cosine = CosineAnnealingLR(opt, T_max=float(epochs))
    group = opt.param_groups[0]
    warmup_count = 0
    if warmup_epochs > 0:
        group["lr"] = warmup_lr
    ran_at = []
    for _ in range(epochs):
        ran_at.append(group["lr"])
        opt.step()
        if warmup_epochs == 0 or warmup_count >= warmup_epochs:
            cosine.step()
        else:
            warmup_count += 1
            group["lr"] = warmup_lr if warmup_count < warmup_epochs else cosine.get_last_lr()[0]
    return ran_at


def test_dassl_replay_matches_the_issue_numbers():
    # lr 0.002, E=4, W=1 as Dassl runs it (issue 12)
    assert dassl_epoch_lrs(0.002, 4, 1, 1e-5) == pytest.approx([1e-5, 0.002, 0.0017071, 0.001], rel=1e-4)


@pytest.mark.parametrize("epochs,warmup", [(4, 1), (2, 1), (5, 0), (1, 0), (6, 2), (10, 1), (50, 1)])
def test_epoch_schedule_equals_dassl(epochs, warmup):
    cfg = TrainConfig(lr=0.002, epochs=epochs, warmup_epochs=warmup, warmup_lr=1e-5)
    want = dassl_epoch_lrs(0.002, epochs, warmup, 1e-5)
    assert [lr_at(cfg, e, s, 7) for e in range(epochs) for s in (0, 6)] == pytest.approx(
        [w for w in want for _ in (0, 6)], rel=1e-9, abs=1e-12)


@dataclass
class _ProbeConfig:
    pass


@register_method
class _LRProbe(Method):
    """Trains one scalar, ignores the images: enough to watch the schedule `fit` applies."""
    name = "_test_lr_probe"
    Config = _ProbeConfig

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_loss(self, images, labels):
        return LossOutput((self.w ** 2).sum())


@pytest.mark.parametrize("epochs,warmup", [(4, 1), (2, 1), (3, 0)])
def test_fit_records_dassl_lrs(tiny_backbone, color_dataset, epochs, warmup):
    method = build_method("_test_lr_probe", tiny_backbone, ClassTask.from_splits(color_dataset))
    cfg = TrainConfig(lr=0.002, epochs=epochs, warmup_epochs=warmup, warmup_lr=1e-5, batch_size=64)
    history = fit(method, color_dataset, cfg, progress=False).history
    assert [h["lr"] for h in history] == pytest.approx(dassl_epoch_lrs(0.002, epochs, warmup, 1e-5), rel=1e-9)


def clip_lora_iteration_lrs(lr, total_iters):
    """CLIP-LoRA's released loop: CosineAnnealingLR(total_iters, eta_min=1e-6) stepped after every
    iteration; the lr each iteration ran at."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=lr)
    sched = CosineAnnealingLR(opt, total_iters, eta_min=1e-6)
    ran_at = []
    for _ in range(total_iters):
        ran_at.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return ran_at


def test_iteration_schedule_equals_clip_lora():
    cfg = TrainConfig(lr=2e-4, epochs=4, warmup_epochs=0, schedule_unit="iter", max_iters=100)
    ours = [lr_at(cfg, e, s, 25) for e in range(4) for s in range(25)]
    assert ours == pytest.approx(clip_lora_iteration_lrs(2e-4, 100), rel=1e-7, abs=1e-12)


def test_fit_iteration_schedule_equals_clip_lora(tiny_backbone, color_dataset):
    # 15 training images, batch 4: 4 steps per epoch; max_iters stops in the third epoch after 10 steps
    method = build_method("_test_lr_probe", tiny_backbone, ClassTask.from_splits(color_dataset))
    cfg = TrainConfig(optimizer="adamw", lr=2e-4, epochs=5, batch_size=4, warmup_epochs=0,
                      schedule_unit="iter", max_iters=10)
    result = fit(method, color_dataset, cfg, progress=False)
    want = clip_lora_iteration_lrs(2e-4, 10)
    assert result.steps == 10
    assert [h["lr"] for h in result.history] == pytest.approx([want[3], want[7], want[9]], rel=1e-7)


def test_unknown_training_setting_is_rejected():
    with pytest.raises(KeyError, match="unknown training settings"):
        TrainConfig.from_dict({"learning_rate": 1})


@dataclass
class _NaNConfig:
    pass


@register_method
class _NaNMethod(Method):
    name = "_test_nan"
    Config = _NaNConfig

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_loss(self, images, labels):
        return LossOutput(self.w.sum() * float("nan"))


def test_nan_loss_stops_with_advice(tiny_backbone, color_dataset):
    method = build_method("_test_nan", tiny_backbone, ClassTask.from_splits(color_dataset))
    with pytest.raises(NonFiniteLossError, match="Lower the learning rate"):
        fit(method, color_dataset, TrainConfig(epochs=1, batch_size=4, warmup_epochs=0), progress=False)


def test_unknown_method_lists_available(tiny_backbone, color_dataset):
    with pytest.raises(UnknownMethodError, match="available: .*coop"):
        build_method("no_such_method", tiny_backbone, ClassTask.from_splits(color_dataset))


def test_unknown_method_setting_is_rejected(tiny_backbone, color_dataset):
    with pytest.raises(KeyError, match="no config field"):
        build_method("coop", tiny_backbone, ClassTask.from_splits(color_dataset), overrides={"nctx": 3})
