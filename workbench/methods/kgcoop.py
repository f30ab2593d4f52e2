"""KgCoOp (Yao et al., CVPR 2023): CoOp + keep learned class embeddings close to hand-crafted ones:
L = CE + λ · (1 − mean_c cos(w_c, w_c^clip)).

Facts from htyao89/KgCoOp [code]: trainers/kgcoop.py builds w^clip from its own CUSTOM_TEMPLATES (CoOp's,
except DescribableTextures: "a photo of a {}, a type of texture."; data_manifests/templates/kgcoop.yaml)
and always initialises 4 context tokens from "a photo of a"; scripts/base2new_train.sh runs
configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml (SGD 0.002, batch 128, 100 epochs) with λ = 8.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._dual_shared import DUAL_SHARED_PLOTS, DualSharedSwitch
from .base import LossOutput, Preset, register_method
from .coop import TOY_CACHED_VIEWS, TOY_TRAIN, CoOp, dassl_sgd
from .common import clip_logits, method_templates, zero_shot_text_features


@dataclass
class KgCoOpConfig(DualSharedSwitch):  # dual_shared=True: DsRA's plug-in (Table 5 of papers/dsra.txt)
    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    class_specific: bool = False
    weight: float = 8.0  # λ
    templates: tuple[str, ...] | None = None  # hand-crafted prompts; None: `template_set`'s for the dataset
    template_set: str = "kgcoop"  # data_manifests/templates/<name>.yaml; datasets it lacks use their own


@register_method
class KgCoOp(CoOp):
    name = "kgcoop"
    paper_names = ("KgCoOp",)
    Config = KgCoOpConfig
    version = 2  # underscores read as spaces; KgCoOp's own templates (DTD)
    plots = DUAL_SHARED_PLOTS  # drawn only for runs with the DsRA plug-in (method.dual_shared)
    default_preset = "base_to_novel"
    presets = {
        "base_to_novel": Preset({}, dassl_sgd(100, batch_size=128),
                                "scripts/base2new_train.sh: vit_b16_ep100_ctxv1.yaml, 4 tokens from 'a photo of a', "
                                "λ=8, SGD 0.002, batch 128, 100 epochs"),
        "toy": Preset({}, {**TOY_TRAIN, **TOY_CACHED_VIEWS, "epochs": 20},
                      "embedded toy world, CPU budget (~10 s): 20 epochs over 5 cached views"),
    }

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        templates = method_templates(task, config.templates, config.template_set)
        self.register_buffer("clip_text", zero_shot_text_features(backbone, task.classnames, templates),
                             persistent=False)

    def training_loss(self, images, labels):
        image_features = self.image_tower_features(images)
        text = self.class_features(self.train_tokens)
        logits = clip_logits(self.backbone, image_features, text)
        ce = F.cross_entropy(logits, labels)
        knowledge = 1.0 - F.cosine_similarity(F.normalize(text, dim=-1), self.clip_text, dim=-1).mean()
        loss = ce + self.config.weight * knowledge
        return LossOutput(loss, {"ce": ce.item(), "kg": knowledge.item()}, logits.detach())
