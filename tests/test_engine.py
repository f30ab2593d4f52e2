"""Training engine: schedules by hand, NaN guard, optimizer choice, method registry errors."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from workbench.engine.train import NonFiniteLossError, TrainConfig, fit, lr_at
from workbench.methods import ClassTask, LossOutput, Method, UnknownMethodError, build_method, register_method


def test_constant_warmup_then_cosine_per_epoch_like_dassl():
    cfg = TrainConfig(lr=0.002, epochs=10, warmup_epochs=1, warmup_lr=1e-5)
    assert lr_at(cfg, 0) == 1e-5
    # Dassl steps the successor cosine after the warm-up epoch: epoch e uses cos(pi e / E)
    for e in (1, 5, 9):
        assert lr_at(cfg, e) == pytest.approx(0.5 * 0.002 * (1 + math.cos(math.pi * e / 10)))


def test_cosine_per_iteration():
    cfg = TrainConfig(lr=1e-3, epochs=4, warmup_epochs=0, schedule_unit="iter", max_iters=100)
    assert lr_at(cfg, 0, 0, 25) == pytest.approx(1e-3)
    assert lr_at(cfg, 2, 0, 25) == pytest.approx(0.5e-3)  # halfway through 100 steps
    assert lr_at(cfg, 3, 24, 25) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 99 / 100)))


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
