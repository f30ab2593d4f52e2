"""Low-rank adapters for the attention projections (q, k, v, o) of open_clip blocks."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRA(nn.Module):
    """delta(x) = scaling * B(A(dropout(x))); A kaiming-uniform, B zero, so it starts as a no-op.

    `scaling` is alpha / r ("linear", as in the LoRA paper) or alpha / sqrt(r) ("sqrt", rsLoRA and
    CLIP-LoRA's released code).
    """

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float = 1.0,
                 dropout: float = 0.0, scaling: str = "linear"):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got {r}")
        if scaling not in ("linear", "sqrt"):
            raise ValueError(f"scaling must be 'linear' or 'sqrt', got {scaling!r}")
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r if scaling == "linear" else alpha / math.sqrt(r)
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        return F.linear(F.linear(self.dropout(x), self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scaling
