"""Pieces several methods share: CLIP logits, frozen zero-shot class features, the templates a method
prompts with, learnable text context."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import EMBED, CallableTokens
from ..engine.features import class_prompt, class_text_features

# Toy presets crop mildly: toy objects are small, and crops below ~0.8 of the 48-pixel image often cut
# the object out (CoOp on the embedded model lost ~6 points of base accuracy with (0.5, 1)).
TOY_CROP_SCALE = (0.8, 1.0)


def clip_logits(backbone, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """logit_scale · cos(image, class) for every pair: [B, C] (or [B, C] from per-image [B, C, D])."""
    img = F.normalize(image_features, dim=-1)
    txt = F.normalize(text_features, dim=-1)
    scale = backbone.logit_scale.to(img.dtype)
    if txt.dim() == 3:
        return scale * torch.einsum("bd,bcd->bc", img, txt)
    return scale * img @ txt.t()


class ScoresImageEmbeddings:
    """Mixin for methods whose evaluation logits are logit_scale · cos(eval_embeddings(x), eval_text):
    logits and embeddings then come from one image encoding."""

    def eval_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.eval_outputs(inputs)[0]

    def eval_outputs(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.eval_embeddings(inputs)
        return clip_logits(self.backbone, embeddings, self.eval_text.to(embeddings.device)), embeddings


def dataset_key(name: str) -> str:
    """'oxford_pets_base' -> 'oxford_pets' (base/new split suffixes removed)."""
    key = name.lower()
    for suffix in ("_base", "_new"):
        key = key.removesuffix(suffix)
    return key


def method_templates(task, explicit: Sequence[str] | None = None, template_set: str | None = None) -> tuple[str, ...]:
    """Templates a method prompts `task`'s classes with: `explicit` ones, else the named set's for the
    task's dataset (data_manifests/templates), else the dataset's own (CoOp's, in its manifest)."""
    if explicit:
        return tuple(explicit)
    if template_set:
        from ..data.templates import load_template_set

        found = load_template_set(template_set).for_dataset(dataset_key(task.dataset))
        if found:
            return found
    return tuple(task.templates)


def zero_shot_text_features(backbone, classnames: Sequence[str], templates: Sequence[str],
                            average: str = "normalized") -> torch.Tensor:
    """Frozen CLIP class embeddings (template ensemble), computed with every extension disabled.
    average="normalized": mean of the normalized prompt features (CLIP's ensembling); "raw": mean of
    the unnormalized ones (PromptSRC's teacher); normalized after averaging either way."""
    with backbone.extensions_disabled():
        if average == "normalized":
            return class_text_features(backbone, classnames, templates).to(backbone.device)
        if average != "raw":
            raise ValueError(f"average must be 'normalized' or 'raw', got {average!r}")
        prompts = [class_prompt(t, c) for c in classnames for t in templates]
        with torch.no_grad():
            feats = torch.cat([backbone.encode_text(backbone.tokenize(prompts[i:i + 512])).float()
                               for i in range(0, len(prompts), 512)])
        mean = feats.view(len(classnames), len(templates), -1).mean(dim=1)
        return F.normalize(mean, dim=-1).to(backbone.device)


class TextContext(nn.Module):
    """CoOp's learnable context: prompts "X X … X {class}." whose K placeholder embeddings are
    replaced by learnable vectors (shared, or one set per class), through a placeholder token
    injection at the text tower's embedding stage. `deep_stages` adds per-layer replacements."""

    def __init__(self, backbone, n_ctx: int = 16, ctx_init: str = "", num_classes: int | None = None,
                 init_std: float = 0.02, name: str = "ctx"):
        super().__init__()
        self.backbone_ref = [backbone]  # not a submodule: the method owns the backbone
        width = backbone.text.width
        if ctx_init:
            ctx_init = ctx_init.replace("_", " ").strip()
            tokens = backbone.tokenize([ctx_init])
            n_ctx = int(tokens.argmax(-1).item()) - 1  # tokens between start- and end-of-text
            with torch.no_grad():
                init = backbone.text.embed(tokens)[0, 1:1 + n_ctx].float()
            self.prefix = ctx_init
        else:
            init = torch.randn(n_ctx, width) * init_std
            self.prefix = " ".join(["X"] * n_ctx)
        self.n_ctx = n_ctx
        self.class_specific = num_classes is not None
        if self.class_specific:
            init = init.unsqueeze(0).repeat(num_classes, 1, 1)
        self.ctx = nn.Parameter(init.clone())
        self.injection_name = name
        self._per_prompt_ctx: torch.Tensor | None = None
        backbone.text.add_injection(name, CallableTokens(self._tokens, n_ctx, stages=[EMBED], placeholder=True))

    def _tokens(self, stage, batch_size):
        if self._per_prompt_ctx is not None:
            return self._per_prompt_ctx
        return self.ctx if self.class_specific else self.ctx.unsqueeze(0)

    def prompts(self, classnames: Sequence[str]) -> list[str]:
        return [class_prompt(self.prefix + " {}.", c) for c in classnames]

    def tokenized(self, classnames: Sequence[str]) -> torch.Tensor:
        return self.backbone_ref[0].tokenize(self.prompts(classnames))

    def encode(self, tokens: torch.Tensor, per_prompt_ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Text features of tokenized prompts with the current context; `per_prompt_ctx` [N, K, width]
        overrides it per prompt (CoCoOp's image-conditioned context)."""
        self._per_prompt_ctx = per_prompt_ctx
        try:
            return self.backbone_ref[0].encode_text(tokens)
        finally:
            self._per_prompt_ctx = None
