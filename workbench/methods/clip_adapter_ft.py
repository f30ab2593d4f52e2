"""CLIP-Adapter with LP-FT in full fine-tuning (RAda Table 6, "Adapter†"): CLIP-Adapter's residual
bottleneck on the image feature, in front of the text-initialized head of `full_finetune`.

    f' = α · MLP(f) + (1 − α) · f,    logits = W · f'/‖f'‖ + b,   W₀ = s · T, b₀ = 0

Stage 1 ("adapter") trains the adapter alone, the head staying the frozen class text features as in
CLIP-Adapter; stage 2 ("all") trains the image tower, the adapter and the head.

Facts [paper: RAda Appendix, Table 6]: "the same training strategy as LP-FT": the adapter first, then all
learnable parameters initialized from the adapter after 5 epochs, "the same settings as RAda", the learning
rate scaled by factors relative to RAda's and chosen on the ID evaluation set (the factors are not given).
CLIP-Adapter's own facts (reduction 4, α = 0.2, no biases) come from `clip_adapter` [code].
Choice [decision]: the presets use RAda's rates (0.004 then 4e-6); sweep method.lp_lr / train.lr for the
paper's learning-rate search.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .base import register_method
from .clip_adapter import bottleneck_mlp
from .finetune import FinetuneConfig, FullFinetuneMethod, _presets


@dataclass
class CLIPAdapterFTConfig(FinetuneConfig):
    reduction: int = field(default=4, metadata={"help": "bottleneck width D / reduction (released 4)"})
    ratio: float = field(default=0.2, metadata={"help": "α of the residual blend (released 0.2)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reduction < 1 or not 0 <= self.ratio <= 1:
            raise ValueError(f"method.reduction must be >= 1 and method.ratio in [0, 1], got {self.reduction}, "
                             f"{self.ratio}")


@register_method
class CLIPAdapterFT(FullFinetuneMethod):
    name = "clip_adapter_ft"
    paper_names = ("Adapter†",)
    Config = CLIPAdapterFTConfig
    stages = ("adapter", "all")
    presets = _presets(2, {"reduction": 4, "ratio": 0.2},
                       "RAda Table 6 / Appendix: CLIP-Adapter (r=4, α=0.2) trained like LP-FT with RAda's FFT settings "
                       "(5 + 5 epochs, lr 0.004 then 4e-6, AdamW wd 0.1, batch 512)")

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        if backbone.embed_dim // config.reduction < 1:
            raise ValueError(f"method.reduction must be at most {backbone.embed_dim}, got {config.reduction}")
        self.adapter = bottleneck_mlp(backbone.embed_dim, config.reduction).to(self.head.weight.device)

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters())

    def stage_parameters(self, key: str) -> list[nn.Parameter]:
        if key == "adapter":
            return self.extra_parameters()
        return super().stage_parameters(key)

    def features(self, inputs):
        f = super().features(inputs)
        ratio = self.config.ratio
        return ratio * self.adapter(f) + (1 - ratio) * f
