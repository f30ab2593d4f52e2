"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context shifted per image by a meta-net of the image
feature, ctx_b = ctx + π(f_b); every image gets its own set of class prompts."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import LossOutput, Method, Preset, register_method
from .common import TextContext, clip_logits
from .coop import TOY_TRAIN


@dataclass
class CoCoOpConfig:
    n_ctx: int = 4
    ctx_init: str = "a photo of a"  # context initialised from these words (n_ctx = their tokens)
    meta_reduction: int = 16  # meta-net hidden width = image feature dim // meta_reduction


B2N_TRAIN = {"optimizer": "sgd", "lr": 0.002, "batch_size": 1, "epochs": 10}


@register_method
class CoCoOp(Method):
    name = "cocoop"
    paper_names = ("CoCoOp",)
    Config = CoCoOpConfig
    frozen_image_tower = True
    default_preset = "base_to_novel"
    presets = {
        "base_to_novel": Preset({}, B2N_TRAIN, "released vit_b16_c4_ep10_batch1_ctxv1: 4 tokens from 'a photo of a', "
                                               "SGD 0.002, batch 1, 10 epochs, 16 shots"),
        "cross_dataset": Preset({}, B2N_TRAIN, "same config trained on all ImageNet classes (16 shots)"),
        "domain_generalization": Preset({}, B2N_TRAIN, "the cross-dataset ImageNet model, evaluated on its variants"),
        # every image encodes all class prompts: an epoch costs images × classes text passes
        "toy": Preset({}, {**TOY_TRAIN, "batch_size": 8, "epochs": 4},
                      "embedded toy world, CPU budget (~1-2 min): batch 8 instead of 1, 4 epochs"),
    }
    max_prompts_per_pass = 4096  # evaluation: images per text-tower pass × classes

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        self.context = TextContext(backbone, config.n_ctx, config.ctx_init)
        vis_dim, ctx_dim = backbone.embed_dim, backbone.text.width
        hidden = vis_dim // config.meta_reduction
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, hidden)), ("relu", nn.ReLU()), ("linear2", nn.Linear(hidden, ctx_dim))]))
        self.meta_net.to(backbone.device)
        self.register_buffer("train_tokens", self.context.tokenized(task.classnames), persistent=False)

    def conditioned_logits(self, image_features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[B, C] logits with class prompts built from each image's own context."""
        batch, classes = image_features.shape[0], tokens.shape[0]
        image_features = F.normalize(image_features, dim=-1)
        shift = self.meta_net(image_features.to(self.context.ctx.dtype))  # [B, width]
        ctx = self.context.ctx.unsqueeze(0) + shift.unsqueeze(1)  # [B, K, width]
        per_prompt = ctx.repeat_interleave(classes, dim=0)  # image-major: B·C prompts
        text = self.context.encode(tokens.repeat(batch, 1), per_prompt_ctx=per_prompt)
        return clip_logits(self.backbone, image_features, text.view(batch, classes, -1))

    def training_loss(self, images, labels):
        image_features = self.image_tower_features(images)
        logits = self.conditioned_logits(image_features, self.train_tokens)
        return LossOutput(F.cross_entropy(logits, labels), logits=logits.detach())

    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        self.eval_tokens = self.context.tokenized(task.classnames)

    def eval_logits(self, images):
        image_features = self.image_tower_features(images)
        step = max(1, self.max_prompts_per_pass // self.eval_tokens.shape[0])
        return torch.cat([self.conditioned_logits(image_features[i:i + step], self.eval_tokens)
                          for i in range(0, image_features.shape[0], step)])
