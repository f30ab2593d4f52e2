"""FLYP (Goyal et al., CVPR 2023, "Finetune like you pretrain"): full fine-tuning of BOTH towers with
CLIP's own contrastive loss, the class names as captions; evaluated zero-shot with the fine-tuned towers.

For a batch of B images x_i with labels y_i, caption t_i = template(classname(y_i)):

    I = normalize(f_img(x)),  T = normalize(f_txt(t)),  L = s · I Tᵀ   (B × B, s = exp(logit_scale))
    loss = ½ [ CE(L, diag) + CE(Lᵀ, diag) ]                           (symmetric InfoNCE)

Two images of the same class in a batch are negatives of each other's captions, as in CLIP pretraining.

Facts from the released code (locuslab/FLYP) [code]:
- ImageNet command in the README: AdamW lr 1e-5, wd 0.1, batch 512, 10 epochs, OpenAI's ImageNet
  templates; args.py: 500 warm-up steps, then cosine (src/models/flyp_loss.py, `cosine_lr`);
- every parameter of the CLIP model is optimized, the logit scale included (flyp_loss.py: clip_params =
  model.parameters());
- datacreation_scripts/imagenet_csv_creator.py writes one (caption, image) row per image and template, and
  training draws shuffled rows, so a step sees random (image, template) pairs.
Choices [decision]: each image's caption template is drawn uniformly at random (a generator seeded by the run's
seed, checkpointed) at every step, which is the same distribution as those rows; the per-iteration cosine without the 500-step linear
warm-up (not in the engine); zero-shot evaluation with the dataset's templates ensembled over the fine-tuned
text tower. `train_logit_scale=False` keeps the scale fixed.
Under torchrun the features of every rank are gathered (with gradients) so the loss is the global batch's,
as with DataParallel in the released code; each rank draws the templates of its own shard, so with several
templates the captions (not the loss) differ from a one-process run (identical with one template: tested).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import distributed
from ..engine.features import class_prompt
from .base import LossOutput, Method, Preset, register_method
from .common import TOY_CROP_SCALE, clip_logits


@dataclass
class FLYPConfig:
    templates: tuple[str, ...] | None = field(default=None, metadata={
        "help": "caption and evaluation templates; None: the dataset's own (ImageNet: OpenAI's 80, as released)"})
    train_logit_scale: bool = field(default=True, metadata={
        "help": "train CLIP's logit scale too (released: every parameter is trained)"})


def symmetric_infonce(image_features: torch.Tensor, text_features: torch.Tensor, scale) -> torch.Tensor:
    """½ [CE(s·I Tᵀ, diag) + CE(s·T Iᵀ, diag)] on normalized features: CLIP's pretraining loss."""
    image, text = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
    logits = scale * image @ text.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


@register_method
class FLYP(Method):
    name = "flyp"
    paper_names = ("FLYP", "FLYP†")
    Config = FLYPConfig
    stages = ("all",)
    distributed_loss = "gathered"  # the loss couples the whole batch: engine.distributed gathers, weight 1
    presets = {
        "default": Preset({}, {"optimizer": "adamw", "lr": 1e-5, "weight_decay": 0.1, "batch_size": 512, "epochs": 10,
                               "warmup_epochs": 0, "schedule": "cosine", "schedule_unit": "iter"},
                          "locuslab/FLYP README ImageNet command: AdamW lr 1e-5, wd 0.1, batch 512, 10 epochs "
                          "(its 500-step linear warm-up left out)"),
        "toy": Preset({}, {"optimizer": "adamw", "lr": 1e-5, "weight_decay": 0.1, "batch_size": 64, "epochs": 3,
                           "warmup_epochs": 0, "schedule": "cosine", "crop_scale": TOY_CROP_SCALE},
                      "embedded toy world, CPU budget"),
    }

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        self.templates = tuple(config.templates or task.templates)
        self.register_buffer("class_tokens", torch.stack([
            backbone.tokenize([class_prompt(t, c) for t in self.templates]) for c in task.classnames]),
            persistent=False)  # [C, K, L]
        # the caption-template draws have their own generator (seeded by the run's seed, checkpointed: exact
        # resume) so that they never shift the global RNG the data augmentations draw from
        self.register_buffer("state_caption_rng", torch.Generator().manual_seed(torch.initial_seed()).get_state())

    def stage_parameters(self, key: str) -> list[nn.Parameter]:
        if key != "all":
            raise KeyError(f"flyp has one training stage, 'all' (both towers), not {key!r}")
        clip = self.backbone.clip
        return [p for n, p in clip.named_parameters() if self.config.train_logit_scale or n != "logit_scale"]

    def stage_plan(self, train_cfg):
        return [("all", train_cfg)]

    def captions(self, labels: torch.Tensor) -> torch.Tensor:
        """One tokenized caption per label, its template drawn uniformly (the method's own generator)."""
        k = self.class_tokens.shape[1]
        if k == 1:
            return self.class_tokens[labels, 0]
        generator = torch.Generator()
        generator.set_state(self.state_caption_rng.cpu())
        choice = torch.randint(k, (labels.shape[0],), generator=generator)
        self.state_caption_rng.copy_(generator.get_state())
        return self.class_tokens[labels, choice.to(labels.device)]

    def training_loss(self, inputs, labels):
        image = self.backbone.encode_image(inputs)
        text = self.backbone.encode_text(self.captions(labels))
        if distributed.active():
            image, text = distributed.gather_with_grad(image), distributed.gather_with_grad(text)
        loss = symmetric_infonce(image, text, self.backbone.logit_scale)
        return LossOutput(loss, {"logit_scale": float(self.backbone.logit_scale.detach())})

    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        templates = tuple(self.config.templates or task.templates)
        feats = []
        with torch.no_grad():
            for c in task.classnames:
                tokens = self.backbone.tokenize([class_prompt(t, c) for t in templates])
                feats.append(F.normalize(F.normalize(self.backbone.encode_text(tokens).float(), dim=-1).mean(0), dim=-1))
        self.eval_text = torch.stack(feats)  # the fine-tuned text tower: never the frozen-feature cache

    def eval_embeddings(self, inputs):
        with torch.no_grad():
            return self.backbone.encode_image(inputs)

    def eval_logits(self, inputs):
        return self.eval_outputs(inputs)[0]

    def eval_outputs(self, inputs):
        embeddings = self.eval_embeddings(inputs)
        with torch.no_grad():
            return clip_logits(self.backbone, embeddings, self.eval_text.to(embeddings.device)), embeddings
