"""RAda (Rational Adaptation, "One Last Attention for Your Vision-Language Model"): a mask on the
rational matrix of the final image-text inner product, learned by one attention layer at the end.

    R = f̂ ⊙ ŵ_c ∈ R^{B×C×D}          f̂: normalized image feature, ŵ_c: normalized class text feature
    M = relu(1 + P_o(mean_i softmax(Q_i Kᵀ/√d_h) V))   queries f̂, ŵ, R; keys/values R; 8 heads; P_o = 0 at init
    logits = s · Σ_D M ⊙ R             (= s·cos(f, w_c), zero-shot CLIP, while M = 1)
    L = CE(logits, y) + λ · reg(M − 1)    reg: the paper's L2 (mean of squares, λ = 1.5, Appendix E)

The mask module is `workbench.methods._rada_mask.RationalMask` (reusable for FFT, TTT, other VLMs);
this module is the EFT method: both towers frozen, trained on cached image features, class text
features from the frozen text tower. Compositions (Table 2's extended rows, one switch, `compose`):
"coop" learns CoOp's text context (methods.common.TextContext, initialised from "a photo of a" so
step 0 is still zero-shot CLIP) under the mask; "clip_adapter" puts CLIP-Adapter's residual bottleneck
(methods.clip_adapter.bottleneck_mlp, α = 0.2) on the image feature before R. SigLIP-style models
(open_clip `logit_bias`): logits = s · Σ_D M ⊙ R + b (the rational matrix of its inner product).

Facts from the released code (khufia/RAda, eft/trainers/rada.py, eft/train.py, eft/configs/trainers/RAda,
eft/scripts/rada/train.sh) [code]:
- class features from one prompt "a photo of a {class}." (TRAINER.RADA.CTX_INIT), frozen; both features
  normalized before R; the logit scale is CLIP's exp(logit_scale), not trained;
- SimpleMultiheadAttention: 8 heads, separate Linear q-projections for the three queries, Linear k, v,
  out projection with weight and bias zero; queries s^½·f̂, s^½·ŵ, s·R, keys/values s·R;
- its softmax runs over the whole C×C weight map of a head (flattened), divided by a temperature
  (--temp, default 1), and is multiplied by C; the three queries' weights are averaged before V;
- mask regularization LInfLoss: per sample max |M − 1| over classes and dims, mean over the batch,
  weighted by --alpha (the paper reports L2 ‖M − 1‖² with weight 1.5: our default; `reg_loss="linf"`);
- only the attention is trained (names containing "mha"); base-to-novel config
  lr_1e-3_layers_4_epochs_5_base2new.yaml: Adam, weight decay 5e-4, cosine, 1 constant warm-up epoch at
  1e-5, random resized crop + flip, 16 shots; batch, lr, epochs, α and temperature come from run.sh's
  command line (the paper: batch 1, lr 0.0009, 13 epochs for all datasets);
- TRAINER.RADA.PROJ_LAYERS / --layers is parsed but the trainer builds one attention layer.

Choices where the paper is silent (each a field): row softmax (the paper cites standard attention [43])
with the released flat form as `softmax="flat"`; the released input scaling (`input_scale`); more
layers (Table 10) take the previous mask as their one query and add residually (Appendix H); AdamW
(the engine's Adam-family optimizer) with the released weight decay.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ._rada_mask import QUERIES, SOFTMAX, RationalMask
from .base import LossOutput, Method, Preset, register_method
from .clip_adapter import bottleneck_mlp
from .common import TOY_CROP_SCALE, TextContext, zero_shot_text_features

REG_LOSSES = ("l2", "l1", "linf")
COMPOSE = ("none", "coop", "clip_adapter")
PAPER_TEMPLATE = ("a photo of a {}.",)


@dataclass
class RAdaConfig:
    heads: int = field(default=8, metadata={"help": "attention heads of the mask layer (paper and code: 8)"})
    layers: int = field(default=1, metadata={"help": "attention layers at the end (Table 10: 1 or 2)"})
    queries: tuple[str, ...] = field(default=QUERIES, metadata={
        "help": "queries of the first layer, from image, text, rational (Table 4's query ablation)"})
    mask_function: str = field(default="attention", metadata={
        "help": "attention (RAda) | mlp (Table 4's ablation: a per-element MLP on s·R, no class interaction)"})
    softmax: str = field(default="rows", metadata={
        "help": "rows: softmax over keys (paper, standard attention); flat: over the C×C map × C (released)"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature (released --temp, default 1)"})
    input_scale: bool = field(default=True, metadata={
        "help": "scale queries by s^½ (features) and s (R), keys/values by s, as released; False: unscaled"})
    reg_loss: str = field(default="l2", metadata={
        "help": "mask regularization: l2 mean (M−1)² (paper), l1 mean |M−1|, linf per-sample max |M−1| (released)"})
    reg_weight: float = field(default=1.5, metadata={"help": "λ of the mask regularization (paper EFT: 1.5)"})
    class_chunk: int | None = field(default=None, metadata={
        "help": "query classes per attention chunk (exact); None: as many as keep one query's weights < 256 MB"})
    compose: str = field(default="none", metadata={
        "help": "none | coop (learn CoOp text context under the mask) | clip_adapter (CLIP-Adapter on f)"})
    n_ctx: int = field(default=4, metadata={"help": "compose=coop: context tokens (from ctx_init when given)"})
    ctx_init: str = field(default="a photo of a", metadata={"help": "compose=coop: context initialisation"})
    adapter_reduction: int = field(default=4, metadata={"help": "compose=clip_adapter: bottleneck D / reduction"})
    adapter_ratio: float = field(default=0.2, metadata={"help": "compose=clip_adapter: α of the residual blend"})
    templates: tuple[str, ...] | None = field(default=PAPER_TEMPLATE, metadata={
        "help": "class prompt templates (released: 'a photo of a {}.'); None: the dataset's own"})

    def __post_init__(self):
        self.queries = tuple(self.queries)
        if self.templates is not None:
            self.templates = tuple(self.templates)
        problems = []
        for name, choices in (("softmax", SOFTMAX), ("reg_loss", REG_LOSSES), ("compose", COMPOSE),
                              ("mask_function", ("attention", "mlp"))):
            if getattr(self, name) not in choices:
                problems.append(f"method.{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if not self.queries or any(q not in QUERIES for q in self.queries):
            problems.append(f"method.queries must be names from {', '.join(QUERIES)}, got {self.queries!r}")
        if self.heads < 1 or self.layers < 1:
            problems.append(f"method.heads and method.layers must be >= 1, got {self.heads}, {self.layers}")
        if self.reg_weight < 0:
            problems.append(f"method.reg_weight must be >= 0, got {self.reg_weight}")
        if self.class_chunk is not None and self.class_chunk < 1:
            problems.append(f"method.class_chunk must be >= 1 or null, got {self.class_chunk}")
        if not 0 <= self.adapter_ratio <= 1:
            problems.append(f"method.adapter_ratio must be in [0, 1], got {self.adapter_ratio}")
        if problems:
            raise ValueError("; ".join(problems))


def mask_regularization(mask: torch.Tensor, form: str) -> torch.Tensor:
    """How far the mask [B, C, D] is from all-ones, in the chosen form."""
    gap = mask - 1
    if form == "l2":
        return gap.pow(2).mean()
    if form == "l1":
        return gap.abs().mean()
    if form == "linf":
        return gap.abs().flatten(1).max(dim=1).values.mean()
    raise ValueError(f"reg_loss must be one of {REG_LOSSES}, got {form!r}")


def adamw(lr: float, epochs: int, batch_size: int, **extra) -> dict:
    return {"optimizer": "adamw", "lr": lr, "weight_decay": 5e-4, "epochs": epochs, "batch_size": batch_size,
            "warmup_epochs": 1, "warmup_lr": 1e-5, "cached_features": True, "feature_views": epochs, **extra}


PAPER_EFT = Preset({}, adamw(0.0009, 13, 1),
                   "the paper's EFT (Sec. 4.2): batch 1, lr 0.0009, 13 epochs, 16 shots, L2 mask loss λ 1.5; "
                   "released lr_1e-3_layers_4_epochs_5_base2new.yaml for the rest (Adam-family, wd 5e-4, cosine, "
                   "1 warm-up epoch at 1e-5); a fresh cached augmented view per epoch")


@register_method
class RAda(Method):
    name = "rada"
    paper_names = ("RAda",)
    Config = RAdaConfig
    version = 1
    frozen_image_tower = True  # reads only the image tower's final features: trained on cached features
    plots = ({"kind": "scalars", "columns": ["loss_ce", "loss_mask"], "title": "RAda loss terms"},
             {"kind": "arrays", "columns": ["mask", "rational", "masked"],
              "title": "Mask M, rational matrix R and M ⊙ R (Figs. 4, 5)"})
    presets = {
        "default": PAPER_EFT,
        "base_to_novel": PAPER_EFT,
        "released": Preset({"softmax": "flat", "reg_loss": "linf"}, adamw(5e-5, 5, 32),
                           "khufia/RAda as released: lr_1e-3_layers_4_epochs_5_base2new.yaml (batch 32, lr 5e-5, "
                           "5 epochs, wd 5e-4, cosine), flat softmax, LInf mask loss (α from the command line; "
                           "the paper's 1.5 here)"),
        "toy": Preset({"templates": None}, adamw(0.002, 6, 8, crop_scale=TOY_CROP_SCALE),
                      "embedded toy world, CPU budget: batch 8, lr 0.002, 6 epochs over 6 cached views"),
    }

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        self.mask_head = RationalMask(backbone.embed_dim, config.heads, config.layers, config.queries,
                                      config.softmax, config.temperature, config.input_scale, config.class_chunk,
                                      config.mask_function)
        self.context = None
        self.adapter = None
        if config.compose == "coop":
            self.context = TextContext(backbone, config.n_ctx, config.ctx_init)
            self.register_buffer("train_tokens", self.context.tokenized(task.classnames), persistent=False)
        else:
            self.register_buffer("train_text", self._frozen_text(task.classnames, task), persistent=False)
        if config.compose == "clip_adapter":
            if backbone.embed_dim // config.adapter_reduction < 1:
                raise ValueError(f"adapter_reduction must be in 1..{backbone.embed_dim}")
            self.adapter = bottleneck_mlp(backbone.embed_dim, config.adapter_reduction)
        self.mask_head.to(backbone.device)

    # -- features -----------------------------------------------------------------------------
    def _frozen_text(self, classnames, task) -> torch.Tensor:
        return zero_shot_text_features(self.backbone, classnames, self.config.templates or task.templates)

    def class_features(self, classnames=None, tokens=None) -> torch.Tensor:
        """Class text features [C, D]: frozen, or through the learnable CoOp context."""
        if self.context is not None:
            return self.context.encode(tokens if tokens is not None else self.context.tokenized(classnames))
        return self.train_text

    def image_features(self, inputs: torch.Tensor) -> torch.Tensor:
        feats = self.image_tower_features(inputs).float()
        if self.adapter is not None:
            ratio = self.config.adapter_ratio
            feats = ratio * self.adapter(feats) + (1 - ratio) * feats
        return feats

    def logit_bias(self):
        bias = getattr(self.backbone.clip, "logit_bias", None)
        return None if bias is None else bias.detach()

    def rada_logits(self, image_features, text_features, return_mask=False):
        return self.mask_head(image_features, text_features, self.backbone.logit_scale.detach(),
                              self.logit_bias(), return_mask=return_mask)

    # -- training -----------------------------------------------------------------------------
    def training_loss(self, inputs, labels):
        text = self.class_features(tokens=getattr(self, "train_tokens", None))
        logits, mask = self.rada_logits(self.image_features(inputs), text, return_mask=True)
        ce = F.cross_entropy(logits, labels)
        reg = mask_regularization(mask, self.config.reg_loss)
        loss = ce + self.config.reg_weight * reg
        return LossOutput(loss, {"loss_ce": float(ce.detach()), "loss_mask": float(reg.detach())}, logits.detach())

    # -- evaluation ---------------------------------------------------------------------------
    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        with torch.no_grad():
            if self.context is not None:
                self.eval_text = self.class_features(task.classnames)
            else:
                self.eval_text = self._frozen_text(task.classnames, task).to(self.backbone.device)

    @torch.no_grad()
    def eval_logits(self, inputs):
        return self.rada_logits(self.image_features(inputs), self.eval_text)

    @torch.no_grad()
    def eval_outputs(self, inputs):
        feats = self.image_features(inputs)
        return self.rada_logits(feats, self.eval_text), feats

    def eval_embeddings(self, inputs):
        with torch.no_grad():
            return self.image_features(inputs)

    # -- test time (RAda-TTT: the mask tuned on each test sample's views) ----------------------
    def test_time_parameters(self):
        return list(self.mask_head.parameters())

    def test_time_logits(self, inputs):
        return self.rada_logits(self.image_features(inputs), self.eval_text)

    # -- inspection: the mask, R and M ⊙ R of chosen images ------------------------------------
    @torch.no_grad()
    def inspection_arrays(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"mask": M, "rational": R, "masked": M ⊙ R}, each [B, C, D], for the current eval classes."""
        feats = self.image_features(inputs)
        _, mask = self.rada_logits(feats, self.eval_text, return_mask=True)
        rational = RationalMask.rational_matrix(feats, self.eval_text)
        return {"mask": mask, "rational": rational, "masked": mask * rational}
