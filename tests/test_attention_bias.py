"""The attention-bias extension point: unused or zero, the towers equal open_clip; a bias enters the
attention logits as open_clip's own blocks add a float mask (oracle: nn.MultiheadAttention with a
3-D attn_mask = causal mask + bias, one copy per head), and the causal mask is kept."""
from __future__ import annotations

import pytest
import torch

from workbench.backbone import AttentionBias, CallableBias, CLIPBackbone

ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CLIPBackbone.from_pretrained("wb-tiny-vit")


def _tokens(bb):
    return bb.tokenize(["a photo of a red circle.", "X X X X a blue square, striped.", "dots"])


def ref_text_with_bias(clip, tokens, bias_per_layer):
    """open_clip's blocks with attn_mask = causal + bias[layer] (bias [B, L, L], shared by the heads)."""
    x = clip.token_embedding(tokens) + clip.positional_embedding
    n = x.shape[1]
    causal = torch.triu(torch.full((n, n), float("-inf")), 1)
    for i, blk in enumerate(clip.transformer.resblocks):
        heads = blk.attn.num_heads
        mask = causal
        if i in bias_per_layer:
            mask = (causal + bias_per_layer[i]).repeat_interleave(heads, dim=0)  # [B*heads, L, L]
        x = blk(x, attn_mask=mask)
    x = clip.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ clip.text_projection


def _random_biases(tokens, layers, scale=2.0, seed=5):
    g = torch.Generator().manual_seed(seed)
    b, n = tokens.shape
    return {i: torch.randn(b, n, n, generator=g) * scale for i in layers}


def test_zero_attention_bias_keeps_tiny_text_tower_equal_to_open_clip():
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("wb-tiny-vit")
    tokens = _tokens(bb)
    bb.text.add_attention_bias("zero", CallableBias(lambda layer, x: x.new_zeros(x.shape[0], x.shape[1], x.shape[1]),
                                                    layers=range(bb.text.num_layers)))
    with torch.no_grad():
        ours, theirs = bb.encode_text(tokens), bb.clip.encode_text(tokens)
    assert (ours - theirs).abs().max() <= ATOL


def test_zero_attention_bias_keeps_vit_b16_text_tower_equal_to_open_clip():
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("ViT-B-16-quickgelu")
    tokens = bb.tokenize(["a photo of a dog.", "X X X X X X X banded texture. object, surface. striped."])
    scal = torch.nn.Parameter(torch.zeros(12))  # HPT's layout: a zero scalar per layer times a 0/1 matrix
    structure = torch.zeros(2, 77, 77)
    structure[:, 10:14, 10:14] = 1.0
    bb.text.add_attention_bias("scaled", CallableBias(lambda layer, x: scal[layer] * structure, layers=range(12)))
    with torch.no_grad():
        ours, theirs = bb.encode_text(tokens), bb.clip.encode_text(tokens)
    assert (ours - theirs).abs().max() <= ATOL


def test_attention_bias_matches_open_clip_blocks_with_float_mask(tiny):
    tokens = _tokens(tiny)
    biases = _random_biases(tokens, layers=(0, 2))
    tiny.text.add_attention_bias("rand", CallableBias(lambda layer, x: biases[layer], layers=(0, 2)))
    try:
        with torch.no_grad():
            ours = tiny.encode_text(tokens)
            expected = ref_text_with_bias(tiny.clip, tokens, biases)
            plain = tiny.clip.encode_text(tokens)
    finally:
        tiny.text.clear_extensions()
    assert (ours - expected).abs().max() <= ATOL
    assert (ours - plain).abs().max() > 1e-3  # the bias does something


def test_attention_bias_keeps_causal_mask(tiny):
    """A bias on future positions only (strictly upper triangle) changes nothing: those logits stay −inf."""
    tokens = _tokens(tiny)
    n = tokens.shape[1]
    future = torch.triu(torch.full((n, n), 50.0), 1)
    tiny.text.add_attention_bias("future", CallableBias(lambda layer, x: future, layers=range(tiny.text.num_layers)))
    try:
        with torch.no_grad():
            ours, theirs = tiny.encode_text(tokens), tiny.clip.encode_text(tokens)
    finally:
        tiny.text.clear_extensions()
    assert (ours - theirs).abs().max() <= ATOL


def test_attention_bias_per_head_and_disabled(tiny):
    tokens = _tokens(tiny)
    heads = tiny.text.transformer.resblocks[1].attn.num_heads
    n = tokens.shape[1]
    g = torch.Generator().manual_seed(2)
    per_head = torch.randn(1, heads, n, n, generator=g)
    tiny.text.add_attention_bias("heads", CallableBias(lambda layer, x: per_head, layers=[1]))
    try:
        with torch.no_grad():
            ours = tiny.encode_text(tokens)
            with tiny.extensions_disabled():
                disabled = tiny.encode_text(tokens)
            # oracle: the same per-head bias as a 3-D mask [B*heads, L, L] through open_clip's blocks
            x = tiny.clip.token_embedding(tokens) + tiny.clip.positional_embedding
            causal = torch.triu(torch.full((n, n), float("-inf")), 1)
            for i, blk in enumerate(tiny.clip.transformer.resblocks):
                mask = (causal + per_head.expand(tokens.shape[0], -1, -1, -1)).reshape(-1, n, n) if i == 1 else causal
                x = blk(x, attn_mask=mask)
            x = tiny.clip.ln_final(x)
            expected = x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ tiny.clip.text_projection
        assert tiny.text.has_extensions()
    finally:
        tiny.text.clear_extensions()
    assert (ours - expected).abs().max() <= ATOL
    assert (disabled - tiny.clip.encode_text(tokens)).abs().max() <= ATOL
    assert not tiny.text.has_extensions()


def test_attention_bias_bad_input_is_refused(tiny):
    tokens = _tokens(tiny)
    with pytest.raises(TypeError, match="AttentionBias"):
        tiny.text.add_attention_bias("fn", lambda layer, x: x)
    with pytest.raises(IndexError, match="blocks"):
        tiny.text.add_attention_bias("far", CallableBias(lambda layer, x: x, layers=[99]))
    with pytest.raises(ValueError, match="at least one layer"):
        AttentionBias([])
    tiny.text.add_attention_bias("wrong", CallableBias(lambda layer, x: torch.zeros(5, 5), layers=[0]))
    try:
        with pytest.raises(ValueError, match=r"attention bias 'wrong' has shape \(5, 5\)"):
            tiny.encode_text(tokens)
        with pytest.raises(KeyError, match="already has an attention bias"):
            tiny.text.add_attention_bias("wrong", CallableBias(lambda layer, x: x, layers=[0]))
    finally:
        tiny.text.clear_extensions()


def test_zero_attention_bias_on_vision_tower_keeps_open_clip(tiny):
    images = torch.randn(2, 3, tiny.image_size, tiny.image_size, generator=torch.Generator().manual_seed(0))
    tiny.visual.add_attention_bias("zero", CallableBias(lambda layer, x: x.new_zeros(x.shape[1], x.shape[1]),
                                                        layers=[0, 1]))
    try:
        with torch.no_grad():
            ours, theirs = tiny.encode_image(images), tiny.clip.encode_image(images)
    finally:
        tiny.visual.clear_extensions()
    assert (ours - theirs).abs().max() <= ATOL
