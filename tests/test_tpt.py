"""TPT and CoOp+TPT: the untrained TPT prompt scores like zero-shot CLIP with "a photo of a {}.",
test-time logits reach the context (and only it), and tuning on views changes the context."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.engine.test_time import TestTimeConfig, adapt_one
from workbench.methods import ClassTask, build_method, get_method_class

TASK = ClassTask("fixture", ("cat", "dog", "red circle"), ("a photo of a {}.",))


def test_tpt_prompt_scores_like_zero_shot_with_the_words_and_tunes_only_the_context(tiny_backbone):
    tiny_backbone.clear_extensions()
    method = build_method("tpt", tiny_backbone, TASK).eval()
    assert get_method_class("tpt").trainable is False
    method.prepare_eval(TASK, "base")
    feats = torch.randn(4, tiny_backbone.embed_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text = tiny_backbone.encode_text(tiny_backbone.tokenize([f"a photo of a {c}." for c in TASK.classnames]))
    expected = tiny_backbone.logit_scale * F.normalize(feats, dim=-1) @ F.normalize(text, dim=-1).t()
    torch.testing.assert_close(method.test_time_logits(feats).detach(), expected, atol=1e-5, rtol=1e-5)
    params = method.test_time_parameters()
    assert [p.shape for p in params] == [method.context.ctx.shape]
    before = method.context.ctx.detach().clone()
    cfg = TestTimeConfig(views=4, steps=1, lr=0.01, selection=0.5, precision="fp32")
    optimizer = torch.optim.AdamW(params, lr=0.01)
    method.context.ctx.requires_grad_(True)
    adapt_one(method, feats, feats[:1], optimizer, cfg, method.test_time_loss, torch.device("cpu"))
    assert not torch.equal(before, method.context.ctx.detach())
    tiny_backbone.clear_extensions()


def test_coop_tpt_trains_like_coop():
    coop, coop_tpt = get_method_class("coop"), get_method_class("coop_tpt")
    assert coop_tpt.trainable and issubclass(coop_tpt, coop)
    assert coop_tpt.presets["default"] == coop.presets["cross_dataset"]  # CoOp's ImageNet 4-token context


def _one_image(backbone, seed=0):
    size = backbone.image_size
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_cocoop_and_maple_tpt_predict_like_their_method_before_tuning_and_tune_their_prompts(tiny_backbone):
    for name in ("cocoop_tpt", "maple_tpt"):
        tiny_backbone.clear_extensions()
        torch.manual_seed(0)
        method = build_method(name, tiny_backbone, TASK, preset="toy").eval()
        method.prepare_eval(TASK, "base")
        x = _one_image(tiny_backbone)
        inputs = method.image_tower_features(x) if method.evaluates_on_cached_features() else x
        with torch.no_grad():
            torch.testing.assert_close(method.test_time_logits(inputs), method.eval_logits(inputs), atol=1e-5, rtol=1e-5)
        params = method.test_time_parameters()
        assert params and len({id(p) for p in params}) == len(params)
        before = [p.detach().clone() for p in params]
        views = torch.cat([inputs, inputs.flip(-1) if inputs.dim() == 4 else inputs * 1.1])
        for p in params:
            p.requires_grad_(True)
        cfg = TestTimeConfig(views=2, steps=1, lr=0.05, selection=1.0, precision="fp32")
        adapt_one(method, views, views[:1], torch.optim.AdamW(params, lr=0.05), cfg, method.test_time_loss,
                  torch.device("cpu"))
        assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params)), name
    tiny_backbone.clear_extensions()
