"""CoCoOp's toy preset: at init it is zero-shot CLIP with its ctx_init prompt (no meta-net shift), and
its meta-net trains at `meta_lr_scale` of the context's learning rate through the shared engine."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.engine.features import class_text_features
from workbench.methods import ClassTask, build_method
from workbench.methods.common import clip_logits

TASK = ClassTask("fixture", ("cat", "dog", "golden retriever", "red circle"), ("a photo of a {}.",))


def build(backbone, task=TASK, preset=None, **overrides):
    backbone.clear_extensions()
    torch.manual_seed(0)
    return build_method("cocoop", backbone, task, preset=preset, overrides=overrides)


@torch.no_grad()
def test_toy_preset_starts_as_zero_shot_clip_with_the_init_words(tiny_backbone):
    images = torch.randn(5, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    image_features = tiny_backbone.encode_image(images)
    plain = clip_logits(tiny_backbone, image_features,  # frozen CLIP, prompts written out in words
                        class_text_features(tiny_backbone, TASK.classnames, ["a photo of a {}."]))
    method = build(tiny_backbone, preset="toy")
    try:
        method.prepare_eval(TASK, "base")
        assert torch.allclose(method.eval_logits(images), plain, atol=1e-4)
        shift = method.meta_net(F.normalize(image_features, dim=-1))
        assert torch.count_nonzero(shift) == 0
    finally:
        tiny_backbone.clear_extensions()


@torch.no_grad()
def test_released_init_shift_is_larger_than_the_context(tiny_backbone):
    """The paper presets keep PyTorch's default Linear init, as released: the shift then dwarfs the
    context vectors (what the toy preset's zero init avoids)."""
    method = build(tiny_backbone, preset="base_to_novel")
    try:
        features = F.normalize(torch.randn(8, tiny_backbone.embed_dim), dim=-1)
        shift = method.meta_net(features).norm(dim=-1)
        assert shift.min() > 3 * method.context.ctx.norm(dim=-1).max()
    finally:
        tiny_backbone.clear_extensions()


def test_unknown_meta_init_is_refused(tiny_backbone):
    with pytest.raises(ValueError, match="meta_init"):
        build(tiny_backbone, meta_init="xavier")
    tiny_backbone.clear_extensions()


def _one_step(backbone, dataset, scale):
    from workbench.engine.train import TrainConfig, fit

    method = build(backbone, ClassTask.from_splits(dataset), meta_lr_scale=scale)
    try:
        with torch.no_grad():  # a non-zero linear2 so that every meta-net parameter gets a gradient
            method.meta_net.linear2.weight.normal_(0, 0.1)
        before = {k: v.detach().clone() for k, v in method.named_parameters() if v.requires_grad}
        fit(method, dataset, TrainConfig(epochs=1, lr=0.05, batch_size=4, warmup_epochs=0, momentum=0.0,
                                         weight_decay=0.0, max_iters=1, crop_scale=(1.0, 1.0), flip=False,
                                         precision="fp32", schedule="constant"), progress=False)
        return {k: (v.detach() - before[k]) for k, v in method.named_parameters() if k in before}
    finally:
        backbone.clear_extensions()


def test_meta_net_moves_at_its_lr_scale_of_the_context(tiny_backbone, color_dataset):
    full, tenth = _one_step(tiny_backbone, color_dataset, 1.0), _one_step(tiny_backbone, color_dataset, 0.1)
    assert full.keys() == tenth.keys() and any(k.startswith("meta_net.") for k in full)
    for name in full:  # first SGD step from the same init on the same batch: step = lr × gradient
        assert full[name].abs().max() > 0, name
        expected = full[name] * (0.1 if name.startswith("meta_net.") else 1.0)
        assert torch.allclose(tenth[name], expected, rtol=1e-4, atol=1e-7), name
