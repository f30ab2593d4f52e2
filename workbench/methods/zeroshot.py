"""Zero-shot CLIP: class embeddings from prompt templates (an ensemble when there are several)."""
from __future__ import annotations

from dataclasses import dataclass

from ..engine.features import class_text_features
from .base import Method, Preset, register_method
from .common import ScoresImageEmbeddings


@dataclass
class ZeroShotConfig:
    templates: tuple[str, ...] | None = None  # None: the dataset's templates


@register_method
class ZeroShotCLIP(ScoresImageEmbeddings, Method):
    name = "zeroshot"
    paper_names = ("CLIP", "Zero Shot")
    Config = ZeroShotConfig
    version = 2  # underscores read as spaces
    presets = {"default": Preset(description="CoOp's per-dataset template (trainers/zsclip.py CUSTOM_TEMPLATES, "
                                             "the manifests' templates), no training")}
    trainable = False
    frozen_image_tower = True

    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        templates = self.config.templates or task.templates
        self.eval_text = class_text_features(self.backbone, task.classnames, templates).to(self.backbone.device)
