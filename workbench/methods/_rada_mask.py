"""RAda's rational mask: the attention layer(s) at the end of a VLM, reusable in every setting.

For other settings (FFT, TTT, other VLMs): `RationalMask(dim)` takes image features f [B, D] and class
text features w [C, D] (any scale: both are L2-normalized here) and returns the adapted logits [B, C]
and, on request, the mask M [B, C, D]. It holds only the attention parameters; the caller owns the
towers (frozen or not) and the logit scale / bias.

    R[b, c, :]  = f̂_b ⊙ ŵ_c                                     rational matrix, B × C × D
    Q_i = P_i(q_i)  for the queries q ∈ {s^½·f̂ (per class), s^½·ŵ (per image), s·R}   (P_i: own Linear)
    K = P_k(s·R), V = P_v(s·R)                                   attention over the C classes, H heads
    A_i = softmax(Q_i Kᵀ / (√d_h · τ))                           "rows": over keys (the paper's Eq. 6, Vaswani)
                                                                 "flat": over all C×C pairs, × C (released)
    out = P_o( (1/|q|) Σ_i A_i V )                               P_o zero-initialized
    M = relu(1 + out),   logits = s · Σ_D M ⊙ R (+ b)             (M = 1 at init: zero-shot logits exactly)

`s` is the caller's logit scale (CLIP: exp(logit_scale); SigLIP: its scale, with b its bias). The input
scaling by s^½ / s is the released code's (khufia/RAda eft/trainers/rada.py, CustomCLIP.forward);
`input_scale=False` feeds the normalized features as they are (the paper does not say).

More layers (the paper's Appendix H, Eq. 16): layer l ≥ 2 takes the mask of the layers before it as
its only query (keys and values stay R), and the outputs add up residually:
M^l = relu(1 + Σ_{j≤l} out_j). Every output projection is zero-initialized, so M^L = 1 at init for any L.

Memory: R, K and V are B × C × D; the attention weights would be B × H × C × C. Query classes are
processed in chunks of `class_chunk` rows (exact: each chunk attends to every key), so the weights held
at once are B × H × chunk × C; when there is more than one chunk and gradients are on, each chunk is
recomputed in backward (torch.utils.checkpoint) so activations stay bounded too. `class_chunk=None`
picks the rows so that one query's weights stay under MAX_ATTENTION_BYTES (256 MB): one chunk for the
EFT's batch 1 at C = 1000 (32 MB), 16 rows for batch 512 (FFT). `workbench bench rada` measures both.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

QUERIES = ("image", "text", "rational")
MAX_ATTENTION_BYTES = 256 * 2**20  # class_chunk=None: query rows per chunk so one query's weights stay below this
SOFTMAX = ("rows", "flat")


class MultiQueryAttention(nn.Module):
    """One attention layer: several queries (own projections) on one key/value sequence; the output
    is the out-projection of the averaged attention weights times V."""

    def __init__(self, dim: int, heads: int = 8, n_queries: int = 3, softmax: str = "rows",
                 temperature: float = 1.0, bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"the feature dim {dim} must be divisible by heads={heads}; pick heads dividing {dim}")
        if softmax not in SOFTMAX:
            raise ValueError(f"softmax must be one of {SOFTMAX}, got {softmax!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.heads, self.head_dim, self.softmax, self.temperature = heads, dim // heads, softmax, temperature
        self.q_projs = nn.ModuleList(nn.Linear(dim, dim, bias=bias) for _ in range(n_queries))
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        nn.init.zeros_(self.out_proj.weight)
        if bias:
            nn.init.zeros_(self.out_proj.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, H, N, d_h]
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def _scores(self, i: int, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q = self._split(self.q_projs[i](query))
        return q @ keys.transpose(-2, -1) / (math.sqrt(self.head_dim) * self.temperature)

    def forward(self, queries: Sequence[torch.Tensor], kv: torch.Tensor, class_chunk: int | None = None) -> torch.Tensor:
        """queries: each [B, C, D] (or broadcastable to it); kv: [B, C, D] -> out [B, C, D]."""
        if len(queries) != len(self.q_projs):
            raise ValueError(f"this layer takes {len(self.q_projs)} queries, got {len(queries)}")
        batch, n, dim = kv.shape
        queries = [q.expand(batch, n, dim) for q in queries]
        keys, values = self._split(self.k_proj(kv)), self._split(self.v_proj(kv))
        rows = int(class_chunk) if class_chunk else max(1, MAX_ATTENTION_BYTES // (batch * self.heads * n * 4))
        chunk = min(rows, n)
        lse = self._flat_normalizers(queries, keys, chunk) if self.softmax == "flat" else None
        use_checkpoint = torch.is_grad_enabled() and chunk < n
        outs = []
        for start in range(0, n, chunk):
            part = [q[:, start:start + chunk] for q in queries]
            if use_checkpoint:
                outs.append(checkpoint(self._chunk_out, keys, values, lse, n, *part, use_reentrant=False))
            else:
                outs.append(self._chunk_out(keys, values, lse, n, *part))
        return torch.cat(outs, dim=1)

    def _flat_normalizers(self, queries, keys, chunk: int) -> list[torch.Tensor]:
        """Per query, log Σ exp(score) over all C×C pairs of each head: [B, H, 1, 1] (two-pass, chunked)."""
        n = keys.shape[2]
        result = []
        for i, q in enumerate(queries):
            parts = [torch.logsumexp(self._scores(i, q[:, s:s + chunk], keys).flatten(2), dim=-1)
                     for s in range(0, n, chunk)]
            result.append(torch.logsumexp(torch.stack(parts, dim=-1), dim=-1)[..., None, None])
        return result

    def _chunk_out(self, keys, values, lse, n_classes, *queries):
        weights = 0
        for i, q in enumerate(queries):
            scores = self._scores(i, q, keys)
            if lse is None:
                weights = weights + scores.softmax(dim=-1)
            else:  # the released form: softmax over the whole C×C map, rescaled by C
                weights = weights + torch.exp(scores - lse[i]) * n_classes
        mixed = (weights / len(queries)) @ values  # [B, H, chunk, d_h]
        mixed = mixed.transpose(1, 2).reshape(mixed.shape[0], mixed.shape[2], -1)
        return self.out_proj(mixed)


class ElementMLP(nn.Module):
    """Table 4's "MLP for M": out = W2 relu(W1 x + b1) + b2 on every (image, class) row of x = s·R on its
    own (no interaction between classes); W2, b2 zero, so M = 1 at init. Hidden width D (our choice)."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, queries, kv, class_chunk=None):
        return self.fc2(torch.relu(self.fc1(kv)))


class RationalMask(nn.Module):
    """The rational adapter: mask attention layer(s) + the masked logits (see the module docstring).
    `mask_function="mlp"` replaces the attention by `ElementMLP` (Table 4's ablation; `layers` must be 1)."""

    def __init__(self, dim: int, heads: int = 8, layers: int = 1, queries: Sequence[str] = QUERIES,
                 softmax: str = "rows", temperature: float = 1.0, input_scale: bool = True,
                 class_chunk: int | None = None, mask_function: str = "attention"):
        super().__init__()
        if mask_function not in ("attention", "mlp"):
            raise ValueError(f"mask_function must be 'attention' or 'mlp', got {mask_function!r}")
        if mask_function == "mlp":
            if layers != 1:
                raise ValueError("mask_function='mlp' has one layer; set layers=1")
            self.queries, self.input_scale, self.class_chunk = (), input_scale, class_chunk
            self.layers = nn.ModuleList([ElementMLP(dim)])
            return
        queries = tuple(queries)
        if not queries or any(q not in QUERIES for q in queries) or len(set(queries)) != len(queries):
            raise ValueError(f"queries must be distinct names from {QUERIES}, got {queries}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        if class_chunk is not None and class_chunk < 1:
            raise ValueError(f"class_chunk must be >= 1 or None, got {class_chunk}")
        self.queries, self.input_scale, self.class_chunk = queries, input_scale, class_chunk
        self.layers = nn.ModuleList(
            [MultiQueryAttention(dim, heads, len(queries), softmax, temperature)]
            + [MultiQueryAttention(dim, heads, 1, softmax, temperature) for _ in range(layers - 1)])

    @staticmethod
    def rational_matrix(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """R = f̂ ⊙ ŵ for every (image, class): [B, C, D]."""
        return F.normalize(image_features, dim=-1)[:, None, :] * F.normalize(text_features, dim=-1)[None, :, :]

    def mask(self, image_features: torch.Tensor, text_features: torch.Tensor, scale) -> torch.Tensor:
        """M [B, C, D] for images [B, D] and classes [C, D]; `scale` the logit scale s."""
        img = F.normalize(image_features, dim=-1)
        txt = F.normalize(text_features, dim=-1)
        rational = img[:, None, :] * txt[None, :, :]
        s = torch.as_tensor(scale, dtype=rational.dtype, device=rational.device).detach() if self.input_scale else 1.0
        root = s ** 0.5 if self.input_scale else 1.0
        named = {"image": root * img[:, None, :], "text": root * txt[None, :, :], "rational": s * rational}
        kv = s * rational
        total = self.layers[0]([named[q] for q in self.queries], kv, self.class_chunk)  # (ElementMLP: kv only)
        mask = torch.relu(1 + total)
        for layer in self.layers[1:]:
            total = total + layer([mask], kv, self.class_chunk)
            mask = torch.relu(1 + total)
        return mask

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, scale, bias=None,
                return_mask: bool = False):
        """logits [B, C] = s · Σ_D M ⊙ R (+ bias); with `return_mask`, (logits, M)."""
        mask = self.mask(image_features, text_features, scale)
        rational = self.rational_matrix(image_features, text_features)
        logits = torch.as_tensor(scale, dtype=rational.dtype, device=rational.device) * (mask * rational).sum(-1)
        if bias is not None:
            logits = logits + bias
        return (logits, mask) if return_mask else logits
