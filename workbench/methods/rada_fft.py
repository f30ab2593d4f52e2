"""RAda in full fine-tuning (RAda Table 1's "RAda" and "RAda-FT" rows): the rational mask of `rada`
(`_rada_mask.RationalMask`) on top of the image tower, the text encoder replaced by a linear classifier
W initialized from the class text features T.

    R = f̂ ⊙ Ŵ_c,   M = relu(1 + out(f̂, Ŵ, R)),   logits = s · Σ_D M ⊙ R        (M = 1 at init: zero-shot)

Stage 1 ("mask", the paper's "RAda", Eq. 14): the mask attention with CE + λ·‖M − 1‖² (the image tower
frozen); stage 2 ("all", "RAda-FT", Eq. 15): image tower, mask and classifier with CE only — the mask
regularization applies only while the pretrained encoders are frozen (paper §3, after Eq. 7).

Facts [paper: §4.1 and Appendix C]: batch 512; RAda 10 epochs at lr 0.004; RAda-FT starts from RAda after
5 epochs and trains 5 more at lr 4e-6; AdamW, weight decay 0.1 and warm-up from WiSE-FT. Only the EFT code
is released; the mask options (softmax, input scaling, regularization form, layers) are `rada`'s.
Choices [decision]: λ = 1.5 (the paper's EFT value; FFT gives none); the classifier stays fixed in stage 1
(`stage1_classifier=True` trains it too: Eq. 14 does not say); the per-iteration cosine without the linear
warm-up, as for the other FFT baselines.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._rada_mask import QUERIES, RationalMask
from .base import LossOutput, Preset, register_method
from .finetune import TOY_LP, TOY_TRAIN, TOY_TWO_STAGE, TWO_STAGE_PAPER, FinetuneConfig, FullFinetuneMethod
from .rada import mask_regularization


@dataclass
class RAdaFFTConfig(FinetuneConfig):
    finetune_all: bool = field(default=True, metadata={
        "help": "True: RAda-FT (mask for lp_epochs, then everything); False: the mask alone (the 'RAda' row)"})
    stage1_classifier: bool = field(default=False, metadata={
        "help": "also train the classifier W in the mask stage (the paper does not say; default: fixed)"})
    heads: int = field(default=8, metadata={"help": "attention heads of the mask layer (paper: 8)"})
    layers: int = field(default=1, metadata={"help": "mask attention layers"})
    queries: tuple[str, ...] = field(default=QUERIES, metadata={"help": "queries of the first layer"})
    softmax: str = field(default="rows", metadata={"help": "rows (paper) | flat (released EFT code)"})
    input_scale: bool = field(default=True, metadata={"help": "released input scaling by s^½ / s"})
    reg_loss: str = field(default="l2", metadata={"help": "mask regularization: l2 (paper) | l1 | linf (released)"})
    reg_weight: float = field(default=1.5, metadata={"help": "λ (the paper's EFT 1.5; FFT gives none)"})
    class_chunk: int | None = field(default=256, metadata={"help": "query classes per attention chunk (memory)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.queries = tuple(self.queries)
        if self.reg_weight < 0:
            raise ValueError(f"method.reg_weight must be >= 0, got {self.reg_weight}")


@register_method
class RAdaFFT(FullFinetuneMethod):
    name = "rada_fft"
    paper_names = ("RAda-FT",)
    Config = RAdaFFTConfig
    presets = {
        "default": Preset({"finetune_all": True, "lp_epochs": 5, "lp_lr": 0.004, "lp_weight_decay": 0.1},
                          dict(TWO_STAGE_PAPER),
                          "RAda Appendix C: RAda-FT = the mask 5 epochs at 0.004, then everything 5 epochs at 4e-6 "
                          "(batch 512, AdamW wd 0.1)"),
        "mask_only": Preset({"finetune_all": False}, {**TWO_STAGE_PAPER, "lr": 0.004, "epochs": 10},
                            "RAda Appendix C, Eq. 14: the mask alone, 10 epochs at lr 0.004 (Table 1's RAda row)"),
        "toy": Preset({"finetune_all": True, **TOY_LP}, dict(TOY_TWO_STAGE), "embedded toy world, CPU budget"),
        "toy_mask_only": Preset({"finetune_all": False}, {**TOY_TRAIN, "lr": TOY_LP["lp_lr"]},
                                "embedded toy world: the mask alone"),
    }

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        self.stages = ("mask", "all") if config.finetune_all else ("mask",)
        self.head.bias.requires_grad_(False)  # not part of RAda's logits (DDP refuses parameters without gradients)
        self.mask = RationalMask(backbone.embed_dim, heads=config.heads, layers=config.layers,
                                 queries=config.queries, softmax=config.softmax, input_scale=config.input_scale,
                                 class_chunk=config.class_chunk).to(self.head.weight.device)

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.mask.parameters())

    def stage_parameters(self, key: str) -> list[nn.Parameter]:
        if key == "mask":
            return self.extra_parameters() + ([self.head.weight] if self.config.stage1_classifier else [])
        if key == "all":  # the head's bias is not part of RAda's logits
            return self.tower_parameters() + self.extra_parameters() + [self.head.weight]
        raise KeyError(f"rada_fft has no training stage {key!r}; its stages: mask, all")

    def logits(self, inputs, rows=None, return_mask=False):
        weight = self.head.weight if rows is None else self.head.weight[rows]
        return self.mask(self.features(inputs), weight, self.backbone.logit_scale.detach(), return_mask=return_mask)

    def training_loss(self, inputs, labels):
        logits, mask = self.logits(inputs, return_mask=True)
        ce = F.cross_entropy(logits, labels)
        if self.backbone.image_tower_is_pretrained() and self.config.reg_weight > 0:  # encoders frozen: Eq. 14
            reg = mask_regularization(mask, self.config.reg_loss)
        else:  # Eq. 15
            reg = ce.new_zeros(())
        return LossOutput(ce + self.config.reg_weight * reg, {"ce": float(ce.detach()), "mask_reg": float(reg.detach())},
                          logits=logits.detach())

    def eval_logits(self, inputs):
        with torch.no_grad():
            return self.logits(inputs, self.eval_rows)
