"""CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024): LoRA on q, k, v of every block of both encoders."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..engine.features import class_text_features
from .base import LossOutput, Method, Preset, register_method
from .common import TOY_CROP_SCALE, ScoresImageEmbeddings, clip_logits


@dataclass
class CLIPLoRAConfig:
    r: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    targets: tuple[str, ...] = ("q", "k", "v")
    encoders: tuple[str, ...] = ("visual", "text")
    scaling: str = "sqrt"  # alpha / sqrt(r), as in the released code
    template: str = "a photo of a {}."


@register_method
class CLIPLoRA(ScoresImageEmbeddings, Method):
    name = "clip_lora"
    Config = CLIPLoRAConfig
    presets = {
        "default": Preset({}, {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 1e-2, "batch_size": 32,
                               "schedule_unit": "iter", "warmup_epochs": 0, "epochs": 10_000,
                               "max_iters": 8000},
                          "released defaults: r=2, AdamW 2e-4, cosine per iteration, 500 x shots iterations "
                          "(set train.max_iters for other shot counts)"),
        "toy": Preset({}, {"optimizer": "adamw", "lr": 5e-3, "weight_decay": 1e-2, "batch_size": 32,
                           "schedule_unit": "iter", "warmup_epochs": 0, "epochs": 10, "crop_scale": TOY_CROP_SCALE},
                      "embedded toy world, CPU budget"),
    }

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        for encoder in config.encoders:
            getattr(backbone, encoder).add_lora(targets=config.targets, r=config.r, alpha=config.alpha,
                                                dropout=config.dropout, scaling=config.scaling)
        self.register_buffer("train_tokens", backbone.tokenize([config.template.format(c) for c in task.classnames]),
                             persistent=False)

    def training_loss(self, images, labels):
        text = self.backbone.encode_text(self.train_tokens)
        logits = clip_logits(self.backbone, self.backbone.encode_image(images), text)
        return LossOutput(F.cross_entropy(logits, labels), logits=logits.detach())

    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        self.eval_text = class_text_features(self.backbone, task.classnames, [self.config.template])
