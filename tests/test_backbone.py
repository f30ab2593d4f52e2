"""Backbone layer: equality with open_clip, and each extension point against a hand-written forward
that runs open_clip's own blocks (nn.MultiheadAttention included)."""
from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

from workbench.backbone import (AFTER_FIRST, EMBED, END, CLIPBackbone, StaticTokens, WeightsUnavailableError,
                                load_clip, trainable_parameter_report)

ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CLIPBackbone.from_pretrained("wb-tiny-vit")


@pytest.fixture(scope="module")
def inputs(tiny):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, tiny.image_size, tiny.image_size, generator=g)
    tokens = tiny.tokenize(["a photo of a red circle.", "X X X X a blue square", "stripes"])
    return images, tokens


# ---- hand-written references over open_clip's modules -------------------------------------------

def ref_vision(clip, images, insert=None, embed_tokens=None):
    """insert: (block index, tokens [B,K,D]) placed after CLS; embed_tokens: appended before ln_pre."""
    v = clip.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
    if embed_tokens is not None:
        x = torch.cat([x, embed_tokens], 1)
    x = v.ln_pre(x)
    for i, blk in enumerate(v.transformer.resblocks):
        if insert is not None and insert[0] == i:
            x = torch.cat([x[:, :1], insert[1], x[:, 1:]], 1)
        x = blk(x)
    return v.ln_post(x)[:, 0] @ v.proj


def ref_text(clip, tokens, insert=None, replace=None, embeddings=None):
    """insert: (block index, tokens) after start-of-text; replace: (block index, tokens) over
    positions 1..K. Causal masks are built by hand for the current length."""
    x = clip.token_embedding(tokens) if embeddings is None else embeddings
    x = x + clip.positional_embedding
    for i, blk in enumerate(clip.transformer.resblocks):
        if insert is not None and insert[0] == i:
            x = torch.cat([x[:, :1], insert[1], x[:, 1:]], 1)
        if replace is not None and replace[0] == i:
            k = replace[1].shape[1]
            x = torch.cat([x[:, :1], replace[1], x[:, 1 + k:]], 1)
        n = x.shape[1]
        mask = torch.triu(torch.full((n, n), float("-inf")), 1)
        x = blk(x, attn_mask=mask)
    x = clip.ln_final(x)
    shift = insert[1].shape[1] if insert is not None else 0
    return x[torch.arange(x.shape[0]), tokens.argmax(-1) + shift] @ clip.text_projection


# ---- equality with open_clip ---------------------------------------------------------------------

def test_tiny_matches_open_clip(tiny, inputs):
    images, tokens = inputs
    with torch.no_grad():
        assert (tiny.encode_image(images) - tiny.clip.encode_image(images)).abs().max() <= ATOL
        assert (tiny.encode_text(tokens) - tiny.clip.encode_text(tokens)).abs().max() <= ATOL


def test_vit_b16_quickgelu_matches_open_clip():
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("ViT-B-16-quickgelu")
    images = torch.randn(1, 3, 224, 224)
    tokens = bb.tokenize(["a photo of a dog.", "a centered satellite photo of Annual Crop Land."])
    with torch.no_grad():
        assert (bb.encode_image(images) - bb.clip.encode_image(images)).abs().max() <= ATOL
        assert (bb.encode_text(tokens) - bb.clip.encode_text(tokens)).abs().max() <= ATOL


def test_base_weights_frozen_by_default(tiny):
    report = trainable_parameter_report(tiny)
    assert report["trainable"] == 0 and report["total"] == sum(p.numel() for p in tiny.clip.parameters())


# ---- adapters -----------------------------------------------------------------------------------

class Shift(nn.Module):
    def __init__(self, width, value=0.0):
        super().__init__()
        self.delta = nn.Parameter(torch.full((width,), value))

    def forward(self, h):
        return h + self.delta


def test_zero_adapters_leave_outputs_unchanged(inputs):
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("wb-tiny-vit")
    images, tokens = inputs
    with torch.no_grad():
        before = bb.encode_image(images), bb.encode_text(tokens)
        for tower in (bb.visual, bb.text):
            for layer in range(tower.num_layers):
                for site in ("pre_attn", "pre_mlp"):
                    tower.add_adapter(layer, site, Shift(tower.width))
        after = bb.encode_image(images), bb.encode_text(tokens)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_adapter_sites_against_hand_computation(inputs):
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("wb-tiny-vit")
    images, _ = inputs
    shift_attn, shift_mlp = Shift(bb.visual.width, 0.3), Shift(bb.visual.width, -0.2)
    bb.visual.add_adapter(1, "pre_attn", shift_attn)
    bb.visual.add_adapter(2, "pre_mlp", shift_mlp)
    # reference: open_clip blocks with their LayerNorms wrapped to add the shift
    ref = copy.deepcopy(bb.clip)
    blocks = ref.visual.transformer.resblocks
    blocks[1].ln_1 = nn.Sequential(blocks[1].ln_1, copy.deepcopy(shift_attn))
    blocks[2].ln_2 = nn.Sequential(blocks[2].ln_2, copy.deepcopy(shift_mlp))
    with torch.no_grad():
        ours, expected = bb.encode_image(images), ref.encode_image(images)
    assert (ours - expected).abs().max() <= ATOL
    assert (ours - bb.clip.encode_image(images)).abs().max() > 1e-3  # the adapter does something


# ---- LoRA ---------------------------------------------------------------------------------------

def _randomize_lora(loras, scale=0.05):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for lora in loras:
            lora.lora_B.copy_(torch.randn(lora.lora_B.shape, generator=g) * scale)


@pytest.mark.parametrize("tower_name", ["visual", "text"])
def test_lora_qkvo_equals_edited_weights(inputs, tower_name):
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("wb-tiny-vit")
    images, tokens = inputs
    tower = getattr(bb, tower_name)
    run = (lambda m: m.encode_image(images)) if tower_name == "visual" else (lambda m: m.encode_text(tokens))
    with torch.no_grad():
        base = run(bb)
        loras = tower.add_lora(targets=("q", "k", "v", "o"), layers=[0, 2], r=4, alpha=8, scaling="sqrt")
        assert torch.equal(run(bb), base)  # B = 0 at init: a no-op
        _randomize_lora(loras)
        ours = run(bb)
        # reference: open_clip with W_q, W_k, W_v (rows of in_proj_weight) and W_o edited by B A * alpha/sqrt(r)
        ref = copy.deepcopy(bb.clip)
        ref_blocks = (ref.visual.transformer if tower_name == "visual" else ref.transformer).resblocks
        d = tower.width
        for layer, i in zip([0, 2], range(0, len(loras), 4)):
            attn = ref_blocks[layer].attn
            for j, name in enumerate("qkv"):
                attn.in_proj_weight[j * d:(j + 1) * d] += loras[i + j].lora_B @ loras[i + j].lora_A * 8 / 2
            attn.out_proj.weight += loras[i + 3].lora_B @ loras[i + 3].lora_A * 8 / 2
        expected = ref.encode_image(images) if tower_name == "visual" else ref.encode_text(tokens)
    assert (ours - expected).abs().max() <= ATOL
    assert (ours - base).abs().max() > 1e-4


def test_lora_merge_and_unmerge(inputs):
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("wb-tiny-vit")
    images, _ = inputs
    original = bb.clip.visual.transformer.resblocks[1].attn.in_proj_weight.clone()
    loras = bb.visual.add_lora(targets=("q", "v"), layers=None, r=2, alpha=1)
    _randomize_lora(loras)
    with torch.no_grad():
        unmerged = bb.encode_image(images)
        bb.visual.merge_lora()
        merged = bb.encode_image(images)
        bb.visual.unmerge_lora()
        again = bb.encode_image(images)
    assert (merged - unmerged).abs().max() <= ATOL and (again - unmerged).abs().max() <= ATOL
    assert torch.allclose(bb.clip.visual.transformer.resblocks[1].attn.in_proj_weight, original, atol=1e-6)


# ---- token injections ---------------------------------------------------------------------------

def test_vision_tokens_inserted_after_cls_match_hand_forward(inputs):
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("wb-tiny-vit")
    images, _ = inputs
    inj = bb.visual.add_injection("rep", StaticTokens(3, bb.visual.width, stages=[2], position=AFTER_FIRST))
    with torch.no_grad():
        out = bb.forward_image(images)
        expected = ref_vision(bb.clip, images, insert=(2, inj.params[0].expand(3, -1, -1)))
    assert (out.features - expected).abs().max() <= ATOL
    assert out.token_slots["rep"] == slice(1, 4)
    assert out.last_hidden.shape[1] == 1 + (bb.image_size // 8) ** 2 + 3


def test_vision_end_tokens_at_embedding_stage(inputs):
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("wb-tiny-vit")
    images, _ = inputs
    inj = bb.visual.add_injection("vpt", StaticTokens(2, bb.visual.width, stages=[EMBED], position=END))
    with torch.no_grad():
        ours = bb.encode_image(images)
        expected = ref_vision(bb.clip, images, embed_tokens=inj.params[0].expand(3, -1, -1))
    assert (ours - expected).abs().max() <= ATOL


def test_text_tokens_inserted_shift_pool_and_respect_causality(inputs):
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("wb-tiny-vit")
    _, tokens = inputs
    k = 4
    with torch.no_grad():
        clean = bb.forward_text(tokens, output_hidden_states=True)
        # inserted before block 1, overwritten before block 3
        inj = bb.text.add_injection("rep", StaticTokens(k, bb.text.width, stages=[1, 3]))
        got = bb.forward_text(tokens, output_hidden_states=True)
        expected = ref_text(bb.clip, tokens, insert=(1, inj.params[0].expand(3, -1, -1)),
                            replace=(3, inj.params[1].expand(3, -1, -1)))
    assert (got.features - expected).abs().max() <= ATOL
    assert got.last_hidden.shape[1] == tokens.shape[1] + k and got.token_slots["rep"] == slice(1, 1 + k)
    # the pooled token is the end-of-text token, now K positions later
    eot = tokens.argmax(-1) + k
    assert torch.allclose(got.pooled, got.last_hidden[torch.arange(3), eot])
    # causality: start-of-text never sees the inserted tokens; the tokens after them do
    assert torch.allclose(got.hidden_states[-1][:, 0], clean.hidden_states[-1][:, 0], atol=ATOL)
    assert (got.hidden_states[-1][:, 1 + k] - clean.hidden_states[-1][:, 1]).abs().max() > 1e-4


def test_inserted_text_tokens_see_only_earlier_positions():
    """Editing a token at position p changes no hidden state at positions < p (causal mask rebuilt)."""
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("wb-tiny-vit")
    tokens = bb.tokenize(["a photo of a green triangle"])
    inj = bb.text.add_injection("rep", StaticTokens(3, bb.text.width, stages=[0]))
    with torch.no_grad():
        a = bb.forward_text(tokens, output_hidden_states=True).hidden_states[-1]
        inj.params[0, 2] += 1.0  # last inserted token (position 3)
        b = bb.forward_text(tokens, output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)
    assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-4


def test_text_placeholder_context_and_deep_replacement(inputs):
    """CoOp-style context at the embedding stage + deep prompts replacing positions 1..K later."""
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("wb-tiny-vit")
    tokens = bb.tokenize(["X X X X a red circle.", "X X X X a blue square."])
    inj = bb.text.add_injection("ctx", StaticTokens(4, bb.text.width, stages=[EMBED, 2], placeholder=True))
    with torch.no_grad():
        ours = bb.encode_text(tokens)
        emb = bb.clip.token_embedding(tokens).clone()
        emb[:, 1:5] = inj.params[0]
        expected = ref_text(bb.clip, tokens, embeddings=emb, replace=(2, inj.params[1].expand(2, -1, -1)))
    assert (ours - expected).abs().max() <= ATOL


def test_embeddings_override_equals_context_injection():
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("wb-tiny-vit")
    tokens = bb.tokenize(["X X a photo of a dog."])
    ctx = torch.randn(1, 2, bb.text.width)
    with torch.no_grad():
        emb = bb.text.embed(tokens)
        emb = torch.cat([emb[:, :1], ctx, emb[:, 3:]], 1)
        via_embeddings = bb.forward_text(tokens, embeddings=emb).features
        inj = bb.text.add_injection("ctx", StaticTokens(2, bb.text.width, stages=[EMBED], placeholder=True))
        inj.params.copy_(ctx)
        via_injection = bb.encode_text(tokens)
    assert torch.allclose(via_embeddings, via_injection, atol=1e-6)


def test_hidden_states_tap(tiny, inputs):
    images, _ = inputs
    with torch.no_grad():
        out = tiny.forward_image(images, output_hidden_states=True)
    assert len(out.hidden_states) == tiny.visual.num_layers + 1
    assert torch.allclose(tiny.clip.visual.ln_post(out.hidden_states[-1]), out.last_hidden, atol=1e-6)
    assert torch.allclose(out.pooled @ tiny.clip.visual.proj, out.features, atol=1e-6)


def test_bad_extension_arguments_raise(tiny):
    with pytest.raises(ValueError, match="site"):
        tiny.visual.add_adapter(0, "post_mlp", nn.Identity())
    with pytest.raises(IndexError):
        tiny.visual.add_adapter(99, "pre_mlp", nn.Identity())
    with pytest.raises(ValueError, match="target"):
        tiny.text.add_lora(targets=("x",))


# ---- loading ------------------------------------------------------------------------------------

def test_offline_pretrained_tag_fails_fast_with_instructions(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        load_clip("ViT-B-16-quickgelu", "openai")
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "ViT-B-16-quickgelu" in message and "--pretrained" in message and "huggingface" in message


def test_unknown_model_and_tag_errors():
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_clip("no-such-model")
    with pytest.raises(ValueError, match="known tags"):
        load_clip("ViT-B-16-quickgelu", "no-such-tag")


def test_extensions_disabled_gives_plain_clip(inputs):
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("wb-tiny-vit")
    images, tokens = inputs
    _randomize_lora(bb.visual.add_lora(r=2) + bb.text.add_lora(r=2))
    bb.visual.add_injection("p", StaticTokens(2, bb.visual.width, stages=[0, 1], position=END))
    bb.text.add_injection("p", StaticTokens(2, bb.text.width, stages=[1]))
    bb.visual.add_adapter(0, "pre_mlp", Shift(bb.visual.width, 0.5))
    with torch.no_grad():
        adapted = bb.encode_image(images)
        with bb.extensions_disabled():
            plain_img, plain_txt = bb.encode_image(images), bb.encode_text(tokens)
        assert torch.equal(bb.encode_image(images), adapted)  # re-enabled afterwards
    assert (plain_img - bb.clip.encode_image(images)).abs().max() <= ATOL
    assert (plain_txt - bb.clip.encode_text(tokens)).abs().max() <= ATOL
    assert (adapted - plain_img).abs().max() > 1e-4
