"""Forward passes of open_clip's vision and text towers, re-implemented over open_clip's own modules
and weights, with extension points. With nothing attached they reproduce open_clip's outputs.

Extension points, per tower:
- token injections (`tokens.TokenInjection`) before any block or at the embedding stage;
- residual adapters on the LayerNorm outputs feeding attention ("pre_attn") and the MLP ("pre_mlp");
- LoRA on the q, k, v (split out of `in_proj_weight`) and o projections of any block;
- attention biases (`AttentionBias`): additive terms on the attention logits of chosen blocks, per
  call (e.g. HPT's relationship-structured bias); the text tower's causal mask is kept;
- taps: every block's input tokens, the final tokens after the last LayerNorm, pooled features
  before and after the projection.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, Transformer
from torch import nn

from .lora import LoRA
from .tokens import EMBED, InjectionState, TokenInjection

ADAPTER_SITES = ("pre_attn", "pre_mlp")
LORA_TARGETS = ("q", "k", "v", "o")


@dataclass
class TowerOutput:
    features: torch.Tensor  # pooled and projected: what open_clip's encode_image / encode_text return
    pooled: torch.Tensor  # pooled after the final LayerNorm, before the projection
    last_hidden: torch.Tensor  # all tokens after the final LayerNorm [B, L, width]
    token_slots: dict[str, slice] = field(default_factory=dict)  # where injected tokens sit in last_hidden
    hidden_states: list[torch.Tensor] | None = None  # input of each block, then the last block's output


class AttentionBias(nn.Module):
    """Adds `bias(layer, x)` to the attention logits q·kᵀ/√d of blocks `layers` (0-based), before the
    softmax and on top of the tower's own mask (the text tower's causal −inf entries stay −inf).

    `x` is the block's input [B, L, width]; the bias is [L, L], [B or 1, L, L] (shared by every head) or
    [B or 1, heads or 1, L, L]. A bias of zeros leaves the tower's outputs unchanged. Subclasses
    implement `bias`; `CallableBias` wraps a function."""

    def __init__(self, layers):
        super().__init__()
        self.layers = sorted(set(int(i) for i in layers))
        if not self.layers:
            raise ValueError("an attention bias needs at least one layer")

    def bias(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class CallableBias(AttentionBias):
    """An attention bias computed by `fn(layer, x)` (state such as which structure each sequence has
    is the caller's)."""

    def __init__(self, fn, layers):
        super().__init__(layers)
        self.fn = fn

    def bias(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.fn(layer, x)


def _bias_4d(name: str, bias: torch.Tensor, batch: int, heads: int, length: int) -> torch.Tensor:
    given = tuple(bias.shape)
    if bias.dim() == 2:
        bias = bias.unsqueeze(0)
    if bias.dim() == 3:
        bias = bias.unsqueeze(1)
    if (bias.dim() != 4 or bias.shape[-2:] != (length, length) or bias.shape[0] not in (1, batch)
            or bias.shape[1] not in (1, heads)):
        raise ValueError(f"attention bias {name!r} has shape {given}; expected [L, L], [B, L, L] or "
                         f"[B, heads, L, L] with L={length}, B={batch} (or 1), heads={heads} (or 1)")
    return bias


class BlockExtensions(nn.Module):
    """What is attached to one residual block: adapters per site and LoRA per projection."""

    def __init__(self):
        super().__init__()
        self.adapters = nn.ModuleDict({site: nn.ModuleList() for site in ADAPTER_SITES})
        self.lora = nn.ModuleDict()

    def is_empty(self) -> bool:
        return not self.lora and not any(len(a) for a in self.adapters.values())


_NO_EXTENSIONS = BlockExtensions()


def _attention(block: ResidualAttentionBlock, x: torch.Tensor, attn_mask: torch.Tensor | None,
               ext: BlockExtensions) -> torch.Tensor:
    mha = block.attn
    width, heads = mha.embed_dim, mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
    q, k, v = F.linear(x, w_q, b_q), F.linear(x, w_k, b_k), F.linear(x, w_v, b_v)
    if ext.lora:
        if "q" in ext.lora:
            q = q + ext.lora["q"](x)
        if "k" in ext.lora:
            k = k + ext.lora["k"](x)
        if "v" in ext.lora:
            v = v + ext.lora["v"](x)
    batch, length, _ = x.shape

    def heads_first(t):
        return t.view(batch, length, heads, width // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v), attn_mask=attn_mask)
    out = out.transpose(1, 2).reshape(batch, length, width)
    result = F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
    if "o" in ext.lora:
        result = result + ext.lora["o"](out)
    return result


def block_forward(block: ResidualAttentionBlock, x: torch.Tensor, attn_mask: torch.Tensor | None,
                  ext: BlockExtensions) -> torch.Tensor:
    h = block.ln_1(x)
    for adapter in ext.adapters["pre_attn"]:
        h = adapter(h)
    x = x + block.ls_1(_attention(block, h, attn_mask, ext))
    h = block.ln_2(x)
    for adapter in ext.adapters["pre_mlp"]:
        h = adapter(h)
    return x + block.ls_2(block.mlp(h))


def _check_transformer(transformer: Transformer, tower: str) -> None:
    if not getattr(transformer, "batch_first", True):
        raise NotImplementedError(f"{tower}: only batch-first open_clip transformers are supported")
    for blk in transformer.resblocks:
        if type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv"):
            raise NotImplementedError(
                f"{tower}: block type {type(blk).__name__} is not supported by the workbench backbone "
                "(only open_clip's default ResidualAttentionBlock)")


class _Tower(nn.Module):
    """Shared machinery: per-block extensions, injections, LoRA/adapter attachment."""

    def __init__(self, transformer: Transformer, name: str):
        super().__init__()
        _check_transformer(transformer, name)
        self.tower_name = name
        self.width = transformer.width
        self.num_layers = len(transformer.resblocks)
        self.extensions = nn.ModuleList([BlockExtensions() for _ in range(self.num_layers)])
        self.injections = nn.ModuleDict()
        self.attention_biases = nn.ModuleDict()
        self.extensions_enabled = True

    # -- extension points ------------------------------------------------------------------
    def _layers(self, layers) -> list[int]:
        layers = range(self.num_layers) if layers is None else layers
        out = []
        for i in layers:
            if not -self.num_layers <= i < self.num_layers:
                raise IndexError(f"{self.tower_name} has {self.num_layers} blocks; layer {i} does not exist")
            out.append(i % self.num_layers)
        return out

    def add_injection(self, name: str, injection: TokenInjection) -> TokenInjection:
        if name in self.injections:
            raise KeyError(f"{self.tower_name} already has an injection named {name!r}")
        bad = [s for s in injection.stages if s != EMBED and not 0 <= s < self.num_layers]
        if bad:
            raise IndexError(f"{self.tower_name}: injection stages {bad} outside 0..{self.num_layers - 1}")
        self.injections[name] = injection
        return injection

    def add_attention_bias(self, name: str, bias: AttentionBias) -> AttentionBias:
        """Add `bias.bias(layer, x)` to the attention logits of blocks `bias.layers` (see AttentionBias)."""
        if not isinstance(bias, AttentionBias):
            raise TypeError(f"add_attention_bias needs an AttentionBias (e.g. CallableBias(fn, layers)), "
                            f"got {type(bias).__name__}")
        if name in self.attention_biases:
            raise KeyError(f"{self.tower_name} already has an attention bias named {name!r}")
        bias.layers = self._layers(bias.layers)
        self.attention_biases[name] = bias
        return bias

    def add_adapter(self, layer: int, site: str, adapter: nn.Module) -> nn.Module:
        """`adapter` maps the LayerNorm output h to h' (residual adapters return h + delta(h))."""
        if site not in ADAPTER_SITES:
            raise ValueError(f"adapter site must be one of {ADAPTER_SITES}, got {site!r}")
        (layer,) = self._layers([layer])
        self.extensions[layer].adapters[site].append(adapter)
        return adapter

    def add_lora(self, targets=("q", "k", "v"), layers=None, r: int = 2, alpha: float = 1.0,
                 dropout: float = 0.0, scaling: str = "linear") -> list[LoRA]:
        added = []
        for t in targets:
            if t not in LORA_TARGETS:
                raise ValueError(f"LoRA target must be one of {LORA_TARGETS}, got {t!r}")
        for i in self._layers(layers):
            for t in targets:
                if t in self.extensions[i].lora:
                    raise KeyError(f"{self.tower_name} block {i} already has LoRA on {t}")
                lora = LoRA(self.width, self.width, r=r, alpha=alpha, dropout=dropout, scaling=scaling)
                self.extensions[i].lora[t] = lora.to(self._param_device_dtype()[0])
                added.append(lora)
        return added

    @torch.no_grad()
    def merge_lora(self) -> None:
        """Fold every LoRA delta into the base weights (inference speed); `unmerge_lora` undoes it."""
        self._fold_lora(sign=1.0)

    @torch.no_grad()
    def unmerge_lora(self) -> None:
        self._fold_lora(sign=-1.0)

    def _fold_lora(self, sign: float) -> None:
        for block, ext in zip(self.transformer.resblocks, self.extensions):
            for t, lora in ext.lora.items():
                if lora.merged == (sign > 0):
                    continue
                delta = sign * lora.delta_weight().to(block.attn.in_proj_weight.dtype)
                if t == "o":
                    block.attn.out_proj.weight += delta
                else:
                    index = "qkv".index(t)
                    block.attn.in_proj_weight[index * self.width:(index + 1) * self.width] += delta
                lora.merged = sign > 0

    def has_extensions(self) -> bool:
        """Whether anything is attached (an injection, an attention bias, an adapter, LoRA), enabled or not."""
        return (bool(len(self.injections)) or bool(len(self.attention_biases))
                or not all(ext.is_empty() for ext in self.extensions))

    def clear_extensions(self) -> None:
        if any(lora.merged for ext in self.extensions for lora in ext.lora.values()):
            self.unmerge_lora()
        self.extensions = nn.ModuleList([BlockExtensions() for _ in range(self.num_layers)])
        self.injections = nn.ModuleDict()
        self.attention_biases = nn.ModuleDict()

    def _param_device_dtype(self):
        p = next(self.transformer.parameters())
        return p.device, p.dtype

    # -- forward helpers -------------------------------------------------------------------
    def _active_injections(self) -> dict[str, TokenInjection]:
        return dict(self.injections.items()) if self.extensions_enabled else {}

    def _block_extensions(self, i: int) -> BlockExtensions:
        if self.extensions_enabled:
            return self.extensions[i]
        if any(lora.merged for lora in self.extensions[i].lora.values()):
            raise RuntimeError("cannot disable extensions while LoRA is merged; call unmerge_lora() first")
        return _NO_EXTENSIONS

    def _attention_mask(self, i: int, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The tower's own mask (None or [L, L]) plus every active attention bias of block i."""
        if not self.extensions_enabled:
            return mask
        heads = self.transformer.resblocks[i].attn.num_heads
        for name, provider in self.attention_biases.items():
            if i in provider.layers:
                bias = _bias_4d(name, provider.bias(i, x), x.shape[0], heads, x.shape[1]).to(x.dtype)
                mask = bias if mask is None else mask + bias
        return mask

    def _run_blocks(self, x, state: InjectionState, mask_fn, output_hidden_states: bool):
        hidden = [] if output_hidden_states else None
        injections = self._active_injections()
        for i, block in enumerate(self.transformer.resblocks):
            if injections:
                x = state.apply(x, i, injections)
            if hidden is not None:
                hidden.append(x)
            mask = self._attention_mask(i, x, mask_fn(x.shape[1], x))
            x = block_forward(block, x, mask, self._block_extensions(i))
        if hidden is not None:
            hidden.append(x)
        return x, hidden


class VisionTower(_Tower):
    def __init__(self, visual: nn.Module):
        for attr in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "ln_post", "transformer"):
            if not hasattr(visual, attr):
                raise NotImplementedError(
                    f"vision tower {type(visual).__name__} is not an open_clip VisionTransformer; "
                    "the workbench backbone supports ViT image towers only")
        if getattr(visual, "attn_pool", None) is not None:
            raise NotImplementedError("vision towers with attentional pooling are not supported")
        if visual.pool_type not in ("tok", "avg"):
            raise NotImplementedError(f"vision pool type {visual.pool_type!r} is not supported")
        super().__init__(visual.transformer, "visual")
        self.visual = visual
        self.transformer = visual.transformer
        self.image_size = visual.image_size

    def forward(self, images: torch.Tensor, output_hidden_states: bool = False) -> TowerOutput:
        v = self.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        num_patches = x.shape[1] - 1
        x = v.patch_dropout(x)
        injections = self._active_injections()
        state = InjectionState(x.shape[1], injections)
        if injections:
            x = state.apply(x, EMBED, injections)
        x = v.ln_pre(x)
        x, hidden = self._run_blocks(x, state, lambda length, t: None, output_hidden_states)

        if v.final_ln_after_pool:
            raise NotImplementedError("final_ln_after_pool vision towers are not supported")
        x = v.ln_post(x)
        if v.pool_type == "tok":
            pooled = x[:, 0]
        else:  # mean over the image patches only, never over injected tokens
            start = 1 + state.inserted_after_first
            pooled = x[:, start:start + num_patches].mean(dim=1)
        features = pooled @ v.proj if v.proj is not None else pooled
        return TowerOutput(features, pooled, x, dict(state.slots), hidden)


class TextTower(_Tower):
    def __init__(self, clip: nn.Module):
        for attr in ("token_embedding", "positional_embedding", "ln_final", "transformer", "attn_mask"):
            if not hasattr(clip, attr):
                raise NotImplementedError(
                    f"{type(clip).__name__} has no built-in open_clip text tower (HF text towers are not supported)")
        super().__init__(clip.transformer, "text")
        self.clip = clip
        self.transformer = clip.transformer
        self.context_length = clip.context_length
        self.pool_type = clip.text_pool_type
        self.eos_id = getattr(clip, "text_eos_id", None)
        if self.pool_type not in ("argmax", "eos", "first", "last"):
            raise NotImplementedError(f"text pool type {self.pool_type!r} is not supported")

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L, width] before positional embeddings (for learnable text context)."""
        return self.clip.token_embedding(tokens).to(self.transformer.get_cast_dtype())

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the pooled token per sequence, before any insertion."""
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        fill = 0 if self.pool_type == "first" else tokens.shape[1] - 1
        return torch.full((tokens.shape[0],), fill, dtype=torch.long, device=tokens.device)

    @staticmethod
    def causal_mask(length: int, device, dtype) -> torch.Tensor:
        return torch.full((length, length), float("-inf"), device=device, dtype=dtype).triu_(1)

    def forward(self, tokens: torch.Tensor, embeddings: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> TowerOutput:
        """Encode tokenized text. `embeddings` (from `embed`, possibly edited) replaces the token
        embeddings; `tokens` still decides the pooled (end-of-text) position."""
        x = self.embed(tokens) if embeddings is None else embeddings
        if x.shape[0] != tokens.shape[0]:
            raise ValueError(f"embeddings batch {x.shape[0]} != tokens batch {tokens.shape[0]}")
        injections = self._active_injections()
        state = InjectionState(x.shape[1], injections)
        if injections:
            x = state.apply(x, EMBED, injections)
        if x.shape[1] != self.clip.positional_embedding.shape[0]:
            raise ValueError("text embeddings must have context_length tokens at the embedding stage; "
                             "insert extra text tokens at a block stage instead")
        x = x + self.clip.positional_embedding.to(x.dtype)
        masks: dict[int, torch.Tensor] = {}

        def mask_fn(length, t):
            if length not in masks:
                masks[length] = self.causal_mask(length, t.device, t.dtype)
            return masks[length]

        x, hidden = self._run_blocks(x, state, mask_fn, output_hidden_states)
        x = self.clip.ln_final(x)
        index = self.pool_index(tokens)
        if self.pool_type in ("argmax", "eos", "last"):
            index = index + state.inserted_after_first
        pooled = x[torch.arange(x.shape[0], device=x.device), index]
        proj = self.clip.text_projection
        if proj is None:
            features = pooled
        elif isinstance(proj, nn.Linear):
            features = proj(pooled)
        else:
            features = pooled @ proj
        return TowerOutput(features, pooled, x, dict(state.slots), hidden)
