"""MMRL (Guo & Gu, CVPR 2025): Multi-Modal Representation Learning.

A shared learnable representation space R (K tokens × d_r) is mapped, per layer, into both towers by
linear maps; the mapped tokens are inserted right after CLS (vision) and start-of-text (text) at the
input of block J-1 (layer J, 1-based) and overwritten at every later block. The image gives two
features: the class feature (CLS after ln_post @ CLIP's frozen proj) and the representation feature
(mean of the K tokens after ln_post @ a trainable projection). Training:

    L = α·CE(class) + (1−α)·CE(rep) + λ·(1 − cos(f_class, f_clip)) + λ·(1 − mean_c cos(w_c, w_c^clip))

Inference is decoupled: the training classes (domain "base") use the α-fusion of both heads; new
classes, other datasets and shifted domains use the class head only.

Facts from the released code (yunncheng/MMRL): mapping layers are clones of one Linear (identical
init); REP_LAYERS 6..12 are 1-based block inputs (0-based blocks 5..11); proj_rep ~ N(0, width^-0.5);
fusion is on logits (α·logits + (1−α)·logits_rep); logits use 100·cos (= CLIP's logit scale for the
OpenAI weights; here the backbone's logit scale); one prompt template per dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import CallableTokens
from .base import LossOutput, Method, Preset, register_method
from .common import TOY_CROP_SCALE

INJECTION = "mmrl_rep"

# λ per dataset (released trainers/config.py); datasets not listed use `default_reg_weight`
REG_WEIGHTS = {
    "stanford_cars": 7.0, "fgvc_aircraft": 6.0, "sun397": 6.0, "dtd": 6.0, "food101": 5.0,
    "oxford_flowers": 4.0, "ucf101": 3.0, "imagenet": 0.5, "caltech101": 0.5, "oxford_pets": 0.2,
    "eurosat": 0.01,
}
REP_DIMS = {"eurosat": 2048}  # d_r per dataset; others 512
DEFAULT_REP_DIM = 512
PAPER_DEPTH, PAPER_START_LAYER = 12, 6  # J=6 on the 12-block ViT-B/16
SPACES = ("shared", "unimodal", "text_to_vision")
INFERENCE = ("decoupled", "fused", "class")
FUSIONS = ("logits", "probs")
REG_LOSSES = ("cosine", "l1", "mse")


@dataclass
class MMRLConfig:
    n_tokens: int = 5  # K
    rep_dim: int | None = None  # d_r; None: per dataset (EuroSAT 2048, else 512)
    start_layer: int | None = None  # J (1-based): tokens enter blocks J..L; None: J=6 of 12 scaled to depth
    alpha: float = 0.7  # α: loss balance and base-class fusion weight
    reg_weight: float | None = None  # λ; None: per-dataset table REG_WEIGHTS
    default_reg_weight: float = 1.0  # λ for datasets outside the table (the released configs' base value)
    init_std: float = 0.02
    text_tokens: bool = True  # False: "w/o L" (Table 4)
    vision_tokens: bool = True  # False: "w/o V" (no representation feature: class head only)
    space: str = "shared"  # shared | unimodal ("w/o RS") | text_to_vision (MMRL†, MaPLe-style)
    inference: str = "decoupled"  # decoupled | fused ("w/o DS2") | class ("w/o DS1")
    fusion: str = "logits"  # logits (released code) | probs (paper's Eq.: α·p_c + (1−α)·p_r)
    template: str = ""  # prompt template; empty: the dataset's first template
    logit_scale: float | None = None  # None: the backbone's (CLIP's exp(t); 100 for OpenAI weights, as in the code)
    reg_loss: str = "cosine"  # cosine (paper, released) | l1 | mse: the Table 9 ablation, on raw features

    def __post_init__(self) -> None:
        if self.reg_loss not in REG_LOSSES:
            raise ValueError(f"method.reg_loss must be one of {', '.join(REG_LOSSES)}, got {self.reg_loss!r}")


def dataset_key(name: str) -> str:
    """'oxford_pets_base' -> 'oxford_pets' (base/new split suffixes removed)."""
    key = name.lower()
    for suffix in ("_base", "_new"):
        if key.endswith(suffix):
            key = key[: -len(suffix)]
    return key


def _train(batch: int, epochs: int, warmup: int = 1) -> dict:
    return {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 5e-4, "batch_size": batch, "epochs": epochs,
            "warmup_epochs": warmup, "warmup_lr": 1e-5, "schedule": "cosine", "crop_scale": (0.5, 1.0),
            "precision": "amp"}


PAPER = {"n_tokens": 5, "start_layer": PAPER_START_LAYER, "alpha": 0.7}


@register_method
class MMRL(Method):
    name = "mmrl"
    plots = ({"kind": "heatmap", "columns": ["token_norm.*"], "title": "Mapped token norms per layer"},)
    paper_names = ("MMRL",)
    Config = MMRLConfig
    default_preset = "base_to_novel"
    presets = {
        "base_to_novel": Preset(PAPER, _train(4, 10),
                                "ViT-B/16 base-to-novel (vit_b16.yaml): batch 4 x 10 epochs, λ per dataset"),
        "base_to_novel_imagenet": Preset(PAPER, _train(32, 5), "ImageNet base-to-novel: batch 32 x 5 epochs"),
        "few_shot": Preset({**PAPER, "default_reg_weight": 0.5}, _train(32, 50),
                           "few-shot (vit_b16_few_shot.yaml): batch 32 x 50 epochs, λ per dataset"),
        "few_shot_imagenet": Preset(PAPER, _train(32, 5), "ImageNet few-shot: batch 32 x 5 epochs"),
        "cross_dataset": Preset({**PAPER, "reg_weight": 0.2}, _train(32, 1, warmup=0),
                                "ImageNet source, 1 epoch, no warm-up, λ=0.2 (cross_datasets scripts)"),
        "domain_generalization": Preset({**PAPER, "reg_weight": 0.2}, _train(32, 1, warmup=0),
                                        "same model as cross_dataset (the code tests ImageNet variants with it)"),
        "toy": Preset({"n_tokens": 5, "rep_dim": 64, "alpha": 0.7, "reg_weight": 0.5},
                      {**_train(8, 10), "lr": 5e-3, "eval_batch_size": 256, "crop_scale": TOY_CROP_SCALE},
                      "embedded toy world on CPU (~40 s): d_r=64, J=3 of 4 (6 of 12 scaled), λ=0.5, "
                      "AdamW 5e-3, batch 8 x 10 epochs"),
    }

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        c = config
        if c.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {c.space!r}")
        if c.inference not in INFERENCE:
            raise ValueError(f"inference must be one of {INFERENCE}, got {c.inference!r}")
        if c.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {c.fusion!r}")
        if not (c.text_tokens or c.vision_tokens):
            raise ValueError("MMRL needs representation tokens in at least one tower")
        key = dataset_key(task.dataset)
        self.rep_dim = c.rep_dim or REP_DIMS.get(key, DEFAULT_REP_DIM)
        self.reg_weight = c.reg_weight if c.reg_weight is not None else REG_WEIGHTS.get(key, c.default_reg_weight)
        self.vision_stages = self._stages(backbone.visual) if c.vision_tokens else []
        self.text_stages = self._stages(backbone.text) if c.text_tokens else []
        k, wv, wt = c.n_tokens, backbone.visual.width, backbone.text.width

        def tokens(count, width):
            return nn.Parameter(torch.randn(count, k, width) * c.init_std)

        if c.space == "shared":
            self.rep_space = nn.Parameter(torch.randn(k, self.rep_dim) * c.init_std)
            self.map_vision = _identical_linears(self.rep_dim, wv, len(self.vision_stages))
            self.map_text = _identical_linears(self.rep_dim, wt, len(self.text_stages))
        elif c.space == "unimodal":  # separate learnable tokens per modality and layer, no shared space
            self.tokens_vision = tokens(len(self.vision_stages), wv)
            self.tokens_text = tokens(len(self.text_stages), wt)
        else:  # text_to_vision: text tokens are learned, vision tokens mapped from them (MaPLe's coupling)
            stages = self._stages(backbone.text)
            if c.vision_tokens and len(self.vision_stages) != len(stages):
                raise ValueError("text_to_vision needs as many token layers in the text tower as in the vision tower")
            self.tokens_text = tokens(len(stages), wt)
            self.map_vision = _identical_linears(wt, wv, len(self.vision_stages))
        if c.vision_tokens:
            proj = backbone.clip.visual.proj
            out_dim = proj.shape[1] if proj is not None else wv
            self.proj_rep = nn.Parameter(torch.randn(wv, out_dim) * wv ** -0.5)
            backbone.visual.add_injection(INJECTION, CallableTokens(self._vision_tokens, k, self.vision_stages))
        if c.text_tokens:
            backbone.text.add_injection(INJECTION, CallableTokens(self._text_tokens, k, self.text_stages))

        self.register_buffer("train_tokens", self._tokenize(task), persistent=False)
        self.register_buffer("frozen_text", None, persistent=False)  # zero-shot class features, on first use
        self.eval_head = "class"
        self.to(backbone.device)

    # -- representation tokens ------------------------------------------------------------------
    def _stages(self, tower) -> list[int]:
        depth = tower.num_layers
        start = self.config.start_layer
        if start is None:
            start = 1 + round((PAPER_START_LAYER - 1) * depth / PAPER_DEPTH)
        if not 1 <= start <= depth:
            raise ValueError(f"start_layer {start} is outside 1..{depth} for the {depth}-block {tower.tower_name} "
                             "tower (the ViT-B/16 presets use J=6; use the toy preset or set start_layer)")
        return list(range(start - 1, depth))  # 0-based block inputs

    def vision_layer_tokens(self, index: int) -> torch.Tensor:
        """[K, vision width] tokens entering vision block `self.vision_stages[index]`."""
        if self.config.space == "shared":
            return self.map_vision[index](self.rep_space)
        if self.config.space == "unimodal":
            return self.tokens_vision[index]
        return self.map_vision[index](self.tokens_text[index])

    def text_layer_tokens(self, index: int) -> torch.Tensor:
        if self.config.space == "shared":
            return self.map_text[index](self.rep_space)
        return self.tokens_text[index]

    def _vision_tokens(self, stage, batch_size):
        return self.vision_layer_tokens(self.vision_stages.index(stage)).unsqueeze(0)

    def _text_tokens(self, stage, batch_size):
        return self.text_layer_tokens(self.text_stages.index(stage)).unsqueeze(0)

    # -- features -------------------------------------------------------------------------------
    @property
    def clip_text(self) -> torch.Tensor:
        """Frozen CLIP's normalized features of the training prompts (the text regularization target)."""
        if self.frozen_text is None:
            with torch.no_grad(), self.backbone.extensions_disabled():
                self.frozen_text = F.normalize(self.backbone.forward_text(self.train_tokens).features.float(), dim=-1)
        return self.frozen_text

    def _tokenize(self, task) -> torch.Tensor:
        """One prompt per class (the released code's per-dataset template)."""
        template = self.config.template or task.templates[0]
        return self.backbone.tokenize([template.format(c.replace("_", " ")) for c in task.classnames])

    def image_features(self, images, with_rep: bool = True):
        """(class feature, representation feature or None), both unnormalized."""
        out = self.backbone.forward_image(images)
        if not (with_rep and self.config.vision_tokens):
            return out.features, None
        rep = out.last_hidden[:, out.token_slots[INJECTION]].mean(dim=1)
        return out.features, rep @ self.proj_rep.to(rep.dtype)

    def text_features(self, tokens) -> torch.Tensor:
        return self.backbone.forward_text(tokens).features

    def logits(self, image_features, text_features) -> torch.Tensor:
        """scale · cos(image, class) [B, C]."""
        scale = self.config.logit_scale or self.backbone.logit_scale
        return scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()

    def fuse(self, logits_class, logits_rep) -> torch.Tensor:
        a = self.config.alpha
        if self.config.fusion == "logits":
            return a * logits_class + (1 - a) * logits_rep
        probs = a * logits_class.softmax(-1) + (1 - a) * logits_rep.softmax(-1)
        return probs.clamp_min(1e-30).log()

    # -- training -------------------------------------------------------------------------------
    def training_loss(self, images, labels):
        c = self.config
        text = self.text_features(self.train_tokens) if c.text_tokens else self.clip_text
        f_class, f_rep = self.image_features(images)
        logits = self.logits(f_class, text)
        ce_class = F.cross_entropy(logits, labels)
        scalars = {"ce_class": ce_class.item()}
        if f_rep is not None:
            logits_rep = self.logits(f_rep, text)
            ce_rep = F.cross_entropy(logits_rep, labels)
            loss = c.alpha * ce_class + (1 - c.alpha) * ce_rep
            scalars["ce_rep"] = ce_rep.item()
            train_logits = self.fuse(logits, logits_rep)
        else:  # no vision tokens: no representation feature
            loss, train_logits = ce_class, logits
        if c.vision_tokens:
            with torch.no_grad(), self.backbone.extensions_disabled():
                clip_image = self.backbone.encode_image(images)
            reg_image = self.regularization(f_class, clip_image)
        else:
            reg_image = torch.zeros((), device=images.device)
        reg_text = self.regularization(text, self.clip_text.to(text.dtype))
        loss = loss + self.reg_weight * (reg_image + reg_text)
        scalars.update(reg_image=reg_image.item(), reg_text=reg_text.item())
        return LossOutput(loss, scalars, train_logits.detach())

    def regularization(self, features: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
        """The penalty towards frozen CLIP's features: 1 − mean cosine (the paper's and the released code's),
        or, for Table 9, the element-mean L1 / squared distance of the raw features (the paper does not say
        how its L1 and MSE rows were computed; this is the plain torch loss on the same tensors)."""
        if self.config.reg_loss == "cosine":
            return 1 - F.cosine_similarity(features, frozen, dim=-1).mean()
        if self.config.reg_loss == "l1":
            return F.l1_loss(features, frozen)
        return F.mse_loss(features, frozen)

    def learned_scalars(self) -> dict[str, float]:
        """The mean L2 norm of the mapped tokens per layer (1-based) and modality: what training moves.
        α and λ are fixed settings (in the run's resolved settings), not learned."""
        out = {}
        with torch.no_grad():
            for i, stage in enumerate(self.vision_stages):
                out[f"token_norm.vision.{stage + 1}"] = float(self.vision_layer_tokens(i).norm(dim=-1).mean())
            for i, stage in enumerate(self.text_stages):
                out[f"token_norm.text.{stage + 1}"] = float(self.text_layer_tokens(i).norm(dim=-1).mean())
        return out

    # -- evaluation -----------------------------------------------------------------------------
    def head_for(self, domain: str) -> str:
        """'fused' (class + representation features) or 'class' for an evaluation domain."""
        if not self.config.vision_tokens or self.config.inference == "class":
            return "class"
        if self.config.inference == "fused":
            return "fused"
        return "fused" if domain == "base" else "class"

    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        with torch.no_grad():
            self.eval_text = self.text_features(self._tokenize(task))
        self.eval_head = self.head_for(domain)

    def eval_logits(self, images):
        return self.eval_outputs(images)[0]

    def eval_outputs(self, images):
        """Logits of the domain's head, and the class-token feature f_c as the image embedding."""
        fused = self.eval_head == "fused"
        f_class, f_rep = self.image_features(images, with_rep=fused)
        logits = self.logits(f_class, self.eval_text)
        return (self.fuse(logits, self.logits(f_rep, self.eval_text)) if fused else logits), f_class

    def eval_embeddings(self, images):
        return self.image_features(images, with_rep=False)[0]


def _identical_linears(d_in: int, d_out: int, count: int) -> nn.ModuleList:
    """`count` Linear layers starting from the same weights (clones of one, as the released code)."""
    layers = nn.ModuleList([nn.Linear(d_in, d_out) for _ in range(count)])
    for layer in layers[1:]:
        layer.load_state_dict(layers[0].state_dict())
    return layers
