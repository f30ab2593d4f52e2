"""Short runs on the toy world with a briefly pretrained toy CLIP: training lowers the loss and
beats zero-shot on the base classes (CoOp, CLIP-LoRA)."""
from __future__ import annotations

import pytest

from workbench.data import base_new_split, load_few_shot
from workbench.engine.evaluate import evaluate
from workbench.engine.train import TrainConfig, fit
from workbench.methods import ClassTask, build_method
from workbench.protocols import build_spec, train_config_for


@pytest.fixture(scope="module")
def toy_base(toy_data_root):
    base, _ = base_new_split(load_few_shot("toy_objects", 16, 1))
    return base


def toy_train_config(method: str, **changes) -> TrainConfig:
    spec = build_spec(method, "base_to_novel", "toy_objects", preset="toy",
                      settings={f"train.{k}": v for k, v in changes.items()})
    return train_config_for(spec)


@pytest.mark.parametrize("method", ["coop", "clip_lora"])
def test_short_toy_run_beats_zero_shot_on_base(method, toy_backbone, toy_base):
    zero = evaluate(build_method("zeroshot", toy_backbone, ClassTask.from_splits(toy_base)), toy_base, progress=False)
    adapted = build_method(method, toy_backbone, ClassTask.from_splits(toy_base), preset="toy")
    history = fit(adapted, toy_base, toy_train_config(method), seed=1, progress=False).history
    result = evaluate(adapted, toy_base, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    assert result.top1 > zero.top1 + 2.0, (method, result.top1, zero.top1)


@pytest.mark.parametrize("method", ["coop", "kgcoop", "clip_lora"])
def test_one_epoch_lowers_the_loss(method, toy_backbone, toy_base):
    """After one epoch of updates the loss on a fixed training batch is lower than before."""
    model = build_method(method, toy_backbone, ClassTask.from_splits(toy_base), preset="toy")
    cfg = toy_train_config(method, epochs=1, warmup_epochs=0, schedule="constant", batch_size=16)
    import torch
    from torch.utils.data import DataLoader

    from workbench.data.images import ImageDataset, collate_skip_none
    from workbench.data.transforms import train_transform
    from workbench.engine.train import build_optimizer, seed_everything

    seed_everything(1)
    bb = toy_backbone
    data = ImageDataset(toy_base.train, toy_base.image_root, train_transform(bb.image_size, bb.mean, bb.std))
    batches = list(DataLoader(data, batch_size=16, shuffle=True, collate_fn=collate_skip_none,
                              generator=torch.Generator().manual_seed(1)))
    fixed = batches[0]
    optimizer = build_optimizer(model, cfg)
    model.train()

    def loss_on_fixed():  # in eval mode: no LoRA dropout
        model.eval()
        with torch.no_grad():
            value = float(model.training_loss(fixed[0], fixed[1]).loss)
        model.train()
        return value

    before = loss_on_fixed()
    for images, labels, _ in batches:
        optimizer.zero_grad()
        model.backward(images, labels)
        optimizer.step()
    assert loss_on_fixed() < before
