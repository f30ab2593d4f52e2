"""GLAD: AlignNet against the MLP on [f_img; f_txt] written out by hand, its zero-initialized last layer
reproducing CLIP-LoRA's logits, the KL term by hand, exact parameter counts on ViT-B/16, Table 4's
switches, and a toy run that learns."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.backbone import CLIPBackbone
from workbench.backbone.model import trainable_parameter_report
from workbench.methods import ClassTask, build_method
from workbench.methods.glad import AlignNet, aligned_logits
from workbench.protocols import build_spec

TASK = ClassTask("fixture", ("cat", "dog", "golden retriever", "red circle", "blue square"), ("a photo of a {}.",))
NEW = ClassTask("fixture_new", ("green triangle", "bird", "car"), ("a photo of a {}.",))


@pytest.fixture
def backbone(tiny_backbone):
    tiny_backbone.clear_extensions()
    yield tiny_backbone
    tiny_backbone.clear_extensions()


def images(backbone, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=g)


def randomize_lora(method, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in method.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def hand_alignnet(align: AlignNet, f_img, f_txt):
    """π[b, c] = MLP([f_img[b]; f_txt[c]]) one pair at a time, first layer as one Linear on the concatenation."""
    w1 = torch.cat([align.image_in.weight, align.text_in.weight], dim=1)
    out = torch.empty(f_img.shape[0], f_txt.shape[0], f_img.shape[1])
    for b in range(f_img.shape[0]):
        for c in range(f_txt.shape[0]):
            h = torch.relu(w1 @ torch.cat([f_img[b], f_txt[c]]) + align.image_in.bias)
            for layer in list(align.rest)[1:]:
                h = layer(h)
            out[b, c] = h
    return out


@pytest.mark.parametrize("chunk", [1, 2, 100])
def test_aligned_logits_equal_the_mlp_on_the_concatenation(chunk):
    torch.manual_seed(0)
    dim = 8
    align = AlignNet(dim, (6, 4))
    torch.nn.init.normal_(align.out.weight, std=0.5)  # a trained last layer, not the zero start
    img, txt = torch.randn(3, dim), torch.randn(5, dim)
    scale = torch.tensor(10.0)
    fi, ft = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    adjusted = ft[None] + hand_alignnet(align, fi, ft)
    want = 10.0 * torch.einsum("bd,bcd->bc", fi, F.normalize(adjusted, dim=-1))
    img.requires_grad_(True)
    got = aligned_logits(align, img, txt, scale, chunk=chunk)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.sum().backward()  # chunks are checkpointed in training: gradients must still reach every part
    assert img.grad is not None and align.out.weight.grad.abs().sum() > 0


def test_alignnet_sizes_follow_the_embedding_and_the_paper_at_512():
    align = AlignNet(512, (256, 128))
    # the paper's 1024 → 256 → 128 → 512: 1024·256 + 256, 256·128 + 128, 128·512 + 512
    assert sum(p.numel() for p in align.parameters()) == 1024 * 256 + 256 + 256 * 128 + 128 + 128 * 512 + 512


def test_glad_at_step_zero_equals_clip_lora_on_base_and_new_classes(backbone):
    x = images(backbone)
    torch.manual_seed(3)
    lora = build_method("clip_lora", backbone, TASK, overrides={"r": 8}).eval()
    randomize_lora(lora)  # the same trained LoRA in both, so the comparison is not zero-shot vs zero-shot
    want = {}
    with torch.no_grad():
        want["train"] = lora.training_loss(x, torch.tensor([0, 1, 2])).logits
        for task, domain in ((TASK, "base"), (NEW, "new")):
            lora.prepare_eval(task, domain)
            want[domain] = lora.eval_logits(x)
    backbone.clear_extensions()
    torch.manual_seed(3)
    glad = build_method("glad", backbone, TASK, preset="toy").eval()
    randomize_lora(glad)
    with torch.no_grad():
        torch.testing.assert_close(glad.training_loss(x, torch.tensor([0, 1, 2])).logits, want["train"])
        for task, domain in ((TASK, "base"), (NEW, "new")):
            glad.prepare_eval(task, domain)
            torch.testing.assert_close(glad.eval_logits(x), want[domain], rtol=1e-5, atol=1e-5)
        # once AlignNet has learned, new classes get their own per-image bias too
        torch.nn.init.normal_(glad.align.out.weight, std=0.5)
        assert not torch.allclose(glad.eval_logits(x), want["new"], atol=1e-3)


def test_kl_term_is_kl_from_zero_shot_clip_to_the_tuned_prediction(backbone):
    torch.manual_seed(5)
    glad = build_method("glad", backbone, TASK, preset="toy", overrides={"kl_weight": 0.3, "kl_temperature": 2.0})
    glad.eval()
    randomize_lora(glad)
    torch.nn.init.normal_(glad.align.out.weight, std=0.3)
    x, labels = images(backbone, 4, seed=2), torch.tensor([0, 1, 3, 4])
    clip = backbone.clip  # frozen open_clip, no extensions reach it here
    with torch.no_grad(), backbone.extensions_disabled():
        zs_img = F.normalize(clip.encode_image(x), dim=-1)
        zs_txt = F.normalize(clip.encode_text(backbone.tokenizer([f"a photo of a {c}." for c in TASK.classnames])),
                             dim=-1)
        teacher = clip.logit_scale.exp() * zs_img @ zs_txt.t()
    with torch.no_grad():
        out = glad.training_loss(x, labels)
    logits = out.logits
    p = torch.softmax(teacher / 2.0, dim=-1)
    log_q = torch.log_softmax(logits / 2.0, dim=-1)
    kl = (p * (p.log() - log_q)).sum(-1).mean() * 4.0
    ce = F.cross_entropy(logits, labels)
    assert out.scalars["kl"] == pytest.approx(float(kl), rel=1e-4)
    assert float(out.loss) == pytest.approx(float(ce + 0.3 * kl), rel=1e-4)


@pytest.mark.slow
def test_parameter_counts_vit_b16():
    torch.manual_seed(0)
    vit = CLIPBackbone.from_pretrained("ViT-B-16-quickgelu")
    glad = build_method("glad", vit, TASK)
    report = trainable_parameter_report(glad)
    lora = 12 * 3 * (8 * 768 + 768 * 8) + 12 * 3 * (8 * 512 + 512 * 8)  # r=8 on q, k, v of both towers
    align = 1024 * 256 + 256 + 256 * 128 + 128 + 128 * 512 + 512
    assert report["trainable"] == lora + align == 737_280 + 361_344


@pytest.mark.parametrize("row, alignnet, transform", [
    ("a_lora", False, "none"), ("b_sam", False, "sam"), ("c_gradreg", False, "gradreg"),
    ("d_alignnet", True, "none"), ("e_glad", True, "gradreg")])
def test_table_4_rows_are_presets_for_real_and_toy_runs(row, alignnet, transform):
    for preset, backbone_name in ((f"ablation_{row}", "ViT-B-16"), (f"toy_{row}", "toy")):
        spec = build_spec("glad", "base_to_novel", "toy_objects", backbone=backbone_name, preset=preset)
        assert spec.method_config["alignnet"] is alignnet and spec.train_config["grad_transform"] == transform


def test_default_presets_follow_the_paper_and_settings_switch_the_transform():
    spec = build_spec("glad", "base_to_novel", "toy_objects", backbone="ViT-B-16")
    t, m = spec.train_config, spec.method_config
    assert spec.preset == "base_to_novel"
    assert (m["r"], t["epochs"], t["lr"], t["schedule"]) == (8, 20, 1e-3, "cosine")
    assert (t["grad_transform"], t["grad_rho"], t["grad_alpha"]) == ("gradreg", 0.1, 0.5)
    sam = build_spec("glad", "base_to_novel", "toy_objects", backbone="toy", settings={"train.grad_transform": "sam"})
    assert sam.train_config["grad_transform"] == "sam"
    with pytest.raises(Exception, match="align_text must be one of tuned, zero_shot"):
        build_spec("glad", "base_to_novel", "toy_objects", backbone="toy", settings={"method.align_text": "x"})


def test_zero_shot_teacher_is_reused_only_for_the_same_batch(backbone):
    torch.manual_seed(5)
    glad = build_method("glad", backbone, TASK, preset="toy").eval()
    x = images(backbone, 2)
    first = glad.zero_shot_logits(x)
    assert glad.zero_shot_logits(x) is first  # the transform's second pass feeds the same tensor
    other = x.clone()
    other[0] = 0.0
    fresh = glad.zero_shot_logits(other)
    assert fresh is not first and not torch.allclose(fresh, first)
    x.mul_(0.5)  # changed in place: recomputed
    assert glad.zero_shot_logits(x) is not first
