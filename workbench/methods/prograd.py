"""ProGrad (Zhu et al., ICCV 2023): CoOp whose cross-entropy gradient is projected against the
gradient of KL(zero-shot ‖ prompted) whenever the two conflict (per parameter tensor, as released):
g ← g − λ·⟨g, g_kl⟩/‖g_kl‖²·g_kl  if ⟨g, g_kl⟩ < 0."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..engine.gradients import loss_gradients, project_conflicting_all, write_gradients
from .base import LossOutput, Method, Preset, register_method
from .common import TextContext, clip_logits, zero_shot_text_features
from .coop import TOY_CACHED_VIEWS, TOY_TRAIN, CoOp


@dataclass
class ProGradConfig:
    n_ctx: int = 16
    # words placed in the LAST context slots, the others start at zero ("X … X a photo of a {class}.")
    ctx_init: str = "a photo of a"
    class_specific: bool = False
    lambda_: float = 1.0  # projection strength λ
    temperature: float = 1.0  # T of the KL to zero-shot CLIP
    templates: tuple[str, ...] | None = None  # zero-shot teacher prompts; None: the dataset's templates


def padded_word_context(backbone, n_ctx: int, ctx_init: str, num_classes: int | None = None) -> TextContext:
    """CoOp context of n_ctx tokens whose last slots hold the words of `ctx_init` and whose first
    slots are zero (ProGrad's initialisation); random N(0, 0.02) without words."""
    context = TextContext(backbone, n_ctx=n_ctx, num_classes=num_classes)
    words = ctx_init.replace("_", " ").strip()
    if not words:
        return context
    tokens = backbone.tokenize([words])
    n_words = int(tokens.argmax(-1).item()) - 1
    if n_words > n_ctx:
        raise ValueError(f"ctx_init {words!r} has {n_words} tokens, more than n_ctx={n_ctx}")
    with torch.no_grad():
        embedded = backbone.text.embed(tokens)[0, 1:1 + n_words].float()
        context.ctx.zero_()
        context.ctx[..., n_ctx - n_words:, :] = embedded
    context.prefix = " ".join(["X"] * (n_ctx - n_words) + [words])
    return context


@register_method
class ProGrad(CoOp):
    name = "prograd"
    Config = ProGradConfig
    default_preset = "few_shot"
    presets = {
        "few_shot": Preset({}, {"optimizer": "sgd", "lr": 0.002, "batch_size": 32, "epochs": 200},
                           "released few-shot config for 8/16 shots (rn50.yaml): 16 tokens ending in 'a photo of a', "
                           "λ=1, T=1, SGD 0.002, 200 epochs (1 shot: 50, 2/4 shots: 100 epochs)"),
        "base_to_novel": Preset({}, {"optimizer": "sgd", "lr": 0.002, "batch_size": 32, "epochs": 100},
                                "released base-to-novel script (rn50_ep100.yaml, N_CTX 16, λ=1): 100 epochs"),
        "toy": Preset({"n_ctx": 8}, {**TOY_TRAIN, **TOY_CACHED_VIEWS}, "embedded toy world, CPU budget"),
    }

    def __init__(self, backbone, task, config):
        Method.__init__(self, backbone, task, config)
        self.context = padded_word_context(backbone, config.n_ctx, config.ctx_init,
                                           len(task.classnames) if config.class_specific else None)
        self.register_buffer("train_tokens", self.context.tokenized(task.classnames), persistent=False)
        self.register_buffer("zero_shot_text", zero_shot_text_features(
            backbone, task.classnames, config.templates or task.templates), persistent=False)

    def losses(self, images, labels):
        image_features = self.image_tower_features(images)  # CoOp leaves the image tower frozen
        with torch.no_grad():
            teacher = clip_logits(self.backbone, image_features, self.zero_shot_text)
        logits = clip_logits(self.backbone, image_features, self.class_features(self.train_tokens))
        ce = F.cross_entropy(logits, labels)
        t = self.config.temperature
        kl = F.kl_div(F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                      reduction="batchmean", log_target=True) * t * t
        return ce, kl, logits

    def training_loss(self, images, labels):
        ce, kl, logits = self.losses(images, labels)
        return LossOutput(ce, {"ce": ce.item(), "kl": kl.item()}, logits.detach())

    def backward(self, inputs, labels, scale=lambda loss: loss):
        ce, kl, logits = self.losses(inputs, labels)
        params = self.trainable_parameters()
        reference = loss_gradients(scale(kl), params, retain_graph=True)
        task_grads = loss_gradients(scale(ce), params)
        write_gradients(params, project_conflicting_all(task_grads, reference, self.config.lambda_))
        return LossOutput(ce, {"ce": ce.item(), "kl": kl.item()}, logits.detach())
