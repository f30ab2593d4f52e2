"""DsRA as a plug-in (Table 5): `dual_shared=True` on KgCoOp and ProGrad leaves their losses and gradient
rules as they are, apart from the added parameters (which then train through both towers)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.methods import ClassTask, build_method

TASK = ClassTask("fixture", ("cat", "dog", "red circle"), ("a photo of a {}.",))
TEMPLATES = {"templates": ("a photo of a {}.",), "template_set": ""}
PLUG = {"dual_shared": True, "dual_shared_rank": 4}


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster


@pytest.fixture
def build(tiny_backbone):
    def make(name, **overrides):
        tiny_backbone.clear_extensions()
        torch.manual_seed(3)
        return build_method(name, tiny_backbone, TASK, preset="toy", overrides={**TEMPLATES, **overrides})

    yield make
    tiny_backbone.clear_extensions()


def batch(backbone, n=3):
    size = backbone.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2])


def context_grad(method):
    return method.context.ctx.grad.detach().clone()


@pytest.mark.parametrize("name", ["kgcoop", "prograd"])
def test_plugin_equals_the_method_at_step_zero_loss_and_context_gradient(build, tiny_backbone, name):
    x, y = batch(tiny_backbone)
    plain = build(name)
    out_plain = plain.backward(x, y)
    grad_plain, ctx_plain = context_grad(plain), plain.context.ctx.detach().clone()
    plugged = build(name, **PLUG)
    assert torch.equal(plugged.context.ctx, ctx_plain)  # the plug-in leaves the method's own init alone
    out_plugged = plugged.backward(x, y)
    assert out_plugged.loss.item() == pytest.approx(out_plain.loss.item(), rel=1e-6)
    assert out_plugged.scalars.keys() == out_plain.scalars.keys()
    torch.testing.assert_close(context_grad(plugged), grad_plain, rtol=1e-5, atol=1e-8)
    extra = {id(p) for p in plugged.dual_shared.parameters()}
    assert {id(p) for p in plugged.trainable_parameters()} - extra == {id(plugged.context.ctx)}
    assert all(r.grad.abs().sum() > 0 for r in plugged.dual_shared.coeffs.values())  # through both towers
    assert not plugged.reads_tower_features_only()  # adapted image tower: trained on images, not cached features
    assert {"R.pre_attn.0.0", "R_norm.pre_mlp.3"} <= set(plugged.learned_scalars())  # recorded for the app


def test_kgcoop_plugin_loss_is_kgcoops_formula_on_adapted_features(build, tiny_backbone):
    x, y = batch(tiny_backbone)
    method = build("kgcoop", **PLUG)
    with torch.no_grad():
        for r in method.dual_shared.coeffs.values():
            r.normal_(0, 0.3)
    out = method.training_loss(x, y)
    with torch.no_grad():
        image = F.normalize(tiny_backbone.encode_image(x), dim=-1)  # adapters active
        text = F.normalize(method.context.encode(method.train_tokens), dim=-1)
        logits = tiny_backbone.logit_scale * image @ text.t()
        expected = F.cross_entropy(logits, y) + 8.0 * (1 - (text * method.clip_text).sum(-1).mean())
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_prograd_plugin_projects_the_added_parameters_per_tensor_against_zero_shot_clip(build, tiny_backbone):
    x, y = batch(tiny_backbone)
    method = build("prograd", **PLUG)
    with torch.no_grad():
        for r in method.dual_shared.coeffs.values():
            r.normal_(0, 0.3)
    params = method.trainable_parameters()
    # the released rule, replayed: g ← g − λ⟨g, g_kl⟩/‖g_kl‖² g_kl where ⟨g, g_kl⟩ < 0, per tensor;
    # the KL's teacher is zero-shot CLIP (the pretrained image tower, adapters off)
    with torch.no_grad(), tiny_backbone.extensions_disabled():
        frozen = F.normalize(tiny_backbone.encode_image(x), dim=-1)
        teacher = tiny_backbone.logit_scale * frozen @ method.zero_shot_text.t()
    y = torch.tensor([2, 2, 2])  # one class for all: CE and KL gradients conflict (checked below)
    image = F.normalize(tiny_backbone.encode_image(x), dim=-1)
    text = F.normalize(method.context.encode(method.train_tokens), dim=-1)
    logits = tiny_backbone.logit_scale * image @ text.t()
    ce = F.cross_entropy(logits, y)
    kl = (F.softmax(teacher, -1) * (F.log_softmax(teacher, -1) - F.log_softmax(logits, -1))).sum(-1).mean()
    g_ce = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
    g_kl = torch.autograd.grad(kl, params, allow_unused=True)
    expected = []
    for g, k in zip(g_ce, g_kl):
        g = torch.zeros_like(k) if g is None else g
        dot = (g * k).sum()
        expected.append(g - dot / (k * k).sum() * k if dot < 0 else g)
    method.zero_grad()
    method.backward(x, y)
    assert any((g * k).sum() < 0 for g, k in zip(g_ce, g_kl) if g is not None)  # the projection is exercised
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-4 * e.abs().max().item() + 1e-9)


def test_plugin_off_keeps_the_methods_run_settings(build):
    assert build("kgcoop").config.dual_shared is False and not hasattr(build("kgcoop"), "dual_shared")
