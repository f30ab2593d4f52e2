"""ProGrad (Zhu et al., ICCV 2023): CoOp whose cross-entropy gradient is projected against the
gradient of KL(zero-shot ‖ prompted) whenever the two conflict (per parameter tensor, as released):
g ← g − λ·⟨g, g_kl⟩/‖g_kl‖²·g_kl  if ⟨g, g_kl⟩ < 0.

Facts from BeierZhu/Prompt-align, ProGrad.public/ [code]:
- trainers/prograd.py has its own CUSTOM_TEMPLATES (data_manifests/templates/prograd.yaml, e.g.
  "a type of pet, a photo of a {}."); the zero-shot teacher prompts with it, and with CTX_INIT the
  context starts as that template without " {}.": its words fill the last context slots (counted
  by spaces: a word split into several tokens, like "pet,", leaves its extra tokens as fixed text
  after the context), the first slots are zero;
- README + configs/trainers/ProGrad/rn50*.yaml: SGD 0.002, batch 32, cosine, 1 warm-up epoch, T=1,
  16 tokens; 1 shot rn50_ep50, 2/4 shots rn50_ep100, 8/16 shots rn50 (200 epochs); λ=1, except
  0.8 at 8 and 16 shots on Flowers102, DTD and EuroSAT; scripts/base2new_train_prograd.sh:
  rn50_ep100, 16 tokens, λ=1 (its SHOTS=4; our protocol's shot count applies).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..engine.gradients import loss_gradients, project_conflicting_all, write_gradients
from ._dual_shared import DUAL_SHARED_PLOTS, DualSharedSwitch
from .base import LossOutput, Method, Preset, register_method
from .common import TextContext, clip_logits, method_templates, zero_shot_text_features
from .coop import TOY_CACHED_VIEWS, TOY_TRAIN, CoOp, dassl_sgd


@dataclass
class ProGradConfig(DualSharedSwitch):  # dual_shared=True: DsRA's plug-in (Table 5 of papers/dsra.txt)
    n_ctx: int = 16
    # words placed in the LAST context slots, the others start at zero ("X … X a photo of a {class}.");
    # None: the teacher template without " {}." (released CTX_INIT: True); "": random N(0, 0.02)
    ctx_init: str | None = None
    class_specific: bool = False
    lambda_: float = 1.0  # projection strength λ
    temperature: float = 1.0  # T of the KL to zero-shot CLIP
    templates: tuple[str, ...] | None = None  # zero-shot teacher prompts; None: `template_set`'s for the dataset
    template_set: str = "prograd"  # data_manifests/templates/<name>.yaml; datasets it lacks use their own


def padded_word_context(backbone, n_ctx: int, ctx_init: str, num_classes: int | None = None) -> TextContext:
    """CoOp context of n_ctx tokens whose last slots hold the words of `ctx_init` and whose first
    slots are zero (ProGrad's initialisation); random N(0, 0.02) without words. As released, the
    words are counted by spaces: the last n_words slots take the first n_words tokens' embeddings."""
    context = TextContext(backbone, n_ctx=n_ctx, num_classes=num_classes)
    words = ctx_init.replace("_", " ").strip()
    if not words:
        return context
    tokens = backbone.tokenize([words])
    n_words = len(words.split(" "))
    if n_words > n_ctx:
        raise ValueError(f"ctx_init {words!r} has {n_words} words, more than n_ctx={n_ctx}")
    with torch.no_grad():
        embedded = backbone.text.embed(tokens)[0, 1:1 + n_words].float()
        context.ctx.zero_()
        context.ctx[..., n_ctx - n_words:, :] = embedded
    context.prefix = " ".join(["X"] * (n_ctx - n_words) + [words])
    return context


def template_words(template: str) -> str:
    """ProGrad's initial context: the template's words before the class name ("a type of pet, a photo
    of a"; the released `replace(" {}.", "")` for its templates, which all end in the class name)."""
    return template.split("{}")[0].strip()


@register_method
class ProGrad(CoOp):
    name = "prograd"
    paper_names = ("ProGrad",)
    Config = ProGradConfig
    version = 2  # underscores read as spaces; ProGrad's own templates and context init; released presets
    plots = DUAL_SHARED_PLOTS  # drawn only for runs with the DsRA plug-in (method.dual_shared)
    default_preset = "few_shot"
    presets = {
        "few_shot": Preset({}, dassl_sgd(200), "8/16 shots (README, rn50.yaml): 16 tokens ending in ProGrad's "
                                               "template words, λ=1, T=1, SGD 0.002, batch 32, 200 epochs"),
        "few_shot_1shot": Preset({}, dassl_sgd(50), "1 shot (README): rn50_ep50.yaml, 50 epochs"),
        "few_shot_2shot": Preset({}, dassl_sgd(100), "2 shots (README): rn50_ep100.yaml, 100 epochs"),
        "few_shot_4shot": Preset({}, dassl_sgd(100), "4 shots (README): rn50_ep100.yaml, 100 epochs"),
        "few_shot_imagenet": Preset({}, dassl_sgd(50), "ImageNet: 50 epochs (README's eval example loads epoch 50; "
                                                       "CoOp's COOP.md: *_ep50 for ImageNet), rn50_ep50.yaml"),
        **{f"few_shot_{d}_{k}shot": Preset({"lambda_": 0.8}, dassl_sgd(200),
                                           f"{k} shots on {d} (README): λ=0.8, rn50.yaml, 200 epochs")
           for d in ("oxford_flowers", "dtd", "eurosat") for k in (8, 16)},
        "base_to_novel": Preset({}, dassl_sgd(100),
                                "scripts/base2new_train_prograd.sh: rn50_ep100.yaml, 16 tokens, λ=1, 100 epochs"),
        "toy": Preset({"n_ctx": 8}, {**TOY_TRAIN, **TOY_CACHED_VIEWS}, "embedded toy world, CPU budget"),
    }

    def __init__(self, backbone, task, config):
        Method.__init__(self, backbone, task, config)
        templates = method_templates(task, config.templates, config.template_set)
        ctx_init = template_words(templates[0]) if config.ctx_init is None else config.ctx_init
        self.context = padded_word_context(backbone, config.n_ctx, ctx_init,
                                           len(task.classnames) if config.class_specific else None)
        self.register_buffer("train_tokens", self.context.tokenized(task.classnames), persistent=False)
        self.register_buffer("zero_shot_text", zero_shot_text_features(backbone, task.classnames, templates),
                             persistent=False)

    def losses(self, images, labels):
        image_features = self.image_tower_features(images)  # CoOp leaves the image tower frozen
        with torch.no_grad():  # zero-shot CLIP: the pretrained tower's features (adapted ones with a plug-in)
            teacher = clip_logits(self.backbone, self.zero_shot_image_features(images, image_features),
                                  self.zero_shot_text)
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
