"""Towers without extension points: open_clip's own encode_image / encode_text for towers the
workbench's forward passes do not cover (ResNet image towers, timm towers, custom text towers).

Methods that read only the final features (zero-shot, linear probe, feature adapters, RAda) work on
them; attaching any extension (tokens, attention bias, adapters, LoRA) or reading tower internals
raises an error that says why and what to use instead."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .towers import TowerOutput


class PlainTower(nn.Module):
    """A tower that only encodes: `tower(x).features` is open_clip's encoder output."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], name: str, reason: str):
        super().__init__()
        self._encode = encode
        self.tower_name, self.reason = name, reason
        self.extensions_enabled = True

    def _refuse(self, what: str):
        raise NotImplementedError(
            f"the {self.tower_name} tower has no {what}: {self.reason}. It runs open_clip's own encoder, so "
            "only methods that read the final features work with it; use a ViT backbone for methods that "
            "attach tokens, adapters or LoRA to the towers")

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False, **_) -> TowerOutput:
        if output_hidden_states:
            self._refuse("hidden states")
        feats = self._encode(x)
        return TowerOutput(features=feats, pooled=feats, last_hidden=feats[:, None, :])

    def has_extensions(self) -> bool:
        return False

    def clear_extensions(self) -> None:
        pass

    def add_injection(self, *args, **kwargs):
        self._refuse("token injection point")

    def add_attention_bias(self, *args, **kwargs):
        self._refuse("attention-bias point")

    def add_adapter(self, *args, **kwargs):
        self._refuse("adapter sites")

    def add_lora(self, *args, **kwargs):
        self._refuse("LoRA targets")

    def embed(self, *args, **kwargs):
        self._refuse("token embedding stage")

    @property
    def width(self):
        self._refuse("transformer width")
