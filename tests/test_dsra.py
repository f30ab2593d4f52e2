"""DsRA: the composed adapter against Eq. 13 and a block against Eqs. 14–15 written out by hand, one
coefficient tensor shared by both towers (gradients accumulate), identity at init (DsRA = PromptSRC
at step 0), exact parameter counts on ViT-B/16 from the design, and a short toy run that learns."""
from __future__ import annotations

import pytest
import torch

from workbench.backbone import CLIPBackbone, trainable_parameter_report
from workbench.methods import ClassTask, build_method
from workbench.methods._dual_shared import ComposedAdapter, DualSharedAdapters

TASK = ClassTask("fixture", ("cat", "dog", "red circle"), ("a photo of a {}.",))
ONE_TEMPLATE = {"templates": ("a photo of a {}.",), "template_set": ""}


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster


@pytest.fixture
def clean(tiny_backbone):
    tiny_backbone.clear_extensions()
    yield tiny_backbone
    tiny_backbone.clear_extensions()


def images(backbone, n=2, seed=0):
    size = backbone.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def randomize_coefficients(adapters, seed=1, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.coeffs.values():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


# ---- Eq. 13 and Eqs. 14–17 ------------------------------------------------------------------------
def test_composed_adapter_is_eq13_written_out(clean):
    adapters = DualSharedAdapters(clean, rank=3)
    randomize_coefficients(adapters)
    adapter = ComposedAdapter(adapters, "text", "pre_mlp", layer=2)
    m = adapters.matrix("text", "pre_mlp").detach()
    r = adapters.coefficients("text", "pre_mlp")[2].detach()
    h = torch.randn(2, 3, clean.text.width, generator=torch.Generator().manual_seed(3))
    expected = torch.empty_like(h)
    for b in range(2):  # t_out[o] = t_in[o] + Σ_j Σ_k t_in[j] · M[j, k] · r[k] · M[o, k], entry by entry
        for t in range(3):
            for out in range(h.shape[-1]):
                expected[b, t, out] = h[b, t, out] + (h[b, t, :, None] * m * r * m[out]).sum()
    torch.testing.assert_close(adapter(h), expected, rtol=1e-5, atol=1e-5)


def test_block_applies_adapters_to_layernorm_outputs_with_the_input_as_bypass(clean):
    from workbench.backbone.towers import block_forward

    adapters = DualSharedAdapters(clean, rank=4)
    randomize_coefficients(adapters)
    layer = 1
    block = clean.visual.transformer.resblocks[layer]
    x = torch.randn(2, 7, clean.visual.width, generator=torch.Generator().manual_seed(4))

    def a(site, h):  # Eq. 13 as matrices
        m = adapters.matrix("visual", site)
        return h + h @ m @ torch.diag(adapters.coefficients("visual", site)[layer]) @ m.t()

    with torch.no_grad():
        h = a("pre_attn", block.ln_1(x))
        x_hat = block.attn(h, h, h, need_weights=False)[0] + x  # Eq. 16: bypass = block input
        expected = block.mlp(a("pre_mlp", block.ln_2(x_hat))) + x_hat  # Eq. 17
        got = block_forward(block, x, None, clean.visual.extensions[layer])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ---- coefficient sharing ------------------------------------------------------------------------
def test_one_coefficient_tensor_reached_from_both_towers_accumulates_both_gradients(clean):
    adapters = DualSharedAdapters(clean, rank=4)
    randomize_coefficients(adapters, scale=0.1)
    for site in ("pre_attn", "pre_mlp"):
        assert adapters.coefficients("visual", site) is adapters.coefficients("text", site)
    assert adapters.matrix("visual", "pre_attn") is not adapters.matrix("visual", "pre_mlp")
    tokens = clean.tokenize(["a photo of a cat."])
    x = images(clean)
    r = adapters.coefficients("text", "pre_attn")

    def grad(image: bool, text: bool):
        r.grad = None
        loss = (clean.encode_image(x).sum() if image else 0) + (clean.encode_text(tokens).sum() if text else 0)
        loss.backward()
        return r.grad.clone()

    from_image, from_text, both = grad(True, False), grad(False, True), grad(True, True)
    assert from_image.abs().sum() > 0 and from_text.abs().sum() > 0
    torch.testing.assert_close(both, from_image + from_text, rtol=1e-5, atol=1e-7)
    assert r.shape == (clean.visual.num_layers, 4)


def test_modality_specific_coefficients_are_separate_per_tower(clean):
    adapters = DualSharedAdapters(clean, rank=4, coefficients="modality_specific")
    assert adapters.coefficients("visual", "pre_attn") is not adapters.coefficients("text", "pre_attn")
    assert len(adapters.coeffs) == 4  # 2 towers × 2 sites


def test_site_shared_coefficients_read_one_tensor_at_both_sites(clean):
    adapters = DualSharedAdapters(clean, rank=4, site_coefficients="shared")
    assert adapters.coefficients("visual", "pre_attn") is adapters.coefficients("text", "pre_mlp")
    assert len(adapters.coeffs) == 1


def test_bad_settings_are_refused_with_the_valid_choices(clean):
    with pytest.raises(ValueError, match="pre_attn"):
        build_method("dsra", clean, TASK, preset="toy", overrides={"dual_shared_sites": ("pre_ffn",)})
    with pytest.raises(ValueError, match="modality_specific"):
        build_method("dsra", clean, TASK, preset="toy", overrides={"dual_shared_coefficients": "both"})
    with pytest.raises(ValueError, match=">= 1"):
        build_method("dsra", clean, TASK, preset="toy", overrides={"dual_shared_rank": 0})


# ---- identity at init ---------------------------------------------------------------------------
def test_dsra_equals_promptsrc_at_step_zero(clean):
    x, labels = images(clean, 3), torch.tensor([0, 1, 2])
    results = {}
    for name in ("promptsrc", "dsra"):
        clean.clear_extensions()
        torch.manual_seed(5)
        method = build_method(name, clean, TASK, preset="toy",
                              overrides={**ONE_TEMPLATE, "text_weight": 25.0, "image_weight": 10.0})
        _, _, logits = method.prompted_logits(x, method.train_tokens)
        torch.manual_seed(0)
        results[name] = (logits.detach(), method.training_loss(x, labels).loss.item(), method)
    dsra = results["dsra"][2]
    assert all(torch.count_nonzero(r) == 0 for r in dsra.dual_shared.coeffs.values())
    assert all(m.abs().sum() > 0 for m in dsra.dual_shared.matrices.values())  # M ≠ 0: r gets gradients
    assert torch.equal(results["dsra"][0], results["promptsrc"][0])
    assert results["dsra"][1] == results["promptsrc"][1]


def test_gradient_of_m_is_zero_at_step_zero_and_r_is_not(clean):
    method = build_method("dsra", clean, TASK, preset="toy", overrides=ONE_TEMPLATE)
    method.training_loss(images(clean, 3), torch.tensor([0, 1, 2])).loss.backward()
    assert all(m.grad is None or torch.count_nonzero(m.grad) == 0 for m in method.dual_shared.matrices.values())
    assert all(r.grad.abs().sum() > 0 for r in method.dual_shared.coeffs.values())


# ---- parameter counts on ViT-B/16 (paper: 0.17M; Table 4: 0.11M with MAB or FNB only) ---------------
@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return CLIPBackbone.from_pretrained("ViT-B-16-quickgelu")


def test_parameter_counts_vit_b16_match_the_design(vit_b16):
    def count(**overrides):
        vit_b16.clear_extensions()
        try:
            method = build_method("dsra", vit_b16, ClassTask("count", ("a", "b")), overrides={**ONE_TEMPLATE, **overrides})
            return trainable_parameter_report(method)["trainable"], method
        finally:
            vit_b16.clear_extensions()

    prompts = 4 * 512 * 9 + 4 * 768 * 9  # PromptSRC: 4 text + 4 vision tokens at depth 9 = 46,080
    per_site = (512 + 768) * 50 + 12 * 50  # M_text, M_visual (d × 50) + r^1..r^12 shared by both towers
    full, method = count()
    assert full == prompts + 2 * per_site == 175_280  # paper: 0.17M
    assert method.adapter_parameter_count() == 2 * per_site
    assert count(dual_shared_sites=("pre_attn",))[0] == prompts + per_site == 110_680  # Table 4: 0.11M
    assert count(dual_shared_sites=("pre_mlp",))[0] == 110_680
    assert count(dual_shared_coefficients="modality_specific")[0] == full + 2 * 12 * 50
    assert count(dual_shared_rank=5)[0] == prompts + 2 * ((512 + 768) * 5 + 12 * 5)
    assert count(dual_shared=False)[0] == prompts  # DsRA without adapters is PromptSRC


# ---- the app's records ----------------------------------------------------------------------------
def test_learned_scalars_are_the_coefficients_per_layer_and_entry(clean):
    method = build_method("dsra", clean, TASK, preset="toy", overrides=ONE_TEMPLATE)
    randomize_coefficients(method.dual_shared)
    scalars = method.learned_scalars()
    r = method.dual_shared.coefficients("visual", "pre_mlp")
    assert scalars["R.pre_mlp.2.5"] == pytest.approx(r[2, 5].item())
    assert scalars["R_norm.pre_attn.1"] == pytest.approx(method.dual_shared.coeffs["pre_attn"][1].norm().item(), rel=1e-6)
    assert len([k for k in scalars if k.startswith("R.")]) == 2 * 4 * 8  # sites × layers × d_r


# ---- a short toy run --------------------------------------------------------------------------------
def test_toy_dsra_learns_base_classes(toy_backbone, toy_data_root):
    from workbench.data import base_new_split, load_few_shot
    from workbench.engine.evaluate import evaluate
    from workbench.engine.train import TrainConfig, fit
    from workbench.methods.dsra import DsRA

    base, new = base_new_split(load_few_shot("toy_objects", 4, 1))
    zero = build_method("zeroshot", toy_backbone, ClassTask.from_splits(base))
    zs_base = evaluate(zero, base, domain="base", progress=False).top1
    torch.manual_seed(1)
    method = build_method("dsra", toy_backbone, ClassTask.from_splits(base), preset="toy")
    short = {**DsRA.presets["toy"].train, "epochs": 3}
    history = fit(method, base, TrainConfig.from_dict(short), seed=1, progress=False).history
    dsra_base = evaluate(method, base, domain="base", progress=False).top1
    print(f"toy 4-shot base: zero-shot {zs_base:.1f}, DsRA {dsra_base:.1f}")
    assert dsra_base > zs_base + 3
    assert history[-1]["ce"] < history[0]["ce"]
    r_moved = max(abs(v) for k, v in history[-1].items() if k.startswith("R."))
    assert r_moved > 0  # the shared coefficients were trained (they start at 0)


def test_checkpoint_state_restores_adapters_and_their_gpa_running_sum(clean):
    x = images(clean, 2)
    method = build_method("dsra", clean, TASK, preset="toy", overrides=ONE_TEMPLATE)
    randomize_coefficients(method.dual_shared)
    method.on_epoch_end(0, 5)  # GPA's running sum now holds the adapters too
    state = method.trainable_state_dict()
    assert {"dual_shared.coeffs.pre_attn", "dual_shared.matrices.text_pre_mlp"} <= set(state)
    assert any(k.startswith("state_gpa.") and "dual_shared" in k for k in state)
    with torch.no_grad():
        expected = method.prompted_logits(x, method.train_tokens)[2]
    clean.clear_extensions()
    torch.manual_seed(99)  # another init, overwritten by the checkpoint
    restored = build_method("dsra", clean, TASK, preset="toy", overrides=ONE_TEMPLATE)
    restored.load_trainable_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(restored.prompted_logits(x, restored.train_tokens)[2], expected)


@pytest.mark.slow
def test_methods_show_prints_the_vit_b16_count():
    from workbench.methods.catalog import describe_method

    text = describe_method("dsra", "ViT-B-16-quickgelu", classes=2)
    assert "trainable parameters on ViT-B-16-quickgelu" in text and ": 175,280 of " in text
