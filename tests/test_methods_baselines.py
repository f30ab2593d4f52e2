"""Baselines: trainable-parameter counts on ViT-B/16 against the published/hand counts, and
initialization invariants against zero-shot CLIP."""
from __future__ import annotations

import pytest
import torch

from workbench.backbone import CLIPBackbone, trainable_parameter_report
from workbench.engine.features import class_text_features
from workbench.methods import ClassTask, build_method

TASK = ClassTask("fixture", ("cat", "dog", "golden retriever", "red circle"), ("a photo of a {}.",))


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return CLIPBackbone.from_pretrained("ViT-B-16-quickgelu")


def count(name, backbone, **overrides):
    backbone.clear_extensions()
    method = build_method(name, backbone, TASK, overrides=overrides)
    try:
        return trainable_parameter_report(method)["trainable"]
    finally:
        backbone.clear_extensions()


def test_parameter_counts_vit_b16(vit_b16):
    assert count("coop", vit_b16, n_ctx=16) == 16 * 512  # 8,192 as in CoOp
    assert count("kgcoop", vit_b16) == 4 * 512
    # CLIP-LoRA r=2 on q,k,v of 12 vision (768) + 12 text (512) blocks: r·(d_in + d_out) each
    assert count("clip_lora", vit_b16) == 12 * 3 * 2 * (768 + 768) + 12 * 3 * 2 * (512 + 512)
    assert count("zeroshot", vit_b16) == 0


def test_coop_initialised_from_words_equals_zero_shot_prompt(tiny_backbone):
    tiny_backbone.clear_extensions()
    method = build_method("coop", tiny_backbone, TASK, overrides={"n_ctx": 4, "ctx_init": "a photo of a"})
    try:
        with torch.no_grad():
            learned = method.class_features(method.train_tokens)
        expected = class_text_features(tiny_backbone, TASK.classnames, ["a photo of a {}."])
        assert torch.allclose(torch.nn.functional.normalize(learned, dim=-1), expected, atol=1e-5)
    finally:
        tiny_backbone.clear_extensions()


def test_clip_lora_at_init_equals_zero_shot(tiny_backbone, color_dataset):
    from workbench.engine.evaluate import evaluate

    tiny_backbone.clear_extensions()
    task = ClassTask.from_splits(color_dataset)
    zero = evaluate(build_method("zeroshot", tiny_backbone, task, overrides={"templates": ("a photo of a {}.",)}),
                    color_dataset, progress=False)
    lora = build_method("clip_lora", tiny_backbone, task)
    try:
        assert len(lora.trainable_parameters()) > 0
        ours = evaluate(lora, color_dataset, progress=False)
    finally:
        tiny_backbone.clear_extensions()
    assert torch.allclose(torch.tensor(ours.logits), torch.tensor(zero.logits), atol=1e-4)


def test_kgcoop_knowledge_term_is_zero_at_init(tiny_backbone, color_dataset):
    tiny_backbone.clear_extensions()
    task = ClassTask("colors", tuple(color_dataset.classnames), ("a photo of a {}.",))
    method = build_method("kgcoop", tiny_backbone, task)
    try:
        images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
        out = method.training_loss(images, torch.tensor([0, 1]))
        assert out.scalars["kg"] == pytest.approx(0.0, abs=1e-6)
        assert out.loss.item() == pytest.approx(out.scalars["ce"], abs=1e-5)
    finally:
        tiny_backbone.clear_extensions()
