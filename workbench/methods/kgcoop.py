"""KgCoOp (Yao et al., CVPR 2023): CoOp + keep learned class embeddings close to hand-crafted ones:
L = CE + λ · (1 − mean_c cos(w_c, w_c^clip))."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import LossOutput, Preset, register_method
from .coop import TOY_CACHED_VIEWS, TOY_TRAIN, CoOp
from .common import clip_logits, zero_shot_text_features


@dataclass
class KgCoOpConfig:
    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    class_specific: bool = False
    weight: float = 8.0  # λ


@register_method
class KgCoOp(CoOp):
    name = "kgcoop"
    Config = KgCoOpConfig
    default_preset = "base_to_novel"
    presets = {
        "base_to_novel": Preset({}, {"optimizer": "sgd", "lr": 0.002, "batch_size": 128, "epochs": 100},
                                "KgCoOp's ViT-B/16 b2n config: 4 tokens, λ=8"),
        "toy": Preset({}, {**TOY_TRAIN, **TOY_CACHED_VIEWS, "epochs": 20},
                      "embedded toy world, CPU budget (~10 s): 20 epochs over 5 cached views"),
    }

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        self.register_buffer("clip_text", zero_shot_text_features(backbone, task.classnames, task.templates),
                             persistent=False)

    def training_loss(self, images, labels):
        image_features = self.image_tower_features(images)
        text = self.class_features(self.train_tokens)
        logits = clip_logits(self.backbone, image_features, text)
        ce = F.cross_entropy(logits, labels)
        knowledge = 1.0 - F.cosine_similarity(F.normalize(text, dim=-1), self.clip_text, dim=-1).mean()
        loss = ce + self.config.weight * knowledge
        return LossOutput(loss, {"ce": ce.item(), "kg": knowledge.item()}, logits.detach())
