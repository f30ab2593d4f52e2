"""Full fine-tuning baselines of the `full_finetune` protocol (RAda Tables 1 and 6): FT, LP-FT, L2-SP.

The text encoder is replaced by a linear head initialized from the class text features T (normalized,
template-ensembled), scaled by CLIP's logit scale s:

    logits = W · f/‖f‖ + b,   W₀ = s · T,  b₀ = 0        (so at init: logits = zero-shot CLIP, exactly)

- FT (`finetune`): one stage, the image tower and the head ("all"), cross-entropy.
- LP-FT (`lp_ft`, Kumar et al. 2022): stage 1 the head alone ("head"), stage 2 everything ("all").
- L2-SP (`l2sp`, Li et al. 2018): FT plus (α/2)·Σ‖θ − θ₀‖² over the trained weights, θ₀ the weights at
  build time (the pretrained tower and the text-initialized head).
- LP: the closed-form `linear_probe` (logistic regression on frozen features) runs under the same
  protocol; it is not a method of this module.

Facts [paper: RAda §4.1 and its appendix on FFT]: ImageNet, batch 512, 10 epochs; LP-FT-style methods
5 + 5 epochs at lr 0.004 then 4e-6; "optimizers, weight decay, etc. inherited from WiSE-FT", i.e. AdamW,
weight decay 0.1, warm-up. The head as WiSE-FT's released classification head (zero-shot weights times
the logit scale, inputs normalized, zero bias) [code: mlfoundations/wise-ft, as recalled; not re-read here].
Choices where the papers are silent [decision]: FT and L2-SP use FLYP's released ImageNet recipe for their
single stage (AdamW lr 1e-5, wd 0.1, batch 512, 10 epochs: locuslab/FLYP README); WiSE-FT's 500-step linear
warm-up is not in the engine, the presets use a per-iteration cosine without warm-up; L2-SP's α = 0.1 and
the penalty also covers the head (`l2sp_head`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import LossOutput, Method, Preset, register_method
from .common import TOY_CROP_SCALE, zero_shot_text_features
from .linear_probe import trained_class_positions


class TextInitializedHead(nn.Module):
    """logits = W · f/‖f‖ + b, W initialized to logit_scale · (normalized class text features), b to 0."""

    def __init__(self, text_features: torch.Tensor, logit_scale: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(float(logit_scale) * F.normalize(text_features.float(), dim=-1))
        self.bias = nn.Parameter(torch.zeros(text_features.shape[0]))

    def forward(self, features: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = (self.weight, self.bias) if rows is None else (self.weight[rows], self.bias[rows])
        return F.normalize(features, dim=-1) @ weight.t().to(features.dtype) + bias.to(features.dtype)


@dataclass
class FinetuneConfig:
    templates: tuple[str, ...] | None = field(default=None, metadata={
        "help": "templates of the head's text-feature init (ensembled); None: the dataset's own"})
    # LP-FT-style methods: stage 1 (head / adapter / mask) settings; stage 2 uses the train.* settings
    lp_epochs: int = field(default=5, metadata={"help": "two-stage methods: epochs of stage 1 (RAda: 5)"})
    lp_lr: float = field(default=0.004, metadata={"help": "two-stage methods: stage-1 learning rate (RAda: 0.004)"})
    lp_weight_decay: float = field(default=0.1, metadata={"help": "stage-1 weight decay (WiSE-FT's 0.1)"})
    lp_warmup_epochs: int = field(default=0, metadata={"help": "stage-1 constant warm-up epochs"})

    def __post_init__(self) -> None:
        if self.lp_epochs < 1:
            raise ValueError(f"method.lp_epochs must be at least 1, got {self.lp_epochs}")
        if not self.lp_lr > 0:
            raise ValueError(f"method.lp_lr must be positive, got {self.lp_lr}")
        if self.lp_weight_decay < 0 or self.lp_warmup_epochs < 0:
            raise ValueError("method.lp_weight_decay and method.lp_warmup_epochs must be at least 0")


PAPER_SOURCE = "RAda §4.1 FFT (ImageNet, batch 512, 5 + 5 epochs, lr 0.004 then 4e-6; AdamW wd 0.1 from WiSE-FT)"
FLYP_RECIPE = "locuslab/FLYP README ImageNet command (AdamW lr 1e-5, wd 0.1, batch 512, 10 epochs)"
ONE_STAGE_PAPER = {"optimizer": "adamw", "lr": 1e-5, "weight_decay": 0.1, "batch_size": 512, "epochs": 10,
                   "warmup_epochs": 0, "schedule": "cosine", "schedule_unit": "iter", "precision": "amp"}
TWO_STAGE_PAPER = {**ONE_STAGE_PAPER, "lr": 4e-6, "epochs": 5}
# toy budgets measured on toy_objects -> toy_objects_shifted, 16 shots, seed 1 (docs/full_finetune.md)
TOY_TRAIN = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.1, "batch_size": 64, "epochs": 3,
             "warmup_epochs": 0, "schedule": "cosine", "crop_scale": TOY_CROP_SCALE}
TOY_TWO_STAGE = {**TOY_TRAIN, "lr": 3e-5, "epochs": 2}
TOY_LP = {"lp_epochs": 3, "lp_lr": 0.1, "lp_weight_decay": 0.1}


class FullFinetuneMethod(Method):
    """Image tower + a text-initialized head. Subclasses declare their `stages` (keys of
    `stage_parameters`); `full_finetune` trains them in order: the first of two stages with the
    method's lp_* settings, the last with train.*."""

    stages: ClassVar[tuple[str, ...]] = ("all",)
    # the tower's final features are all it reads: stage 1 may train from cached features
    # (train.cached_features) while the tower is untouched; evaluation after stage "all" encodes images
    frozen_image_tower = True

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        templates = config.templates or task.templates
        text = zero_shot_text_features(backbone, task.classnames, templates)
        self.head = TextInitializedHead(text, backbone.logit_scale.detach()).to(text.device)

    # -- stages ---------------------------------------------------------------------------------
    def tower_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.clip.visual.parameters())

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters between the tower and the head (an adapter, a mask); none here."""
        return []

    def stage_parameters(self, key: str) -> list[nn.Parameter]:
        if key == "head":
            return list(self.head.parameters())
        if key == "all":
            return self.tower_parameters() + self.extra_parameters() + list(self.head.parameters())
        raise KeyError(f"{self.name} has no training stage {key!r}; its stages: head, all")

    def stage_plan(self, train_cfg) -> list[tuple[str, object]]:
        """[(stage key, TrainConfig)]: a first stage of two runs with the lp_* settings."""
        if len(self.stages) == 1:
            return [(self.stages[0], train_cfg)]
        c = self.config
        first = replace(train_cfg, epochs=c.lp_epochs, lr=c.lp_lr, weight_decay=c.lp_weight_decay,
                        warmup_epochs=c.lp_warmup_epochs)
        return [(self.stages[0], first), (self.stages[1], train_cfg)]

    # -- training -------------------------------------------------------------------------------
    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Image-tower features, with gradients when the tower trains (cached [B, D] features pass through)."""
        return inputs if inputs.dim() == 2 else self.backbone.encode_image(inputs)

    def logits(self, inputs: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(inputs), rows)

    def training_loss(self, inputs, labels):
        logits = self.logits(inputs)
        return LossOutput(F.cross_entropy(logits, labels), logits=logits.detach())

    # -- evaluation -----------------------------------------------------------------------------
    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        rows = trained_class_positions(self.task.classnames, task.classnames)
        if rows is None:
            unknown = [c for c in task.classnames if c not in set(self.task.classnames)]
            raise ValueError(f"{self.name} scores only the {len(self.task.classnames)} classes of its head; "
                             f"{task.dataset} ({domain}) has {len(unknown)} others (e.g. {unknown[:3]}): use it on "
                             "the training classes or a subset of them (ImageNet variants)")
        self.eval_rows = torch.as_tensor(rows, dtype=torch.long, device=self.head.weight.device)

    def eval_logits(self, inputs):
        with torch.no_grad():
            return self.logits(inputs, self.eval_rows)

    def eval_embeddings(self, inputs):
        with torch.no_grad():
            return self.features(inputs)

    def eval_class_embeddings(self):
        """The head's rows (they live in the image feature space), normalized."""
        return F.normalize(self.head.weight[self.eval_rows].detach(), dim=-1)


def _presets(stages: int, extra_method: dict | None = None, source: str = "") -> dict[str, Preset]:
    extra_method = extra_method or {}
    if stages == 1:
        return {"default": Preset(dict(extra_method), dict(ONE_STAGE_PAPER), source or FLYP_RECIPE),
                "toy": Preset(dict(extra_method), dict(TOY_TRAIN), "embedded toy world, CPU budget")}
    return {"default": Preset({"lp_epochs": 5, "lp_lr": 0.004, "lp_weight_decay": 0.1, **extra_method},
                              dict(TWO_STAGE_PAPER), source or PAPER_SOURCE),
            "toy": Preset({**TOY_LP, **extra_method}, dict(TOY_TWO_STAGE), "embedded toy world, CPU budget")}


@register_method
class Finetune(FullFinetuneMethod):
    name = "finetune"
    paper_names = ("FT",)
    Config = FinetuneConfig
    stages = ("all",)
    presets = _presets(1)


@register_method
class LinearProbeFinetune(FullFinetuneMethod):
    name = "lp_ft"
    paper_names = ("LP-FT",)
    Config = FinetuneConfig
    stages = ("head", "all")
    presets = _presets(2)


@dataclass
class L2SPConfig(FinetuneConfig):
    l2sp_alpha: float = field(default=0.1, metadata={
        "help": "α in (α/2)·Σ‖θ − θ₀‖² (the RAda paper gives no value: chosen)"})
    l2sp_head: bool = field(default=True, metadata={
        "help": "the penalty also pulls the head toward its text-feature init (chosen)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l2sp_alpha < 0:
            raise ValueError(f"method.l2sp_alpha must be at least 0, got {self.l2sp_alpha}")


@register_method
class L2SP(FullFinetuneMethod):
    name = "l2sp"
    paper_names = ("L2-SP",)
    Config = L2SPConfig
    stages = ("all",)
    presets = _presets(1, {"l2sp_alpha": 0.1})

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        self._anchors = {id(p): p.detach().clone() for p in self._penalized()}

    def _penalized(self) -> list[nn.Parameter]:
        return self.tower_parameters() + (list(self.head.parameters()) if self.config.l2sp_head else [])

    def l2sp_penalty(self) -> torch.Tensor:
        """(α/2)·Σ‖θ − θ₀‖² over the penalized weights that train (frozen ones have θ = θ₀)."""
        total = self.head.weight.new_zeros(())
        for p in self._penalized():
            if p.requires_grad:
                anchor = self._anchors[id(p)].to(p.device)
                total = total + (p - anchor).pow(2).sum()
        return 0.5 * self.config.l2sp_alpha * total

    def training_loss(self, inputs, labels):
        logits = self.logits(inputs)
        ce = F.cross_entropy(logits, labels)
        penalty = self.l2sp_penalty()
        return LossOutput(ce + penalty, {"ce": float(ce.detach()), "l2sp": float(penalty.detach())},
                          logits=logits.detach())
