"""RAda: zero-shot equality at init, logits = s·Σ M ⊙ R by hand, the mask attention against a
hand-written multi-head attention (row and released flat softmax), exact class chunking, the mask
regularization forms, more layers, compositions, and a toy EFT run that beats zero-shot on base."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.methods import ClassTask, build_method
from workbench.methods._rada_mask import MultiQueryAttention, RationalMask
from workbench.methods.rada import mask_regularization

TASK = ClassTask("fixture", ("cat", "dog", "golden retriever", "red circle", "blue square"), ("a photo of a {}.",))


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Non-zero weights everywhere (the zero-initialized output projection included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def hand_attention(layer: MultiQueryAttention, queries, kv, flat: bool = False):
    """Multi-head attention written out per image, head and query with explicit loops over heads."""
    batch, n, dim = kv.shape
    heads, d = layer.heads, dim // layer.heads
    out = torch.zeros(batch, n, dim)
    for b in range(batch):
        k = kv[b] @ layer.k_proj.weight.t() + layer.k_proj.bias
        v = kv[b] @ layer.v_proj.weight.t() + layer.v_proj.bias
        heads_out = []
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            avg = torch.zeros(n, n)
            for i, q_in in enumerate(queries):
                proj = layer.q_projs[i]
                q = q_in.expand(batch, n, dim)[b] @ proj.weight.t() + proj.bias
                scores = q[:, cols] @ k[:, cols].t() / math.sqrt(d) / layer.temperature
                if flat:
                    weights = torch.exp(scores) / torch.exp(scores).sum() * n
                else:
                    weights = torch.exp(scores) / torch.exp(scores).sum(dim=1, keepdim=True)
                avg += weights / len(queries)
            heads_out.append(avg @ v[:, cols])
        out[b] = torch.cat(heads_out, dim=1) @ layer.out_proj.weight.t() + layer.out_proj.bias
    return out


@pytest.mark.parametrize("flat", [False, True])
def test_mask_attention_matches_hand_written_multi_head_attention(flat):
    torch.manual_seed(0)
    layer = MultiQueryAttention(16, heads=4, n_queries=3, softmax="flat" if flat else "rows", temperature=0.7)
    randomize(layer)
    kv = torch.randn(2, 6, 16)
    queries = [torch.randn(2, 1, 16), torch.randn(1, 6, 16), torch.randn(2, 6, 16)]
    expected = hand_attention(layer, queries, kv, flat=flat)
    torch.testing.assert_close(layer(queries, kv), expected, atol=1e-5, rtol=1e-5)
    # chunks of 4 query classes (the last one 2) attend to every key: the same output
    torch.testing.assert_close(layer(queries, kv, class_chunk=4), expected, atol=1e-5, rtol=1e-5)


def test_logits_equal_scaled_sum_of_mask_times_rational_matrix():
    torch.manual_seed(0)
    head = RationalMask(16, heads=4)
    randomize(head, std=0.05)
    img, txt, scale, bias = torch.randn(3, 16), torch.randn(5, 16), 12.5, torch.tensor(-1.5)
    logits, mask = head(img, txt, scale, bias, return_mask=True)
    f = img / img.norm(dim=1, keepdim=True)
    w = txt / txt.norm(dim=1, keepdim=True)
    expected = torch.zeros(3, 5)
    for b in range(3):
        for c in range(5):
            expected[b, c] = scale * sum(mask[b, c, d] * f[b, d] * w[c, d] for d in range(16)) + bias
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(mask, torch.ones_like(mask))  # a trained-looking mask, not the identity


def test_mask_is_relu_of_one_plus_the_attention_output():
    torch.manual_seed(0)
    head = RationalMask(8, heads=2, input_scale=False)
    randomize(head)
    img, txt = torch.randn(2, 8), torch.randn(3, 8)
    f, w = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    rational = f[:, None] * w[None]
    out = hand_attention(head.layers[0], [f[:, None], w[None], rational], rational)
    torch.testing.assert_close(head.mask(img, txt, 1.0), torch.relu(1 + out), atol=1e-5, rtol=1e-5)


def test_released_input_scaling_feeds_root_scale_features_and_scaled_rational_matrix():
    torch.manual_seed(0)
    head = RationalMask(8, heads=2)
    randomize(head, std=0.1)
    img, txt, s = torch.randn(2, 8), torch.randn(3, 8), 9.0
    f, w = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    rational = f[:, None] * w[None]
    out = hand_attention(head.layers[0], [3.0 * f[:, None], 3.0 * w[None], s * rational], s * rational)
    torch.testing.assert_close(head.mask(img, txt, s), torch.relu(1 + out), atol=1e-4, rtol=1e-5)


def test_second_layer_queries_with_the_first_mask_and_adds_residually():
    torch.manual_seed(0)
    head = RationalMask(8, heads=2, layers=2, input_scale=False)
    randomize(head, std=0.2)
    img, txt = torch.randn(2, 8), torch.randn(3, 8)
    f, w = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    rational = f[:, None] * w[None]
    out1 = hand_attention(head.layers[0], [f[:, None], w[None], rational], rational)
    out2 = hand_attention(head.layers[1], [torch.relu(1 + out1)], rational)
    torch.testing.assert_close(head.mask(img, txt, 1.0), torch.relu(1 + out1 + out2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_fresh_mask_is_all_ones_and_gives_scaled_cosine_logits(layers):
    torch.manual_seed(0)
    head = RationalMask(16, heads=8, layers=layers, class_chunk=2)
    img, txt = torch.randn(4, 16), torch.randn(7, 16)
    logits, mask = head(img, txt, 30.0, return_mask=True)
    assert torch.equal(mask, torch.ones_like(mask))
    torch.testing.assert_close(logits, 30.0 * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t())


def test_class_chunks_give_the_same_logits_and_gradients():
    torch.manual_seed(0)
    head = RationalMask(16, heads=4)
    randomize(head, std=0.05)
    img, txt = torch.randn(2, 16), torch.randn(9, 16)
    grads = []
    for chunk in (None, 4):
        head.class_chunk = chunk
        head.zero_grad()
        logits = head(img, txt, 5.0)
        logits.square().sum().backward()
        grads.append((logits.detach(), [p.grad.clone() for p in head.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_mask_regularization_forms_against_hand_values():
    mask = torch.tensor([[[1.0, 3.0], [0.5, 1.0]], [[1.0, 1.0], [2.0, 0.0]]])  # [2, 2, 2]
    # gaps: sample 0: 0, 2, -0.5, 0 ; sample 1: 0, 0, 1, -1
    assert mask_regularization(mask, "l2").item() == pytest.approx((4 + 0.25 + 1 + 1) / 8)
    assert mask_regularization(mask, "l1").item() == pytest.approx((2 + 0.5 + 1 + 1) / 8)
    assert mask_regularization(mask, "linf").item() == pytest.approx((2 + 1) / 2)


def test_bad_settings_are_refused_with_the_valid_choices():
    from workbench.methods.rada import RAdaConfig

    with pytest.raises(ValueError, match="reg_loss must be one of l2, l1, linf"):
        RAdaConfig(reg_loss="l3")
    with pytest.raises(ValueError, match="queries"):
        RAdaConfig(queries=("image", "audio"))
    with pytest.raises(ValueError, match="divisible by heads"):
        RationalMask(10, heads=4)


# ---- the method on a backbone -----------------------------------------------------------------
def images(backbone, n=3, seed=0):
    size = backbone.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def zero_shot_logits(backbone, feats, classnames, template="a photo of a {}."):
    with torch.no_grad():
        text = backbone.encode_text(backbone.tokenize([template.format(c) for c in classnames]))
    return backbone.logit_scale * F.normalize(feats, dim=-1) @ F.normalize(text, dim=-1).t()


@pytest.mark.parametrize("compose", ["none", "coop"])
def test_rada_equals_zero_shot_at_init(tiny_backbone, compose):
    tiny_backbone.clear_extensions()
    torch.manual_seed(0)
    method = build_method("rada", tiny_backbone, TASK, overrides={"compose": compose}).eval()
    x = images(tiny_backbone)
    with torch.no_grad():
        feats = tiny_backbone.encode_image(x)
    method.prepare_eval(TASK, "base")
    expected = zero_shot_logits(tiny_backbone, feats, TASK.classnames)
    torch.testing.assert_close(method.eval_logits(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(method.eval_logits(feats), expected, atol=1e-5, rtol=1e-5)
    tiny_backbone.clear_extensions()


def test_rada_trains_only_the_mask_and_records_both_loss_terms(tiny_backbone):
    tiny_backbone.clear_extensions()
    torch.manual_seed(0)
    method = build_method("rada", tiny_backbone, TASK)
    names = {n for n, p in method.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("mask_head.") for n in names)
    dim = tiny_backbone.embed_dim
    assert sum(p.numel() for p in method.trainable_parameters()) == 6 * (dim * dim + dim)  # 3 q, k, v, out
    out = method.training_loss(images(tiny_backbone, 2), torch.tensor([0, 3]))
    assert set(out.scalars) == {"loss_ce", "loss_mask"} and out.scalars["loss_mask"] == 0.0
    out.loss.backward()
    assert method.mask_head.layers[0].out_proj.weight.grad.abs().sum() > 0


def test_rada_with_clip_adapter_trains_mask_and_adapter(tiny_backbone):
    tiny_backbone.clear_extensions()
    method = build_method("rada", tiny_backbone, TASK, overrides={"compose": "clip_adapter"})
    prefixes = {n.split(".")[0] for n, p in method.named_parameters() if p.requires_grad}
    assert prefixes == {"mask_head", "adapter"}
    feats = torch.randn(2, tiny_backbone.embed_dim)
    adapted = method.image_features(feats)
    torch.testing.assert_close(adapted, 0.2 * method.adapter(feats) + 0.8 * feats)


def test_automatic_chunks_keep_attention_under_the_budget_and_stay_exact(monkeypatch):
    from workbench.methods import _rada_mask

    torch.manual_seed(0)
    head = RationalMask(16, heads=4)
    randomize(head, std=0.05)
    img, txt = torch.randn(3, 16), torch.randn(10, 16)
    whole = head(img, txt, 5.0)
    seen = []
    original = MultiQueryAttention._chunk_out

    def spy(self, keys, values, lse, n, *queries):
        seen.append(queries[0].shape[1])
        return original(self, keys, values, lse, n, *queries)

    monkeypatch.setattr(_rada_mask, "MAX_ATTENTION_BYTES", 3 * 4 * 10 * 4 * 3)  # 3 query rows per chunk
    monkeypatch.setattr(MultiQueryAttention, "_chunk_out", spy)
    torch.testing.assert_close(head(img, txt, 5.0), whole, atol=1e-5, rtol=1e-5)
    assert seen == [3, 3, 3, 1]


def test_benchmark_reports_both_settings_and_exact_chunking():
    import argparse

    from workbench.benchmarks import list_benchmarks

    bench = list_benchmarks()["rada"]
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--classes", "12", "--dim", "16", "--chunk", "5", "--repeats", "1", "--views", "4",
                              "--steps", "1", "--ttt-classes", "3"])
    result = bench.run(args)
    (row,) = result["eft"]
    assert row["classes"] == 12 and row["max_logit_difference"] < 1e-4
    assert row["chunked"]["attention_bytes"] == 8 * 5 * 12 * 4 and row["unchunked"]["attention_bytes"] == 8 * 12 * 12 * 4
    assert set(result["ttt"]) == {"tpt", "rada"} and result["ttt"]["rada"]["ratio"] > 0
    assert "TPT (reference)" in bench.format(result)


def test_mlp_mask_function_is_a_per_class_mlp_on_the_scaled_rational_matrix():
    torch.manual_seed(0)
    head = RationalMask(8, mask_function="mlp")
    img, txt, s = torch.randn(2, 8), torch.randn(3, 8), 4.0
    assert torch.equal(head.mask(img, txt, s), torch.ones(2, 3, 8))  # zero last layer: M = 1
    randomize(head, std=0.2)
    rational = F.normalize(img, dim=-1)[:, None] * F.normalize(txt, dim=-1)[None]
    fc1, fc2 = head.layers[0].fc1, head.layers[0].fc2
    expected = torch.zeros(2, 3, 8)
    for b in range(2):
        for c in range(3):  # each class on its own: no attention across classes
            hidden = torch.relu(fc1.weight @ (s * rational[b, c]) + fc1.bias)
            expected[b, c] = torch.relu(1 + fc2.weight @ hidden + fc2.bias)
    torch.testing.assert_close(head.mask(img, txt, s), expected, atol=1e-5, rtol=1e-5)
