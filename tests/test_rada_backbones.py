"""RAda on other open_clip families (Tables 8, 9), random init (no download): ResNet image towers and
SigLIP run through the plain-tower fallback (open_clip's own encoders), and RAda equals their zero-shot
logits at init: s·cos for CLIP, s·cos + b for SigLIP's sigmoid logits."""
from __future__ import annotations

import zlib

import open_clip
import pytest
import torch
import torch.nn.functional as F

from workbench.backbone import CLIPBackbone, LoadedCLIP
from workbench.backbone.plain import PlainTower
from workbench.methods import ClassTask, build_method

TASK = ClassTask("fixture", ("cat", "dog", "red circle"), ("a photo of a {}.",))
PROMPTS = [f"a photo of a {c}." for c in TASK.classnames]


def open_clip_zero_shot(clip, images, tokens):
    """Zero-shot logits written from open_clip's own encoders: s·cos(f, w) (+ b when the model has one)."""
    with torch.no_grad():
        f = F.normalize(clip.encode_image(images), dim=-1)
        w = F.normalize(clip.encode_text(tokens), dim=-1)
    logits = clip.logit_scale.exp() * f @ w.t()
    bias = getattr(clip, "logit_bias", None)
    return logits if bias is None else logits + bias


def rada_at_init(backbone, images):
    torch.manual_seed(0)
    method = build_method("rada", backbone, TASK).eval()
    method.prepare_eval(TASK, "base")
    return method.eval_logits(images)


def random_images(size, n=2):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def rn50():
    torch.manual_seed(0)
    return CLIPBackbone.from_pretrained("RN50")


def test_rada_equals_zero_shot_at_init_on_resnet(rn50):
    images = random_images(rn50.image_size, n=1)
    expected = open_clip_zero_shot(rn50.clip, images, rn50.tokenize(PROMPTS))
    torch.testing.assert_close(rada_at_init(rn50, images), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.slow  # a full-size random-init ViT-B/32 on CPU
def test_rada_equals_zero_shot_at_init_on_vit_b32():
    torch.manual_seed(0)
    backbone = CLIPBackbone.from_pretrained("ViT-B-32-quickgelu")
    images = random_images(backbone.image_size)
    expected = open_clip_zero_shot(backbone.clip, images, backbone.tokenize(PROMPTS))
    torch.testing.assert_close(rada_at_init(backbone, images), expected, atol=1e-4, rtol=1e-5)


def test_resnet_tower_falls_back_to_open_clip_and_refuses_extensions(rn50):
    backbone = rn50
    assert isinstance(backbone.visual, PlainTower) and not isinstance(backbone.text, PlainTower)
    assert backbone.embed_dim == 1024 and backbone.image_tower_is_pretrained()
    images = random_images(backbone.image_size, n=1)
    with torch.no_grad():
        assert torch.equal(backbone.encode_image(images), backbone.clip.encode_image(images))
    with pytest.raises(NotImplementedError, match="use a ViT backbone"):
        backbone.visual.add_adapter(0, "pre_attn", torch.nn.Identity())
    with pytest.raises(NotImplementedError, match="ModifiedResNet"):
        build_method("clip_lora", backbone, TASK)


class HashTokenizer:
    """Stands in for SigLIP's Hugging Face tokenizer (transformers is not installed): words → ids < 1000."""

    def __call__(self, texts):
        out = torch.zeros(len(texts), 64, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [1 + zlib.crc32(w.encode()) % 999 for w in text.split()][:64]
            out[i, :len(ids)] = torch.tensor(ids)
        return out


@pytest.mark.slow  # ~30 s: a full-size random-init SigLIP ViT-B/16 on CPU
def test_rada_equals_siglip_sigmoid_logits_at_init():
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16-SigLIP")
    backbone = CLIPBackbone(LoadedCLIP(clip, HashTokenizer(), "ViT-B-16-SigLIP", None, None, (0.5,) * 3, (0.5,) * 3, 224))
    assert isinstance(backbone.visual, PlainTower) and float(clip.logit_bias) == -10.0
    images = random_images(224)
    expected = open_clip_zero_shot(clip, images, backbone.tokenize(PROMPTS))
    torch.testing.assert_close(rada_at_init(backbone, images), expected, atol=1e-4, rtol=1e-5)
