"""Prompt-learning baselines (CoCoOp, ProGrad, IVLP, MaPLe, PromptSRC): parameter counts on
ViT-B/16 by hand formula, prompted forwards against hand-written passes over open_clip's modules,
ProGrad's projection and PromptSRC's aggregation by hand, and one epoch of training on a fixture."""
from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from workbench.backbone import CLIPBackbone, trainable_parameter_report
from workbench.engine.features import class_text_features
from workbench.data.templates import load_template_set
from workbench.engine.gradients import project_conflicting, project_conflicting_all
from workbench.methods import ClassTask, build_method
from workbench.methods.common import clip_logits
from workbench.methods.promptsrc import gaussian_epoch_weights

TASK = ClassTask("fixture", ("cat", "dog", "golden retriever", "red circle"), ("a photo of a {}.",))
ONE_CLASS = ClassTask("fixture", ("cat",), ("a photo of a {}.",))  # counts do not depend on the classes


@contextmanager
def attached(backbone, name, task=TASK, preset=None, **overrides):
    backbone.clear_extensions()
    try:
        yield build_method(name, backbone, task, preset=preset, overrides=overrides)
    finally:
        backbone.clear_extensions()


# ---- parameter counts ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return CLIPBackbone.from_pretrained("ViT-B-16-quickgelu")


def count(backbone, name, preset=None, **overrides):
    with attached(backbone, name, ONE_CLASS, preset, **overrides) as method:
        return trainable_parameter_report(method)["trainable"]


def test_parameter_counts_vit_b16(vit_b16):
    text, vision, embed = 512, 768, 512  # ViT-B/16 widths and joint embedding
    hidden = embed // 16
    cocoop = count(vit_b16, "cocoop")
    assert cocoop == 4 * text + (embed * hidden + hidden) + (hidden * text + text) == 35_360  # as published
    assert count(vit_b16, "prograd") == count(vit_b16, "coop", n_ctx=16) == 16 * text
    assert count(vit_b16, "ivlp") == 12 * 2 * text + 12 * 2 * vision  # 2+2 tokens, depth 12
    assert count(vit_b16, "ivlp", "base_to_novel_4x4") == 9 * 4 * text + 9 * 4 * vision
    # MaPLe: 2 text tokens per layer × 9 layers, one Linear(512→768) per layer
    maple = count(vit_b16, "maple")
    assert maple == 9 * 2 * text + 9 * (text * vision + vision)
    assert abs(maple - 3.55e6) < 0.01e6  # published: 3.55M
    promptsrc = count(vit_b16, "promptsrc")
    assert promptsrc == 9 * 4 * text + 9 * 4 * vision
    assert round(promptsrc / 1e6, 3) == 0.046  # published: 0.046M


# ---- prompted forwards against independent computations ----------------------------------------

def test_depth_one_text_prompts_from_words_equal_zero_shot_text(tiny_backbone):
    expected = class_text_features(tiny_backbone, TASK.classnames, ["a photo of a {}."])
    # IVLP: 4 learnable tokens = the words; MaPLe: 2 learnable ("a photo") + fixed words "of a"
    for name, overrides in (("ivlp", {"n_ctx_text": 4, "depth_text": 1, "depth_vision": 1}),
                            ("maple", {"n_ctx": 2, "depth": 1})):
        with attached(tiny_backbone, name, **overrides) as method:
            assert method.text_prompts.prompts(["cat"]) == ["a photo of a cat."]
            with torch.no_grad():
                learned = tiny_backbone.encode_text(method.train_tokens, normalize=True)
            assert torch.allclose(learned, expected, atol=1e-5), name


def hand_text_features(clip, tokens, layer_prompts):
    """open_clip's text forward, with positions 1..K set to layer_prompts[i] at block i's input."""
    x = clip.token_embedding(tokens)
    k = layer_prompts[0].shape[0]
    for i, block in enumerate(clip.transformer.resblocks):
        if i < len(layer_prompts):
            x = torch.cat([x[:, :1], layer_prompts[i].expand(x.shape[0], -1, -1), x[:, 1 + k:]], dim=1)
        if i == 0:
            x = x + clip.positional_embedding
        x = block(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ clip.text_projection


def hand_image_features(visual, images, layer_prompts):
    """open_clip's ViT forward, with K tokens appended after the patches (before ln_pre) and the
    last K tokens replaced by layer_prompts[i] at block i's input."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    k = layer_prompts[0].shape[0]
    x = visual.ln_pre(torch.cat([x, layer_prompts[0].expand(x.shape[0], -1, -1)], dim=1))
    for i, block in enumerate(visual.transformer.resblocks):
        if 0 < i < len(layer_prompts):
            x = torch.cat([x[:, :-k], layer_prompts[i].expand(x.shape[0], -1, -1)], dim=1)
        x = block(x)
    return visual.ln_post(x[:, 0]) @ visual.proj


@torch.no_grad()
def test_deep_prompts_match_hand_forward_over_open_clip_modules(tiny_backbone):
    clip = tiny_backbone.clip
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    for name, overrides in (("ivlp", {"n_ctx_text": 2, "n_ctx_vision": 3, "depth_text": 3, "depth_vision": 2}),
                            ("maple", {"n_ctx": 2, "depth": 3})):
        with attached(tiny_backbone, name, **overrides) as method:
            for p in method.trainable_parameters():
                p.add_(torch.randn_like(p) * 0.1)
            text = method.text_prompts
            text_layers = [text.ctx, *text.deep]
            if name == "maple":  # vision prompts = per-layer Linear of the text prompts
                couplings = method.vision_prompts.couplings
                vision_layers = [F.linear(t, c.weight, c.bias) for t, c in zip(text_layers, couplings)]
            else:
                vision_layers = list(method.vision_prompts.tokens)
            assert torch.allclose(tiny_backbone.encode_text(method.train_tokens),
                                  hand_text_features(clip, method.train_tokens, text_layers), atol=1e-5), name
            assert torch.allclose(tiny_backbone.encode_image(images),
                                  hand_image_features(clip.visual, images, vision_layers), atol=1e-5), name


def test_maple_deep_couplings_start_as_copies_of_one_linear(tiny_backbone):
    with attached(tiny_backbone, "maple", depth=4) as method:
        first, *deeper = method.vision_prompts.couplings
        assert all(torch.equal(c.weight, deeper[0].weight) and torch.equal(c.bias, deeper[0].bias) for c in deeper)
        assert not torch.equal(first.weight, deeper[0].weight)
        assert deeper[0].weight is not deeper[1].weight  # copies, not shared


@torch.no_grad()
def test_cocoop_conditions_each_image_like_coop_with_shifted_context(tiny_backbone):
    images = torch.randn(3, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    with attached(tiny_backbone, "cocoop") as cocoop:
        ctx = cocoop.context.ctx.clone()
        meta_net = cocoop.meta_net
        cocoop.prepare_eval(TASK, "base")
        meta_net.linear2.weight.mul_(50)  # make the per-image shifts matter
        conditioned = cocoop.eval_logits(images)
        image_features = F.normalize(tiny_backbone.encode_image(images), dim=-1)
        shifts = meta_net(image_features)
        meta_net.linear2.weight.zero_()
        meta_net.linear2.bias.zero_()
        unconditioned = cocoop.eval_logits(images)
    with attached(tiny_backbone, "coop", n_ctx=4, ctx_init="a photo of a") as coop:
        assert torch.equal(coop.context.ctx, ctx)
        coop.prepare_eval(TASK, "base")
        assert torch.allclose(unconditioned, coop.eval_logits(images), atol=1e-4)
        for b in range(images.shape[0]):  # row b: CoOp whose context is ctx + π(image b)
            coop.context.ctx.copy_(ctx + shifts[b])
            coop.prepare_eval(TASK, "base")
            assert torch.allclose(conditioned[b], coop.eval_logits(images[b:b + 1])[0], atol=1e-4)
    assert not torch.allclose(conditioned, unconditioned, atol=1e-3)


# ---- ProGrad ------------------------------------------------------------------------------------

def test_projection_by_hand():
    g, r = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # ⟨g,r⟩ = -1, ‖r‖² = 2: g + ½r = [0.5, 0.5], orthogonal to r
    assert torch.allclose(project_conflicting(g, r), torch.tensor([0.5, 0.5]))
    assert torch.allclose(project_conflicting(g, r, strength=0.5), torch.tensor([0.75, 0.25]))
    agreeing = torch.tensor([1.0, 2.0])
    assert torch.equal(project_conflicting(agreeing, torch.tensor([1.0, 0.0])), agreeing)
    assert torch.equal(project_conflicting(g, torch.zeros(2)), g)
    # per tensor the first conflicts; over the concatenation ⟨g,r⟩ = -1 + 3 > 0 leaves all as is
    grads, refs = [torch.tensor([1.0, 0.0]), torch.tensor([1.0])], [torch.tensor([-1.0, 0.0]), torch.tensor([3.0])]
    per_tensor = project_conflicting_all(grads, refs)
    assert torch.allclose(per_tensor[0], torch.zeros(2)) and torch.equal(per_tensor[1], grads[1])
    assert all(torch.equal(a, b) for a, b in zip(project_conflicting_all(grads, refs, per_parameter=False), grads))


def test_prograd_backward_writes_projected_cross_entropy_gradient(tiny_backbone):
    images = torch.randn(4, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    with attached(tiny_backbone, "prograd", n_ctx=8, lambda_=0.7) as method:
        assert method.context.prompts(["cat"]) == ["X X X X a photo of a cat."]
        ctx = method.context.ctx
        with torch.no_grad():
            teacher = clip_logits(tiny_backbone, tiny_backbone.encode_image(images), method.zero_shot_text)
        # labels the zero-shot teacher finds least likely make CE and KL conflict; its favourites agree
        for labels, conflicting in ((teacher.argmin(-1), True), (teacher.argmax(-1), False)):
            ce, kl, _ = method.losses(images, labels)
            (g_ce,) = torch.autograd.grad(ce, [ctx], retain_graph=True)
            (g_kl,) = torch.autograd.grad(kl, [ctx])
            dot = (g_ce * g_kl).sum()
            assert bool(dot < 0) == conflicting
            expected = g_ce - 0.7 * dot / (g_kl * g_kl).sum() * g_kl if conflicting else g_ce
            ctx.grad = None
            method.backward(images, labels)
            assert torch.allclose(ctx.grad, expected, atol=1e-6, rtol=1e-4)


# ---- PromptSRC ----------------------------------------------------------------------------------

def test_gpa_weights_are_the_normalised_gaussian_pdf():
    pdf = [math.exp(-0.5 * (e - 15) ** 2) / math.sqrt(2 * math.pi) for e in range(1, 21)]
    assert gaussian_epoch_weights(20, 15, 1) == pytest.approx([p / sum(pdf) for p in pdf], abs=1e-12)
    pdf = [math.exp(-0.5 * ((e - 30) / 30) ** 2) for e in range(1, 51)]
    assert gaussian_epoch_weights(50, 30, 30) == pytest.approx([p / sum(pdf) for p in pdf], abs=1e-12)


@torch.no_grad()
def test_gpa_aggregates_prompts_over_epochs_and_survives_resume(tiny_backbone):
    epochs, mean, std = 4, 2.5, 1.0
    values = [0.5, -1.0, 2.0, 3.0]  # every prompt entry is set to this value during epoch e
    pdf = [math.exp(-0.5 * ((e - mean) / std) ** 2) for e in range(1, epochs + 1)]
    expected = sum(v * p for v, p in zip(values, pdf)) / sum(pdf)
    settings = {"depth_text": 2, "depth_vision": 2, "gpa_mean": mean, "gpa_std": std}

    def run_epochs(method, first, last):
        for epoch in range(first, last):
            for p in method.trainable_parameters():
                p.fill_(values[epoch])
            method.on_epoch_end(epoch, epochs)

    with attached(tiny_backbone, "promptsrc", **settings) as method:
        run_epochs(method, 0, 2)
        checkpoint = method.trainable_state_dict()
        assert any(k.startswith("state_gpa.") for k in checkpoint)
    with attached(tiny_backbone, "promptsrc", **settings) as resumed:
        resumed.load_trainable_state_dict(checkpoint)
        run_epochs(resumed, 2, epochs)
        for p in resumed.trainable_parameters():
            assert torch.allclose(p, torch.full_like(p, expected), atol=1e-6)


def test_promptsrc_loss_by_hand_against_frozen_clip(tiny_backbone, color_dataset):
    task = ClassTask.from_splits(color_dataset)
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    labels = torch.tensor([0, 3])
    with attached(tiny_backbone, "promptsrc", task, depth_text=1, depth_vision=2) as method:
        with torch.no_grad():
            out = method.training_loss(images, labels)
            prompted_image = F.normalize(tiny_backbone.encode_image(images), dim=-1)
    # depth-1 text prompts holding the words "a photo of a" give that single template's embedding
    prompted_text = class_text_features(tiny_backbone, task.classnames, ["a photo of a {}."])
    # frozen text, as released: the unnormalized features of PromptSRC's 60 templates averaged, then normalized
    templates = load_template_set("promptsrc_imagenet60").all
    with torch.no_grad():
        raw = tiny_backbone.encode_text(tiny_backbone.tokenize([t.format(c) for c in task.classnames for t in templates]))
    frozen_text = F.normalize(raw.view(len(task.classnames), len(templates), -1).mean(1), dim=-1)
    with torch.no_grad():
        frozen_image = F.normalize(tiny_backbone.encode_image(images), dim=-1)
    scale = tiny_backbone.logit_scale.item()
    log_p = F.log_softmax(scale * prompted_image @ prompted_text.t(), dim=-1)
    log_q = F.log_softmax(scale * frozen_image @ frozen_text.t(), dim=-1)
    ce = F.nll_loss(log_p, labels).item()
    text_l1 = (prompted_text - frozen_text).abs().mean().item()
    image_l1 = (prompted_image - frozen_image).abs().mean().item()
    kl = (log_q.exp() * (log_q - log_p)).sum().item() / log_p.numel()
    assert out.scalars["ce"] == pytest.approx(ce, rel=1e-4)
    assert out.scalars["text_l1"] == pytest.approx(text_l1, rel=1e-4) and text_l1 > 0
    assert out.scalars["image_l1"] == pytest.approx(image_l1, rel=1e-4) and image_l1 > 0
    assert out.scalars["kl"] == pytest.approx(kl, rel=1e-3, abs=1e-7) and kl > 0
    assert out.loss.item() == pytest.approx(ce + 25 * text_l1 + 10 * image_l1 + kl, rel=1e-4)


# ---- one epoch of training ----------------------------------------------------------------------

# no augmentation, 3 steps of 5 images: the measured batch is exactly what was trained on. Learning
# rates checked over 5 seeds; the random meta-net shift of CoCoOp (default Linear init) dwarfs the word
# context at init, so its loss moves slowly and it takes a larger step.
TRAIN_SETTINGS = {  # name: (method overrides, learning rate)
    "cocoop": ({}, 0.05),
    "prograd": ({"n_ctx": 4}, 0.005),
    "ivlp": ({"depth_text": 3, "depth_vision": 3}, 0.005),
    "maple": ({"depth": 3}, 0.005),
    "promptsrc": ({"depth_text": 3, "depth_vision": 3}, 0.005),
}


@pytest.mark.parametrize("name", sorted(TRAIN_SETTINGS))
def test_one_epoch_lowers_the_training_loss(name, tiny_backbone, color_dataset):
    from workbench.data.images import ImageDataset
    from workbench.data.transforms import test_transform
    from workbench.engine.train import TrainConfig, fit

    overrides, lr = TRAIN_SETTINGS[name]
    data = ImageDataset(color_dataset.train, color_dataset.image_root,
                        test_transform(tiny_backbone.image_size, tiny_backbone.mean, tiny_backbone.std))
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([data[i][1] for i in range(len(data))])
    torch.manual_seed(0)
    with attached(tiny_backbone, name, ClassTask.from_splits(color_dataset), **overrides) as method:
        with torch.no_grad():
            before = method.training_loss(images, labels).loss.item()
        fit(method, color_dataset, TrainConfig(epochs=1, lr=lr, batch_size=5, warmup_epochs=0, crop_scale=(1.0, 1.0),
                                               flip=False, precision="fp32"), progress=False)
        with torch.no_grad():
            after = method.training_loss(images, labels).loss.item()
    assert after < before
