"""CLIP-Adapter (Gao et al., IJCV 2024): a residual bottleneck MLP on the frozen image feature.

    f' = α · MLP(f) + (1 − α) · f,   MLP = Linear(D→D/r, no bias) · ReLU · Linear(D/r→D, no bias) · ReLU
    logits = logit_scale · cos(f', frozen zero-shot class text features)

Facts from the released trainer (gaopengcuhk/CLIP-Adapter, clip_adapter.py): reduction 4, ratio α = 0.2,
no biases, the residual blend is on the unnormalized image feature, text features are the frozen
zero-shot class embeddings of CoOp's template (its CUSTOM_TEMPLATES, the manifests' templates), only the adapter is optimized with cross-entropy. Its README says to run
it with CoOp's commands, i.e. CoOp's Dassl schedule (SGD 0.002, cosine, batch 32, 1 constant
warm-up epoch); 200 epochs as reported by the paper and by Tip-Adapter's comparison. [code/paper]

Trained on cached frozen features (`inputs = "features"`): the engine encodes `feature_views`
augmented views once and epoch e uses view e % views. The adapter sees image features only, so
every domain works: new classes / other datasets are scored against their own zero-shot text features.
A 4-D input is treated as images and encoded first (the benchmark's re-encoding baseline uses this).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import LossOutput, Method, Preset, register_method
from .common import TOY_CROP_SCALE, ScoresImageEmbeddings, clip_logits, zero_shot_text_features


@dataclass
class CLIPAdapterConfig:
    reduction: int = 4  # bottleneck width D / reduction
    ratio: float = 0.2  # α: weight of the adapted feature in the residual blend
    templates: tuple[str, ...] | None = None  # None: the dataset's templates (ensembled if several)


def bottleneck_mlp(dim: int, reduction: int) -> nn.Sequential:
    hidden = dim // reduction
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                         nn.Linear(hidden, dim, bias=False), nn.ReLU())


@register_method
class CLIPAdapter(ScoresImageEmbeddings, Method):
    name = "clip_adapter"
    paper_names = ("CLIP-Adapter",)
    Config = CLIPAdapterConfig
    version = 2  # underscores read as spaces
    inputs = "features"
    presets = {
        "default": Preset({"reduction": 4, "ratio": 0.2},
                          {"optimizer": "sgd", "lr": 0.002, "batch_size": 32, "epochs": 200, "warmup_epochs": 1,
                           "warmup_lr": 1e-5, "feature_views": 10},
                          "few-shot: clip_adapter.py's visual adapter r=4, α=0.2; CoOp's configs/trainers/CoOp/vit_b16.yaml "
                          "schedule (SGD 0.002, batch 32), "
                          "200 epochs; 10 cached augmented views"),
        "toy": Preset({"reduction": 4, "ratio": 0.2},
                      {"optimizer": "sgd", "lr": 0.01, "batch_size": 32, "epochs": 20, "warmup_epochs": 1,
                       "warmup_lr": 1e-4, "crop_scale": TOY_CROP_SCALE, "feature_views": 4},
                      "embedded toy world, CPU budget"),
    }

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        if config.reduction < 1 or backbone.embed_dim // config.reduction < 1:
            raise ValueError(f"reduction must be in 1..{backbone.embed_dim}, got {config.reduction}")
        self.adapter = bottleneck_mlp(backbone.embed_dim, config.reduction)
        self.register_buffer("train_text", self._text_features(task), persistent=False)

    def _text_features(self, task) -> torch.Tensor:
        return zero_shot_text_features(self.backbone, task.classnames, self.config.templates or task.templates)

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        """α · MLP(f) + (1 − α) · f on the unnormalized feature (α = 0: the frozen feature itself)."""
        ratio = self.config.ratio
        return ratio * self.adapter(features) + (1 - ratio) * features

    def training_loss(self, inputs, labels):
        logits = clip_logits(self.backbone, self.adapt(self.image_tower_features(inputs)), self.train_text)
        return LossOutput(F.cross_entropy(logits, labels), logits=logits.detach())

    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        self.eval_text = self._text_features(task).to(self.train_text.device)

    def eval_embeddings(self, inputs):
        return self.adapt(self.image_tower_features(inputs))
