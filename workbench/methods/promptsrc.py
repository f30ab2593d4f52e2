"""PromptSRC (Khattak et al., ICCV 2023): IVLP deep prompts regularised towards frozen CLIP
(mutual agreement: L1 on text and image features, KL on logits) and Gaussian prompt aggregation
(GPA): the prompts used at test time are Σ_e w_e·θ_e over epochs, w_e ∝ N(e; mean, std).

Facts from muzairkhattak/PromptSRC [code]: trainers/promptsrc.py builds the frozen text features for
every dataset from the 60 templates of trainers/imagenet_templates.py (IMAGENET_TEMPLATES;
data_manifests/templates/promptsrc_imagenet60.yaml), averaging the unnormalized features and
normalizing the mean; configs/trainers/PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml gives
GPA mean 30 std 30 for ImageNet, Caltech101, OxfordPets, Food101, UCF101, SUN397 and (commented)
45 / 5 for StanfordCars, Flowers102, FGVCAircraft, DTD, EuroSAT.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import LossOutput, Preset, register_method
from .common import clip_logits, method_templates, zero_shot_text_features
from .coop import TOY_TRAIN
from .maple import B2N_PROMPTSRC_TRAIN, IVLP


@dataclass
class PromptSRCConfig:
    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    depth_text: int = 9
    depth_vision: int = 9
    ctx_init: str = "a photo of a"
    init_std: float = 0.02
    text_weight: float = 25.0  # L1(prompted text features, frozen template-ensemble features)
    image_weight: float = 10.0  # L1(prompted image features, frozen image features)
    logits_weight: float = 1.0  # KL(zero-shot logits ‖ prompted logits)
    gpa_mean: float = 15.0  # Gaussian over epochs 1..E (1-based, as released)
    gpa_std: float = 1.0
    templates: tuple[str, ...] | None = None  # frozen text features; None: `template_set`'s
    template_set: str = "promptsrc_imagenet60"  # data_manifests/templates/<name>.yaml


def gaussian_epoch_weights(epochs: int, mean: float, std: float) -> list[float]:
    """GPA weights of epochs 1..E: the Gaussian pdf at each epoch, normalised to sum to 1
    (computed in log space so far-off epochs underflow to 0 without dividing by 0)."""
    logs = [-0.5 * ((e - mean) / std) ** 2 for e in range(1, epochs + 1)]
    top = max(logs)
    weights = [math.exp(v - top) for v in logs]
    total = sum(weights)
    return [w / total for w in weights]


CROSS = Preset({"depth_text": 3, "depth_vision": 3, "gpa_mean": 6.0, "gpa_std": 10.0}, B2N_PROMPTSRC_TRAIN,
               "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml (also for domain generalization): depth 3, GPA mean 6 std 10, "
               "SGD 0.0025, batch 4, 20 epochs")


def _buffer_name(param_name: str) -> str:
    return param_name.replace(".", "__")


@register_method
class PromptSRC(IVLP):
    name = "promptsrc"
    paper_names = ("PromptSRC",)
    Config = PromptSRCConfig
    version = 2  # underscores read as spaces; 60-template teacher (raw mean); GPA 45/5 few-shot presets
    default_preset = "base_to_novel"
    presets = {
        "base_to_novel": Preset({}, B2N_PROMPTSRC_TRAIN,
                                "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml: 4+4 tokens, depth 9, L1 weights 25/10, "
                                "GPA mean 15 std 1, SGD 0.0025, batch 4, 20 epochs"),
        "few_shot": Preset({"gpa_mean": 30.0, "gpa_std": 30.0}, {**B2N_PROMPTSRC_TRAIN, "epochs": 50},
                           "vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml: 50 epochs, GPA mean 30 std 30 "
                           "(ImageNet, Caltech101, OxfordPets, Food101, UCF101, SUN397)"),
        **{f"few_shot_{d}": Preset({"gpa_mean": 45.0, "gpa_std": 5.0}, {**B2N_PROMPTSRC_TRAIN, "epochs": 50},
                                   f"vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml, its setting for {d}: "
                                   "GPA mean 45 std 5, 50 epochs")
           for d in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")},
        "cross_dataset": CROSS,
        "domain_generalization": CROSS,
        "toy": Preset({"depth_text": 3, "depth_vision": 3, "gpa_mean": 7.5, "gpa_std": 1.0, "template_set": ""},
                      TOY_TRAIN, "embedded toy world (4-layer towers), 10 epochs, GPA peak scaled to 15/20 of the "
                                 "run; the toy's own template (its CLIP never saw ImageNet's template styles)"),
    }

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        templates = method_templates(task, config.templates, config.template_set)
        self.register_buffer("frozen_text", zero_shot_text_features(backbone, task.classnames, templates,
                                                                    average="raw"), persistent=False)
        self.state_gpa = nn.Module()  # running Σ w_e·θ_e, checkpointed with the trainable state
        self.ensure_gpa_buffers()

    # -- losses ---------------------------------------------------------------------------------
    def training_loss(self, images, labels):
        image_features, text_features, logits = self.prompted_logits(images, self.train_tokens)
        with torch.no_grad(), self.backbone.extensions_disabled():
            frozen_image = F.normalize(self.backbone.encode_image(images), dim=-1)
            zero_shot_logits = clip_logits(self.backbone, frozen_image, self.frozen_text)
        ce = F.cross_entropy(logits, labels)
        text_l1 = F.l1_loss(F.normalize(text_features, dim=-1), self.frozen_text.to(text_features.dtype))
        image_l1 = F.l1_loss(F.normalize(image_features, dim=-1), frozen_image.to(image_features.dtype))
        kl = F.kl_div(F.log_softmax(logits, dim=-1), F.log_softmax(zero_shot_logits, dim=-1),
                      reduction="sum", log_target=True) / logits.numel()  # as released: sum / (B·C)
        c = self.config
        loss = ce + c.text_weight * text_l1 + c.image_weight * image_l1 + c.logits_weight * kl
        return LossOutput(loss, {"ce": ce.item(), "text_l1": text_l1.item(), "image_l1": image_l1.item(),
                                 "kl": kl.item()}, logits.detach())

    # -- Gaussian prompt aggregation ------------------------------------------------------------
    def gpa_parameters(self) -> dict[str, nn.Parameter]:
        """Every trainable parameter is aggregated (the released code averages the whole state)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def ensure_gpa_buffers(self) -> None:
        for name, p in self.gpa_parameters().items():
            key = _buffer_name(name)
            if not hasattr(self.state_gpa, key):
                self.state_gpa.register_buffer(key, torch.zeros_like(p, requires_grad=False), persistent=True)

    def gpa_weights(self, epochs: int) -> list[float]:
        return gaussian_epoch_weights(epochs, self.config.gpa_mean, self.config.gpa_std)

    @torch.no_grad()
    def on_epoch_end(self, epoch, epochs):
        self.ensure_gpa_buffers()
        weight = self.gpa_weights(epochs)[epoch]
        for name, p in self.gpa_parameters().items():
            running = getattr(self.state_gpa, _buffer_name(name))
            if epoch == 0:
                running.zero_()
            running.add_(p.detach(), alpha=weight)
        if epoch == epochs - 1:  # training is over: test with the aggregated prompts
            for name, p in self.gpa_parameters().items():
                p.copy_(getattr(self.state_gpa, _buffer_name(name)))

    def load_trainable_state_dict(self, state):
        self.ensure_gpa_buffers()
        super().load_trainable_state_dict(state)
