"""DAM's cross-modal alignment as a training-free plug-in on zero-shot CLIP (DAM Table IV, papers/dam.txt).

    d_CMA = log_softmax_n(ω [−α ‖t_n − μ W*_IT f‖² − (1 − α) ‖f − μ W*_TI t_n‖²])     (Eq. 10)
    d     = β cos(f, t_n) + (1 − β) d_CMA,   logits = logit_scale · d                  (Eqs. 11, 12)

with f the frozen image feature, t_n the zero-shot class text feature (the dataset's templates) and the
per-pair ridge maps in their rank-one closed form (`_dam_alignment`). Table IV's settings [paper]: λ = 0.001,
μ = 1, α = 0.5, β = 0.65, ω = 1 (RN50). There is no SMA: the encoders are CLIP's own.

Our choices [decision]: the paper does not say whether the plug-in sees L2-normalized features; the
released code feeds CMA normalized ones, so `features="normalized"` is the default. Then every class gets
d_CMA = −log N and the plug-in ranks classes exactly as zero-shot CLIP (tested): its accuracy equals
zero-shot's. `features="raw"` uses the unnormalized tower outputs (class text = mean of the templates' raw
features); d_CMA then adds a class bias that depends on feature norms only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..engine.features import class_prompt
from . import _dam_alignment as dam
from .base import Method, Preset, register_method

FEATURES = ("normalized", "raw")


@dataclass
class DAMCMAZeroShotConfig:
    lam: float = field(default=0.001, metadata={"help": "ridge λ of both CMA maps (Table IV: 0.001)"})
    mu: float = field(default=1.0, metadata={"help": "μ_IT = μ_TI (Table IV: 1)"})
    alpha: float = field(default=0.5, metadata={"help": "weight of ItoT against TtoI, in [0, 1] (Table IV: 0.5)"})
    beta: float = field(default=0.65, metadata={"help": "weight of the cosine against d_CMA, in [0, 1] (Table IV: 0.65)"})
    omega: float = field(default=1.0, metadata={"help": "scale ω inside the log-softmax (Table IV: 1)"})
    features: str = field(default="normalized", metadata={
        "help": "CMA inputs: 'normalized' (as the released code feeds CMA; the paper is silent) or 'raw' "
                "tower outputs"})
    templates: tuple[str, ...] | None = field(default=None, metadata={"help": "None: the dataset's templates"})

    def __post_init__(self):
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {self.features!r}")
        for name in ("alpha", "beta"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.lam <= 0:
            raise ValueError(f"lam must be > 0 (a ridge penalty), got {self.lam}")


@register_method
class DAMCMAZeroShot(Method):
    name = "dam_cma_zeroshot"
    paper_names = ("CLIP+CMA",)
    Config = DAMCMAZeroShotConfig
    presets = {"default": Preset(description="DAM Table IV: λ=0.001, μ=1, α=0.5, β=0.65, ω=1 on zero-shot CLIP, "
                                             "no training (papers/dam.txt Sec. IV-F)")}
    trainable = False
    frozen_image_tower = True

    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        templates = self.config.templates or task.templates
        prompts = [class_prompt(t, c) for c in task.classnames for t in templates]
        with torch.no_grad(), self.backbone.extensions_disabled():
            raw = torch.cat([self.backbone.encode_text(self.backbone.tokenize(prompts[i:i + 512])).float()
                             for i in range(0, len(prompts), 512)])
        raw = raw.view(len(task.classnames), len(templates), -1)
        self.eval_text_raw = raw.mean(dim=1).to(self.backbone.device)
        self.eval_text = F.normalize(F.normalize(raw, dim=-1).mean(dim=1), dim=-1).to(self.backbone.device)

    def similarity(self, image_features: torch.Tensor) -> torch.Tensor:
        """d of Eq. 11 [B, C] for frozen image features."""
        c = self.config
        if c.features == "normalized":
            img, txt = F.normalize(image_features.float(), dim=-1), self.eval_text
        else:
            img, txt = image_features.float(), self.eval_text_raw
        d_cma = dam.cma(img, txt, c.lam, c.lam, c.mu, c.mu, c.alpha, c.omega)
        return dam.final_similarity(image_features.float(), self.eval_text, d_cma, c.beta)

    @torch.no_grad()
    def eval_outputs(self, inputs):
        embeddings = self.image_tower_features(inputs)
        return self.backbone.logit_scale.to(embeddings.device).float() * self.similarity(embeddings), embeddings

    def eval_logits(self, inputs):
        return self.eval_outputs(inputs)[0]
