"""Token injection: the extension point for prompts and inserted tokens in either tower."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

EMBED = -1  # stage before block 0 (text: before positional embeddings; vision: after them, before ln_pre)

AFTER_FIRST = "after_first"  # right after CLS (vision) / start-of-text (text)
END = "end"  # appended after the last token (vision only)


class TokenInjection(nn.Module):
    """Supplies K tokens to a tower before chosen blocks.

    The first stage in `stages` inserts the tokens at `position` (the sequence grows by K; in the
    text tower the causal mask is rebuilt and the end-of-text index shifts by K); later stages
    overwrite the same K positions. With `placeholder=True` the K slots already exist in the input
    (positions 1..K, e.g. "X X X X" written into a text prompt) and every stage overwrites them.

    Stages are block indices (0-based input of block i) or EMBED. Subclasses implement `tokens`.
    """

    def __init__(self, num_tokens: int, stages: Iterable[int], position: str = AFTER_FIRST,
                 placeholder: bool = False):
        super().__init__()
        if position not in (AFTER_FIRST, END):
            raise ValueError(f"position must be {AFTER_FIRST!r} or {END!r}, got {position!r}")
        if placeholder and position != AFTER_FIRST:
            raise ValueError("placeholder tokens must sit right after the first token")
        self.num_tokens = int(num_tokens)
        self.stages = sorted(set(int(s) for s in stages))
        if not self.stages:
            raise ValueError("a token injection needs at least one stage")
        self.position = position
        self.placeholder = placeholder

    def tokens(self, stage: int, batch_size: int) -> torch.Tensor:
        """Tokens for `stage`: shape [batch_size or 1, num_tokens, width]."""
        raise NotImplementedError


class StaticTokens(TokenInjection):
    """Learnable tokens, one set per stage (deep prompts) or one set shared by all stages."""

    def __init__(self, num_tokens: int, width: int, stages: Iterable[int], position: str = AFTER_FIRST,
                 placeholder: bool = False, shared: bool = False, init_std: float = 0.02):
        super().__init__(num_tokens, stages, position, placeholder)
        count = 1 if shared else len(self.stages)
        self.shared = shared
        self.params = nn.Parameter(torch.randn(count, num_tokens, width) * init_std)

    def tokens(self, stage: int, batch_size: int) -> torch.Tensor:
        index = 0 if self.shared else self.stages.index(stage)
        return self.params[index].unsqueeze(0)


class CallableTokens(TokenInjection):
    """Tokens computed by a function `fn(stage, batch_size)`; for methods whose tokens are derived
    from other parameters (MMRL's mapped representation space, MaPLe's coupled prompts)."""

    def __init__(self, fn, num_tokens: int, stages: Iterable[int], position: str = AFTER_FIRST,
                 placeholder: bool = False):
        super().__init__(num_tokens, stages, position, placeholder)
        self.fn = fn

    def tokens(self, stage: int, batch_size: int) -> torch.Tensor:
        return self.fn(stage, batch_size)


class InjectionState:
    """Tracks where each injection's tokens sit while one forward pass runs."""

    def __init__(self, seq_len: int, injections: dict[str, TokenInjection]):
        self.seq_len = seq_len
        self.slots: dict[str, slice] = {}
        self.inserted_after_first = 0  # tokens inserted right after the first token
        for name, inj in injections.items():
            if inj.placeholder:
                self.slots[name] = slice(1, 1 + inj.num_tokens)

    def apply(self, x: torch.Tensor, stage: int, injections: dict[str, TokenInjection]) -> torch.Tensor:
        for name, inj in injections.items():
            if stage not in inj.stages:
                continue
            tokens = inj.tokens(stage, x.shape[0]).to(x.dtype)
            if tokens.shape[-2:] != (inj.num_tokens, x.shape[-1]):
                raise ValueError(f"injection {name!r} gave tokens of shape {tuple(tokens.shape)}, "
                                 f"expected [B, {inj.num_tokens}, {x.shape[-1]}]")
            tokens = tokens.expand(x.shape[0], -1, -1)
            if name in self.slots:
                s = self.slots[name]
                x = torch.cat([x[:, : s.start], tokens, x[:, s.stop:]], dim=1)
            else:
                x = self._insert(x, name, inj, tokens)
        return x

    def _insert(self, x, name, inj, tokens):
        k = inj.num_tokens
        if inj.position == END:
            self.slots[name] = slice(x.shape[1], x.shape[1] + k)
            return torch.cat([x, tokens], dim=1)
        # after the first token: everything already at position >= 1 moves right by k
        for other, s in self.slots.items():
            if s.start >= 1:
                self.slots[other] = slice(s.start + k, s.stop + k)
        self.slots[name] = slice(1, 1 + k)
        self.inserted_after_first += k
        return torch.cat([x[:, :1], tokens, x[:, 1:]], dim=1)
