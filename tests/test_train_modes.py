"""Train/eval modes in `fit`: what a method trains (CLIP-LoRA's LoRA inside the backbone included) runs
in train mode so its dropout acts; the frozen pretrained CLIP stays in eval; evaluation is all eval."""
from __future__ import annotations

import pytest
import torch

from workbench.backbone.lora import LoRA
from workbench.engine.evaluate import evaluate
from workbench.engine.train import TrainConfig, fit
from workbench.methods import ClassTask, build_method

CFG = TrainConfig(optimizer="adamw", lr=5e-3, weight_decay=1e-2, epochs=1, batch_size=4, warmup_epochs=0,
                  schedule_unit="iter")


@pytest.fixture
def backbone(tiny_backbone):
    tiny_backbone.clear_extensions()
    yield tiny_backbone
    tiny_backbone.clear_extensions()


def _clip_lora(backbone, ds, dropout):
    torch.manual_seed(123)  # same LoRA init whatever the dropout
    return build_method("clip_lora", backbone, ClassTask.from_splits(ds), overrides={"dropout": dropout})


def _train_losses(backbone, ds, dropout):
    method = _clip_lora(backbone, ds, dropout)
    try:
        losses = []
        original = method.training_loss

        def recording_loss(images, labels):
            out = original(images, labels)
            losses.append(float(out.loss.detach()))
            return out

        method.training_loss = recording_loss
        fit(method, ds, CFG, seed=1, progress=False)
        return losses
    finally:
        backbone.clear_extensions()


def test_lora_dropout_changes_training(backbone, color_dataset):
    no_dropout = _train_losses(backbone, color_dataset, 0.0)
    again = _train_losses(backbone, color_dataset, 0.0)
    heavy = _train_losses(backbone, color_dataset, 0.9)
    heavy_again = _train_losses(backbone, color_dataset, 0.9)
    assert len(no_dropout) == 4  # 15 images, batch 4
    assert no_dropout == again and heavy == heavy_again  # deterministic, so a difference is the dropout
    # LoRA's B starts at zero, so the first step cannot see the dropout; later steps must
    assert heavy[0] == pytest.approx(no_dropout[0], abs=1e-6)
    assert any(abs(h - n) > 1e-4 for h, n in zip(heavy[1:], no_dropout[1:]))


def test_modes_in_training_and_evaluation(backbone, color_dataset):
    method = _clip_lora(backbone, color_dataset, 0.5)
    loras = [m for m in method.modules() if isinstance(m, LoRA)]
    assert loras and all(isinstance(m.dropout, torch.nn.Dropout) for m in loras)
    clip = backbone.clip
    # modules of the pretrained CLIP our towers call directly; patch dropout and attention are its own
    watched = {"lora dropout": loras[0].dropout, "visual ln_pre": clip.visual.ln_pre,
               "visual mlp": clip.visual.transformer.resblocks[0].mlp, "text mlp": clip.transformer.resblocks[0].mlp}
    seen: dict[str, list[bool]] = {k: [] for k in watched}
    hooks = [m.register_forward_pre_hook(lambda mod, args, key=k: seen[key].append(mod.training))
             for k, m in watched.items()]
    frozen_modes = []
    original = method.training_loss

    def checking_loss(images, labels):
        frozen_modes.append({n: m.training for n, m in clip.named_modules()})
        frozen_modes[-1]["patch_dropout"] = clip.visual.patch_dropout.training
        frozen_modes[-1]["lora"] = [m.training and m.dropout.training for m in loras]
        return original(images, labels)

    method.training_loss = checking_loss
    try:
        fit(method, color_dataset, CFG, seed=1, progress=False)
        assert frozen_modes
        for modes in frozen_modes:
            assert all(modes.pop("lora"))  # every LoRA module and its dropout in train mode
            assert not any(modes.values())  # the frozen CLIP (patch dropout, attention, MLPs) in eval
        assert seen["lora dropout"] and all(seen["lora dropout"])
        for key in ("visual ln_pre", "visual mlp", "text mlp"):
            assert seen[key] and not any(seen[key])

        for v in seen.values():
            v.clear()
        evaluate(method, color_dataset, progress=False)
        assert seen["lora dropout"] and not any(seen["lora dropout"])  # evaluation runs in eval mode
        assert not any(m.training for m in method.modules())
    finally:
        for h in hooks:
            h.remove()
