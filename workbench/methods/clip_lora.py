"""CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024): LoRA on q, k, v of every block of both encoders.

Facts from MaxZanella/CLIP-LoRA [code]: every datasets/*.py sets `template = ['a photo of a {}.']`
(the dataset-specific templates and ImageNet's 7 are left in string literals, unused); lora.py prompts
with `template[0].format(classname.replace('_', ' '))`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..engine.features import class_prompt, class_text_features
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
    template: str = "a photo of a {}."  # the released code's, for every dataset


def lora_train(shots: int) -> dict:
    """lora.py's schedule: AdamW 2e-4 (weight decay 1e-2), batch 32, cosine over 500 x shots iterations."""
    return {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 1e-2, "batch_size": 32, "schedule_unit": "iter",
            "warmup_epochs": 0, "epochs": 10_000, "max_iters": 500 * shots}


FEW_SHOT = Preset({}, lora_train(16), "16 shots: run_utils.py defaults (r=2, α=1, dropout 0.25, q/k/v of both "
                                      "encoders, lr 2e-4, batch 32), lora.py's 500 x 16 iterations")


@register_method
class CLIPLoRA(ScoresImageEmbeddings, Method):
    name = "clip_lora"
    paper_names = ("CLIP-LoRA",)
    Config = CLIPLoRAConfig
    version = 2  # underscores read as spaces
    presets = {
        "default": FEW_SHOT,
        "few_shot": FEW_SHOT,
        **{f"few_shot_{k}shot": Preset({}, lora_train(k), f"{k} shots: run_utils.py defaults, 500 x {k} iterations")
           for k in (1, 2, 4, 8)},
        "toy": Preset({}, {"optimizer": "adamw", "lr": 5e-3, "weight_decay": 1e-2, "batch_size": 32,
                           "schedule_unit": "iter", "warmup_epochs": 0, "epochs": 10, "crop_scale": TOY_CROP_SCALE},
                      "embedded toy world, CPU budget"),
    }

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        for encoder in config.encoders:
            getattr(backbone, encoder).add_lora(targets=config.targets, r=config.r, alpha=config.alpha,
                                                dropout=config.dropout, scaling=config.scaling)
        self.register_buffer("train_tokens", backbone.tokenize([class_prompt(config.template, c) for c in task.classnames]),
                             persistent=False)

    def training_loss(self, images, labels):
        text = self.backbone.encode_text(self.train_tokens)
        logits = clip_logits(self.backbone, self.backbone.encode_image(images), text)
        return LossOutput(F.cross_entropy(logits, labels), logits=logits.detach())

    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        self.eval_text = class_text_features(self.backbone, task.classnames, [self.config.template])
