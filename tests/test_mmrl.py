"""MMRL: parameter counts against the paper, the class path against open_clip, the causal mask on
inserted text tokens, per-domain heads, the loss formula, and a short toy base-to-novel run."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.backbone import CLIPBackbone, trainable_parameter_report
from workbench.methods import DOMAINS, ClassTask, build_method
from workbench.methods.mmrl import INJECTION

TASK = ClassTask("fixture", ("cat", "dog", "golden retriever", "red circle"), ("a photo of a {}.",))
PROMPTS = [f"a photo of a {c}." for c in TASK.classnames]


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return CLIPBackbone.from_pretrained("ViT-B-16-quickgelu")


@pytest.fixture
def mmrl_on(tiny_backbone):
    """Builds MMRL on the random-init tiny backbone and detaches it afterwards."""
    built = []

    def build(task=TASK, **overrides):
        tiny_backbone.clear_extensions()
        torch.manual_seed(0)
        method = build_method("mmrl", tiny_backbone, task, preset="toy", overrides=overrides).eval()
        built.append(method)
        return method

    yield build
    tiny_backbone.clear_extensions()


def images(backbone, n=3, seed=0):
    size = backbone.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def scaled_cos(backbone, a, b):
    return backbone.logit_scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()


# ---- parameter counts (paper Table 6: 4.992M at d_r=512, 0.689M at d_r=32) ----------------------
def test_parameter_counts_vit_b16(vit_b16):
    def count(**overrides):
        vit_b16.clear_extensions()
        method = build_method("mmrl", vit_b16, TASK, overrides=overrides)
        try:
            return trainable_parameter_report(method)["trainable"], method
        finally:
            vit_b16.clear_extensions()

    k, layers, dv, dt, embed = 5, 12 - 6 + 1, 768, 512, 512  # K, layers 6..12, widths, proj_rep out

    def shared(dr):  # R + per-layer Linear(d_r→768) and Linear(d_r→512) + proj_rep
        return k * dr + layers * ((dr * dv + dv) + (dr * dt + dt)) + dv * embed

    n512, method = count()
    assert n512 == shared(512) == 4_992_256
    assert method.vision_stages == method.text_stages == [5, 6, 7, 8, 9, 10, 11]  # 0-based block inputs
    first = method.map_vision[0].weight
    assert all(torch.equal(m.weight, first) for m in method.map_vision)  # clones of one Linear
    assert all(torch.equal(m.weight, method.map_text[0].weight) for m in method.map_text)
    assert method.rep_space.std().item() == pytest.approx(0.02, rel=0.2)
    assert count(rep_dim=32)[0] == shared(32) == 689_056
    # ablations: separate tokens per modality; MaPLe-style text tokens mapped to vision; one tower only
    assert count(space="unimodal")[0] == layers * k * (dv + dt) + dv * embed
    assert count(space="text_to_vision")[0] == layers * (k * dt + dt * dv + dv) + dv * embed
    assert count(text_tokens=False)[0] == k * 512 + layers * (512 * dv + dv) + dv * embed
    assert count(vision_tokens=False)[0] == k * 512 + layers * (512 * dt + dt)


# ---- the class-token path ------------------------------------------------------------------------
def test_class_path_without_tokens_equals_open_clip(mmrl_on, tiny_backbone):
    method = mmrl_on()
    x = images(tiny_backbone)
    clip = tiny_backbone.clip
    with torch.no_grad():
        text = clip.encode_text(tiny_backbone.tokenizer(PROMPTS))
        expected = scaled_cos(tiny_backbone, clip.encode_image(x), text)
        with tiny_backbone.extensions_disabled():
            method.prepare_eval(TASK, "new")
            absent = method.eval_logits(x)
        method.prepare_eval(TASK, "new")
        present = method.eval_logits(x)
    assert torch.allclose(absent, expected, atol=1e-4)
    assert not torch.allclose(present, expected, atol=1e-2)  # the tokens do reach CLS and end-of-text


def test_inserted_text_tokens_follow_the_causal_mask(mmrl_on, tiny_backbone):
    method = mmrl_on()
    tokens = method.train_tokens
    k, first_stage = method.config.n_tokens, method.text_stages[0]
    with torch.no_grad():
        with tiny_backbone.extensions_disabled():
            plain = tiny_backbone.forward_text(tokens, output_hidden_states=True)
        before = tiny_backbone.forward_text(tokens, output_hidden_states=True)
        method.rep_space.add_(torch.randn_like(method.rep_space))
        after = tiny_backbone.forward_text(tokens, output_hidden_states=True)
    assert after.last_hidden.shape[1] == plain.last_hidden.shape[1] + k
    assert after.token_slots[INJECTION] == slice(1, 1 + k)  # right after start-of-text
    # blocks below J never see the tokens
    for i in range(first_stage):
        assert torch.allclose(after.hidden_states[i], plain.hidden_states[i], atol=1e-6)
    # start-of-text precedes the tokens: causal attention hides them from it
    assert torch.allclose(after.last_hidden[:, 0], plain.last_hidden[:, 0], atol=1e-5)
    assert torch.allclose(after.last_hidden[:, 0], before.last_hidden[:, 0], atol=1e-5)
    # end-of-text (shifted by K) sees them: the class text feature changes with the token values
    eot = tokens.argmax(-1) + k
    assert torch.allclose(after.pooled, after.last_hidden[torch.arange(len(tokens)), eot])
    assert (after.features - before.features).abs().max() > 1e-3


# ---- decoupled inference -------------------------------------------------------------------------
def hand_logits(method, backbone, x):
    """Class-only and fused (α=0.7, logits as the released code) predictions from the tower outputs."""
    k = method.config.n_tokens
    with torch.no_grad():
        out = backbone.forward_image(x)
        rep = out.last_hidden[:, 1:1 + k].mean(dim=1) @ method.proj_rep
        text = backbone.forward_text(backbone.tokenize(PROMPTS)).features
        logits_class, logits_rep = scaled_cos(backbone, out.features, text), scaled_cos(backbone, rep, text)
    return logits_class, logits_rep


@pytest.mark.parametrize("inference, fused_domains", [("decoupled", {"base"}), ("fused", set(DOMAINS)),
                                                      ("class", set())])
def test_each_domain_uses_its_head(mmrl_on, tiny_backbone, inference, fused_domains):
    method = mmrl_on(inference=inference)
    x = images(tiny_backbone)
    logits_class, logits_rep = hand_logits(method, tiny_backbone, x)
    fused = 0.7 * logits_class + 0.3 * logits_rep
    assert not torch.allclose(fused, logits_class, atol=1e-2)  # the two heads are distinguishable
    for domain in DOMAINS:
        with torch.no_grad():
            method.prepare_eval(TASK, domain)
            got = method.eval_logits(x)
        expected = fused if domain in fused_domains else logits_class
        assert torch.allclose(got, expected, atol=1e-4), (inference, domain)


def test_probability_fusion_and_vision_free_ablation(mmrl_on, tiny_backbone):
    method = mmrl_on(fusion="probs")
    x = images(tiny_backbone)
    logits_class, logits_rep = hand_logits(method, tiny_backbone, x)
    with torch.no_grad():
        method.prepare_eval(TASK, "base")
        got = method.eval_logits(x)
    expected = (0.7 * logits_class.softmax(-1) + 0.3 * logits_rep.softmax(-1)).log()
    assert torch.allclose(got, expected, atol=1e-4)
    no_vision = mmrl_on(vision_tokens=False)  # "w/o V": no representation feature, class head everywhere
    assert [no_vision.head_for(d) for d in DOMAINS] == ["class"] * len(DOMAINS)


# ---- loss, per-dataset λ / d_r, dashboard scalars ------------------------------------------------
def test_loss_is_the_papers_formula_with_the_dataset_lambda(mmrl_on, tiny_backbone):
    cars = ClassTask("stanford_cars_base", TASK.classnames, TASK.templates)
    method = mmrl_on(cars, reg_weight=None)
    assert method.reg_weight == 7.0
    x, labels = images(tiny_backbone, 4), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        out = method.training_loss(x, labels)
        logits_class, logits_rep = hand_logits(method, tiny_backbone, x)
        f_class = tiny_backbone.forward_image(x).features
        text = tiny_backbone.forward_text(tiny_backbone.tokenize(PROMPTS)).features
        with tiny_backbone.extensions_disabled():
            f_clip = tiny_backbone.encode_image(x)
            t_clip = tiny_backbone.encode_text(tiny_backbone.tokenize(PROMPTS))
    reg = (1 - F.cosine_similarity(f_class, f_clip).mean()) + (1 - F.cosine_similarity(text, t_clip).mean())
    expected = 0.7 * F.cross_entropy(logits_class, labels) + 0.3 * F.cross_entropy(logits_rep, labels) + 7.0 * reg
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert reg.item() > 1e-4  # the tokens move both features away from frozen CLIP

    eurosat = mmrl_on(ClassTask("eurosat", TASK.classnames, TASK.templates), rep_dim=None, reg_weight=None)
    assert (eurosat.rep_dim, eurosat.reg_weight) == (2048, 0.01)
    toy = mmrl_on(ClassTask("toy_objects_base", TASK.classnames, TASK.templates), reg_weight=None)
    assert toy.reg_weight == 1.0  # datasets outside the paper's table


def test_learned_scalars_report_token_norms_per_layer(mmrl_on):
    method = mmrl_on(alpha=0.6, reg_weight=2.5)
    scalars = method.learned_scalars()
    assert "alpha" not in scalars and "lambda" not in scalars  # fixed settings, not learned
    assert method.config.alpha == 0.6 and method.reg_weight == 2.5
    with torch.no_grad():
        for i, stage in enumerate(method.vision_stages):
            mapped = method.rep_space @ method.map_vision[i].weight.t() + method.map_vision[i].bias
            assert scalars[f"token_norm.vision.{stage + 1}"] == pytest.approx(mapped.norm(dim=-1).mean().item(), rel=1e-5)
    assert {f"token_norm.text.{s + 1}" for s in method.text_stages} <= set(scalars)
    assert method.vision_stages == [2, 3]  # J=6 of 12 scaled to the 4-block toy towers: J=3


# ---- a short toy base-to-novel run ---------------------------------------------------------------
def test_toy_base_to_novel_improves_base_and_keeps_new(toy_backbone, toy_data_root):
    from workbench.data import base_new_split, load_few_shot
    from workbench.engine.evaluate import evaluate
    from workbench.engine.train import TrainConfig, fit
    from workbench.methods.mmrl import MMRL

    base, new = base_new_split(load_few_shot("toy_objects", 16, 1))
    zero = build_method("zeroshot", toy_backbone, ClassTask.from_splits(base))
    zs_base = evaluate(zero, base, domain="base", progress=False).top1
    zs_new = evaluate(zero, new, domain="new", progress=False).top1

    method = build_method("mmrl", toy_backbone, ClassTask.from_splits(base), preset="toy")
    short = {**MMRL.presets["toy"].train, "epochs": 5}  # half the toy schedule keeps the test short
    history = fit(method, base, TrainConfig.from_dict(short), seed=1, progress=False).history
    mmrl_base = evaluate(method, base, domain="base", progress=False).top1
    mmrl_new = evaluate(method, new, domain="new", progress=False).top1
    print(f"toy b2n: zero-shot base {zs_base:.1f} new {zs_new:.1f} | MMRL base {mmrl_base:.1f} new {mmrl_new:.1f}")
    assert "token_norm.vision.3" in history[-1] and "lambda" not in history[-1]
    assert history[-1]["loss"] < history[0]["loss"]
    assert mmrl_base > zs_base + 2.0
    assert mmrl_new > zs_new - 4.0  # new classes use the class head, regularized towards frozen CLIP


def test_regularization_strategies_of_table_9(mmrl_on):
    """cosine: 1 - mean cos (paper); l1 / mse: element-mean distances of the raw features, by hand."""
    import torch.nn.functional as F

    a, b = torch.randn(6, 8), torch.randn(6, 8)
    by_hand = {"cosine": 1 - (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1).mean(),
               "l1": (a - b).abs().mean(), "mse": ((a - b) ** 2).mean()}
    for name, expected in by_hand.items():
        assert mmrl_on(reg_loss=name).regularization(a, b).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="reg_loss must be one of"):
        mmrl_on(reg_loss="huber")
