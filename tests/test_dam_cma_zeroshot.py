"""DAM's CMA as a training-free plug-in on zero-shot CLIP (Table IV): Eqs. 10–12 by hand on the tower's
features, and the consequence of normalized inputs (the same ranking as zero-shot CLIP)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.methods import ClassTask, build_method

TASK = ClassTask("toy_objects", ("red circle", "blue square", "green star", "yellow ring"),
                 ("a photo of a {}.", "a drawing of a {}."))


@pytest.fixture
def images():
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _frozen(backbone, images):
    with torch.no_grad():
        img = backbone.encode_image(images).float()
        raw = torch.stack([backbone.encode_text(backbone.tokenize([t.format(c) for t in TASK.templates])).float()
                           for c in TASK.classnames])  # [C, T, D]
    return img, raw


def test_normalized_plug_in_is_an_affine_map_of_zero_shot_logits(tiny_backbone, images):
    images = F.interpolate(images, size=tiny_backbone.image_size)
    method = build_method("dam_cma_zeroshot", tiny_backbone, TASK)
    method.prepare_eval(TASK, "base")
    logits = method.eval_logits(images)
    img, raw = _frozen(tiny_backbone, images)
    text = F.normalize(F.normalize(raw, dim=-1).mean(1), dim=-1)  # CLIP's template ensemble
    cos = F.normalize(img, dim=-1) @ text.t()
    scale = float(tiny_backbone.logit_scale)
    want = scale * (0.65 * cos + 0.35 * -math.log(len(TASK.classnames)))
    assert torch.allclose(logits, want, atol=1e-4)
    assert torch.equal(logits.argmax(-1), cos.argmax(-1))


def test_raw_plug_in_adds_the_norm_only_bias_of_eq10(tiny_backbone, images):
    images = F.interpolate(images, size=tiny_backbone.image_size)
    method = build_method("dam_cma_zeroshot", tiny_backbone, TASK, overrides={"features": "raw", "lam": 0.5})
    method.prepare_eval(TASK, "base")
    logits = method.eval_logits(images)
    img, raw = _frozen(tiny_backbone, images)
    text_raw = raw.mean(1)
    text = F.normalize(F.normalize(raw, dim=-1).mean(1), dim=-1)
    lam, scale = 0.5, float(tiny_backbone.logit_scale)
    for k in range(img.shape[0]):
        dist = []
        for n in range(len(TASK.classnames)):
            f, t = img[k:k + 1].t(), text_raw[n:n + 1].t()  # column vectors
            eye = torch.eye(f.shape[0])
            w_it = t @ f.t() @ torch.linalg.inv(f @ f.t() + lam * eye)
            w_ti = f @ t.t() @ torch.linalg.inv(t @ t.t() + lam * eye)
            dist.append(-0.5 * (t - w_it @ f).pow(2).sum() - 0.5 * (f - w_ti @ t).pow(2).sum())
        d_cma = torch.log_softmax(torch.stack(dist), dim=0)
        cos = F.normalize(img[k], dim=0) @ text.t()
        assert torch.allclose(logits[k], scale * (0.65 * cos + 0.35 * d_cma), atol=1e-3)


def test_plug_in_settings_are_checked(tiny_backbone):
    with pytest.raises(ValueError, match="features must be one of"):
        build_method("dam_cma_zeroshot", tiny_backbone, TASK, overrides={"features": "unit"})
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        build_method("dam_cma_zeroshot", tiny_backbone, TASK, overrides={"beta": 1.5})
