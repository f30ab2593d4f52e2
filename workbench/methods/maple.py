"""Deep vision-language prompts: IVLP (independent prompts in both towers) and MaPLe (Khattak et al.,
CVPR 2023: vision prompts coupled to the text prompts by one Linear per layer).

Prompt depth J means prompts at the embedding stage and at the inputs of blocks 1..J-1:
- text: the prompt "a photo of a {class}." whose first K tokens are learnable (placeholder slots
  1..K, overwritten at every stage); with K < the words' tokens the remaining words stay fixed,
  as in the released code (MaPLe: K=2, "a photo" learnable, "of a" fixed);
- vision: K tokens appended after the patches once positional embeddings are added (before
  ln_pre), overwritten at the inputs of blocks 1..J-1; the CLS token is pooled as usual.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import EMBED, END, CallableTokens
from ..engine.features import class_prompt
from .base import LossOutput, Method, Preset, register_method
from .common import ScoresImageEmbeddings, clip_logits
from .coop import TOY_TRAIN


def prompt_stages(depth: int) -> list[int]:
    """Stages of a prompt of depth J: the embedding stage, then the inputs of blocks 1..J-1."""
    return [EMBED, *range(1, depth)]


def stage_layer(stage: int) -> int:
    """Prompt layer index of a stage (0 for the embedding stage)."""
    return 0 if stage == EMBED else stage


def _check_depth(tower, depth: int, minimum: int = 1) -> None:
    if not minimum <= depth <= tower.num_layers:
        raise ValueError(f"{tower.tower_name} prompt depth must be in {minimum}..{tower.num_layers}, got {depth}")


class DeepTextPrompts(nn.Module):
    """Learnable text prompts of depth J: layer 0 fills the placeholder slots of the prompt text,
    layers 1..J-1 replace the same slots at the inputs of blocks 1..J-1."""

    def __init__(self, backbone, n_ctx: int, depth: int, ctx_init: str = "", init_std: float = 0.02,
                 name: str = "deep_text_prompts"):
        super().__init__()
        _check_depth(backbone.text, depth)
        width = backbone.text.width
        words = ctx_init.replace("_", " ").strip()
        first = None
        if words:
            tokens = backbone.tokenize([words])
            if n_ctx <= int(tokens.argmax(-1).item()) - 1:  # enough word tokens to fill the K slots
                with torch.no_grad():
                    first = backbone.text.embed(tokens)[0, 1:1 + n_ctx].float()
        if first is None:  # as released: random context and "X" placeholders
            first = torch.randn(n_ctx, width) * init_std
            words = " ".join(["X"] * n_ctx)
        self.prefix = words
        self.n_ctx, self.depth = n_ctx, depth
        self.ctx = nn.Parameter(first.clone().to(backbone.device))
        self.deep = nn.ParameterList([nn.Parameter(torch.randn(n_ctx, width, device=backbone.device) * init_std)
                                      for _ in range(depth - 1)])
        self.backbone_ref = [backbone]
        backbone.text.add_injection(name, CallableTokens(self._tokens, n_ctx, prompt_stages(depth), placeholder=True))

    def layer(self, index: int) -> torch.Tensor:
        """Prompt tokens of layer `index` (0 = embedding stage): [K, width]."""
        return self.ctx if index == 0 else self.deep[index - 1]

    def _tokens(self, stage, batch_size):
        return self.layer(stage_layer(stage)).unsqueeze(0)

    def prompts(self, classnames) -> list[str]:
        return [class_prompt(self.prefix + " {}.", c) for c in classnames]

    def tokenized(self, classnames) -> torch.Tensor:
        return self.backbone_ref[0].tokenize(self.prompts(classnames))


class DeepVisionPrompts(nn.Module):
    """Vision prompts of depth J, each layer its own N(0, init_std) tokens (VPT-deep, IVLP)."""

    def __init__(self, backbone, n_ctx: int, depth: int, init_std: float = 0.02, name: str = "deep_vision_prompts"):
        super().__init__()
        _check_depth(backbone.visual, depth)
        width = backbone.visual.width
        self.n_ctx, self.depth = n_ctx, depth
        self.tokens = nn.ParameterList([nn.Parameter(torch.randn(n_ctx, width, device=backbone.device) * init_std)
                                        for _ in range(depth)])
        backbone.visual.add_injection(name, CallableTokens(self._tokens, n_ctx, prompt_stages(depth), position=END))

    def layer(self, index: int) -> torch.Tensor:
        return self.tokens[index]

    def _tokens(self, stage, batch_size):
        return self.layer(stage_layer(stage)).unsqueeze(0)


class CoupledVisionPrompts(nn.Module):
    """MaPLe's vision prompts: layer i's tokens are F_i(text prompt of layer i), F_i a Linear from
    the text width to the vision width. As released, F_0 has its own init and F_1..F_{J-1} start
    as copies of one Linear."""

    def __init__(self, backbone, text_prompts: DeepTextPrompts, name: str = "coupled_vision_prompts"):
        super().__init__()
        depth = text_prompts.depth
        _check_depth(backbone.visual, depth)
        text_width, vision_width = backbone.text.width, backbone.visual.width
        first = nn.Linear(text_width, vision_width)
        deeper = nn.Linear(text_width, vision_width)
        self.couplings = nn.ModuleList([first] + [copy.deepcopy(deeper) for _ in range(depth - 1)])
        self.couplings.to(backbone.device)
        self.text_ref = [text_prompts]  # owned by the method
        self.n_ctx, self.depth = text_prompts.n_ctx, depth
        backbone.visual.add_injection(name, CallableTokens(self._tokens, self.n_ctx, prompt_stages(depth), position=END))

    def layer(self, index: int) -> torch.Tensor:
        return self.couplings[index](self.text_ref[0].layer(index))

    def _tokens(self, stage, batch_size):
        return self.layer(stage_layer(stage)).unsqueeze(0)


@dataclass
class IVLPConfig:
    n_ctx_text: int = 2
    n_ctx_vision: int = 2
    depth_text: int = 12  # J ≥ 1
    depth_vision: int = 12  # 0: no vision prompts (language-only deep prompting)
    ctx_init: str = "a photo of a"
    init_std: float = 0.02


B2N_MAPLE_TRAIN = {"optimizer": "sgd", "lr": 0.0035, "batch_size": 4, "epochs": 5}
B2N_PROMPTSRC_TRAIN = {"optimizer": "sgd", "lr": 0.0025, "batch_size": 4, "epochs": 20}
# CoOp's toy settings; deep prompts back-propagate through the image tower too (≈2× CoOp's cost per
# epoch on the CPU), so IVLP/MaPLe take 5 epochs (their released schedule is also short)
TOY_DEEP_TRAIN = {**TOY_TRAIN, "epochs": 5}


@register_method
class IVLP(ScoresImageEmbeddings, Method):
    name = "ivlp"
    paper_names = ("IVLP",)
    Config = IVLPConfig
    default_preset = "base_to_novel"
    presets = {
        "base_to_novel": Preset({}, B2N_MAPLE_TRAIN,
                                "MaPLe's configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml: 2+2 tokens, depth 12, "
                                "SGD 0.0035, batch 4, 5 epochs"),
        "base_to_novel_4x4": Preset({"n_ctx_text": 4, "n_ctx_vision": 4, "depth_text": 9, "depth_vision": 9},
                                    B2N_PROMPTSRC_TRAIN,
                                    "PromptSRC's configs/trainers/IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml: 4+4 tokens, depth 9, "
                                    "SGD 0.0025, batch 4, 20 epochs"),
        "language_only": Preset({"n_ctx_text": 4, "n_ctx_vision": 0, "depth_text": 12, "depth_vision": 0},
                                {**B2N_MAPLE_TRAIN, "lr": 0.0025},
                                "deep language prompting only (MaPLe's configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml)"),
        "toy": Preset({"depth_text": 3, "depth_vision": 3}, TOY_DEEP_TRAIN, "embedded toy world (4-layer towers), CPU"),
    }

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        self.text_prompts, self.vision_prompts = self.build_prompts(backbone, config)
        self.register_buffer("train_tokens", self.text_prompts.tokenized(task.classnames), persistent=False)

    def build_prompts(self, backbone, config):
        text = DeepTextPrompts(backbone, config.n_ctx_text, config.depth_text, config.ctx_init, config.init_std)
        vision = None
        if config.depth_vision > 0 and config.n_ctx_vision > 0:
            vision = DeepVisionPrompts(backbone, config.n_ctx_vision, config.depth_vision, config.init_std)
        return text, vision

    def prompted_logits(self, images, tokens):
        """Prompted image features, prompted class features and their logits."""
        image_features = self.backbone.encode_image(images)
        text_features = self.backbone.encode_text(tokens)
        return image_features, text_features, clip_logits(self.backbone, image_features, text_features)

    def training_loss(self, images, labels):
        _, _, logits = self.prompted_logits(images, self.train_tokens)
        return LossOutput(F.cross_entropy(logits, labels), logits=logits.detach())

    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        with torch.no_grad():
            self.eval_text = self.backbone.encode_text(self.text_prompts.tokenized(task.classnames))


MAPLE_CROSS = Preset({"depth": 3}, {**B2N_MAPLE_TRAIN, "lr": 0.0026, "epochs": 2},
                     "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml (also for domain generalization): "
                     "ImageNet 16 shots, "
                     "depth 3, SGD 0.0026, 2 epochs")


@dataclass
class MaPLeConfig:
    n_ctx: int = 2
    depth: int = 9  # J: prompts at the embedding stage and blocks 1..J-1 of both towers
    ctx_init: str = "a photo of a"
    init_std: float = 0.02


@register_method
class MaPLe(IVLP):
    name = "maple"
    paper_names = ("MaPLe",)
    Config = MaPLeConfig
    default_preset = "base_to_novel"
    presets = {
        "base_to_novel": Preset({}, B2N_MAPLE_TRAIN, "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml: 2 tokens from 'a photo "
                                                     "of a', depth 9, SGD 0.0035, batch 4, 5 epochs"),
        "cross_dataset": MAPLE_CROSS,
        "domain_generalization": MAPLE_CROSS,
        "toy": Preset({"depth": 3}, TOY_DEEP_TRAIN, "embedded toy world (4-layer towers), CPU budget"),
    }

    def build_prompts(self, backbone, config):
        text = DeepTextPrompts(backbone, config.n_ctx, config.depth, config.ctx_init, config.init_std)
        return text, CoupledVisionPrompts(backbone, text)
