"""GLAD (Generalizable LoRA tuning with RegulArized GraDient): CLIP-LoRA + AlignNet + GradReg.

    LoRA       h = W x + γ·B(A x) on q, k, v of every block of both towers (Eq. 4; CLIP-LoRA's modules,
               its dropout acting in training through the engine's train modes)
    AlignNet   f̃_t(x) = f̄_t + AlignNet([f̃_i(x); f̄_t])  for every class t, per image x  (Eq. 5),
               an MLP 2D → D/2 → D/4 → D (1024 → 256 → 128 → 512 on ViT-B/16), last layer zero
    logits     s·cos(f̃_i(x), f̃_t(x))  (s: CLIP's logit scale)
    loss       CE(logits, y) + λ·T²·KL(softmax(z_zs/T) ‖ softmax(logits/T))   (Fig. 2; z_zs: frozen CLIP)
    GradReg    Algorithm 1, an engine gradient transform (`train.grad_transform=gradreg`, ρ=0.1, α=0.5);
               SAM (Table 4 (b)) is its sibling (`train.grad_transform=sam`)

The first AlignNet layer is split into an image part and a text part (W₁[f_i; f_t] = W_i f_i + W_t f_t),
so the text part is computed once per class; the rest of the MLP runs on [B, chunk, D/2] blocks of
`class_chunk` classes at a time, checkpointed in training when there is more than one chunk: the
per-image class features B×C×D are never held whole.

No code is released. From the paper: r=8, AlignNet hidden 256 and 128, ρ=0.1, α=0.5, 20 epochs,
cosine from lr 0.001, three seeds (Sec. 4.1). Choices where the paper is silent (fields' help,
docs/glad.md): CLIP-LoRA's LoRA α=1 with α/√r scaling and dropout 0.25, AdamW (weight decay 1e-2),
batch 32 and per-iteration cosine (CLIP-LoRA's released optimizer and schedule), ReLU in AlignNet,
normalized features into and out of AlignNet, KL weight 1 and temperature 1, the LoRA-tuned text
features as f̄_t, the template "a photo of a {}." (CLIP-LoRA's).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .base import LossOutput, Preset, register_method
from .clip_lora import CLIPLoRA, CLIPLoRAConfig
from .common import TOY_CROP_SCALE, clip_logits, zero_shot_text_features

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
ALIGN_TEXT = ("tuned", "zero_shot")


@dataclass
class GLADConfig(CLIPLoRAConfig):
    r: int = field(default=8, metadata={"help": "LoRA rank (paper: 8)"})
    alpha: float = field(default=1.0, metadata={"help": "LoRA α; paper silent: CLIP-LoRA's 1 (scaling α/√r)"})
    dropout: float = field(default=0.25, metadata={"help": "dropout on the LoRA input; paper silent: CLIP-LoRA's 0.25"})
    alignnet: bool = field(default=True, metadata={"help": "AlignNet on (Table 4 (d), (e)); off: LoRA only"})
    align_hidden: tuple[int, ...] | None = field(
        default=None, metadata={"help": "AlignNet hidden sizes; None: (D/2, D/4) = the paper's (256, 128) at D=512"})
    align_activation: str = field(default="relu", metadata={"help": "relu | gelu; paper silent: ReLU"})
    align_normalize: bool = field(
        default=True, metadata={"help": "AlignNet reads L2-normalized f_i, f_t and adds π to the normalized f̄_t; "
                                        "paper silent. False: raw features"})
    align_text: str = field(
        default="tuned", metadata={"help": "f̄_t fed to AlignNet and biased: tuned (LoRA text tower) | zero_shot "
                                           "(frozen CLIP); paper silent"})
    class_chunk: int = field(default=256, metadata={"help": "classes per AlignNet block (memory, not results)"})
    kl_weight: float = field(default=1.0, metadata={"help": "λ of KL(zero-shot ‖ fine-tuned); paper silent: 1"})
    kl_temperature: float = field(default=1.0, metadata={"help": "T of the KL (scaled by T²); paper silent: 1"})

    def __post_init__(self) -> None:
        problems = []
        if self.align_activation not in ACTIVATIONS:
            problems.append(f"method.align_activation must be one of {', '.join(ACTIVATIONS)}, got {self.align_activation!r}")
        if self.align_text not in ALIGN_TEXT:
            problems.append(f"method.align_text must be one of {', '.join(ALIGN_TEXT)}, got {self.align_text!r}")
        if self.align_hidden is not None and (not self.align_hidden or any(int(h) < 1 for h in self.align_hidden)):
            problems.append(f"method.align_hidden must be positive sizes (or null), got {self.align_hidden!r}")
        if self.class_chunk < 1:
            problems.append(f"method.class_chunk must be at least 1, got {self.class_chunk!r}")
        if self.kl_weight < 0:
            problems.append(f"method.kl_weight must be at least 0, got {self.kl_weight!r}")
        if not self.kl_temperature > 0:
            problems.append(f"method.kl_temperature must be positive, got {self.kl_temperature!r}")
        if self.r < 1:
            problems.append(f"method.r must be at least 1, got {self.r!r}")
        if problems:
            raise ValueError("; ".join(problems))
        if self.align_hidden is not None:
            self.align_hidden = tuple(int(h) for h in self.align_hidden)


class AlignNet(nn.Module):
    """π = MLP([f_i; f_t]) with the first layer split into image and text parts; last layer zero."""

    def __init__(self, dim: int, hidden: tuple[int, ...], activation: str = "relu"):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.image_in = nn.Linear(dim, hidden[0])
        self.text_in = nn.Linear(dim, hidden[0], bias=False)  # the first layer's text columns
        layers: list[nn.Module] = [act()]
        for a, b in zip(hidden, hidden[1:]):
            layers += [nn.Linear(a, b), act()]
        self.out = nn.Linear(hidden[-1], dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.rest = nn.Sequential(*layers, self.out)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """π for paired features [..., D] (broadcasting image against text)."""
        return self.rest(self.image_in(image) + self.text_in(text))


def _chunk_logits(align: AlignNet, image_part, text_part, f_img, f_txt, scale, normalize: bool):
    """logits [B, c] of one block of classes: s·cos(f_i, f̄_t + π)."""
    pi = align.rest(image_part[:, None, :] + text_part[None, :, :])  # [B, c, D]
    adjusted = f_txt[None, :, :] + pi
    return scale * torch.einsum("bd,bcd->bc", F.normalize(f_img, dim=-1), F.normalize(adjusted, dim=-1))


def aligned_logits(align: AlignNet, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                   chunk: int = 256, normalize: bool = True) -> torch.Tensor:
    """s·cos(f_i, f̄_t + AlignNet([f_i; f̄_t])) for every image and class: [B, C], in class blocks."""
    f_img = F.normalize(image, dim=-1) if normalize else image
    f_txt = F.normalize(text, dim=-1) if normalize else text
    image_part = align.image_in(f_img)
    text_part = align.text_in(f_txt)  # once per class
    scale = scale.to(f_img.dtype)
    blocks = range(0, f_txt.shape[0], chunk)
    remat = torch.is_grad_enabled() and len(blocks) > 1
    out = []
    for start in blocks:
        args = (align, image_part, text_part[start:start + chunk], f_img, f_txt[start:start + chunk], scale, normalize)
        out.append(checkpoint(_chunk_logits, *args, use_reentrant=False) if remat else _chunk_logits(*args))
    return torch.cat(out, dim=1)


def _train(**extra) -> dict:
    """Sec. 4.1: 20 epochs, cosine from 0.001; CLIP-LoRA's AdamW (wd 1e-2), batch 32, per-iteration cosine,
    fp16 autocast; GradReg ρ=0.1, α=0.5."""
    return {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-2, "batch_size": 32, "epochs": 20,
            "warmup_epochs": 0, "schedule": "cosine", "schedule_unit": "iter", "precision": "amp",
            "grad_transform": "gradreg", "grad_rho": 0.1, "grad_alpha": 0.5, **extra}


TOY_TRAIN = {"optimizer": "adamw", "lr": 5e-3, "weight_decay": 1e-2, "batch_size": 32, "epochs": 10,
             "warmup_epochs": 0, "schedule_unit": "iter", "crop_scale": TOY_CROP_SCALE,
             "grad_transform": "gradreg", "grad_rho": 0.1, "grad_alpha": 0.5}

# Table 4's rows: (method settings, training settings)
ABLATION = {
    "a_lora": ({"alignnet": False}, {"grad_transform": "none"}, "(a) LoRA (baseline)"),
    "b_sam": ({"alignnet": False}, {"grad_transform": "sam"}, "(b) LoRA+SAM"),
    "c_gradreg": ({"alignnet": False}, {"grad_transform": "gradreg"}, "(c) LoRA+GradReg"),
    "d_alignnet": ({"alignnet": True}, {"grad_transform": "none"}, "(d) LoRA+AlignNet"),
    "e_glad": ({"alignnet": True}, {"grad_transform": "gradreg"}, "(e) LoRA+GradReg+AlignNet (full GLAD)"),
}
ABLATION_ROWS = {key: row for key, (_, _, row) in ABLATION.items()}  # preset suffix -> Table 4 setting

PAPER_SOURCE = "paper Sec. 4.1 (r=8, AlignNet 256/128, ρ=0.1, α=0.5, 20 epochs, cosine from 1e-3); " \
               "optimizer, batch and schedule unit as CLIP-LoRA's released lora.py"


@register_method
class GLAD(CLIPLoRA):
    name = "glad"
    paper_names = ("GLAD",)
    Config = GLADConfig
    version = 1
    default_preset = "base_to_novel"
    plots = ({"kind": "scalars", "columns": ["grad_conflict", "grad_cos"],
              "title": "Gradient transform: share of conflicting steps ⟨g, g′⟩ < 0 and cos(g, g′)"},
             {"kind": "scalars", "columns": ["ce", "kl"], "title": "Loss terms"})
    presets = {
        "base_to_novel": Preset({}, _train(), f"base-to-novel, 16 shots: {PAPER_SOURCE}"),
        "cross_dataset": Preset({}, _train(), f"ImageNet → 10 datasets (Table 2): {PAPER_SOURCE}"),
        "domain_generalization": Preset({}, _train(), f"ImageNet → 4 variants (Table 3): {PAPER_SOURCE}"),
        **{f"ablation_{k}": Preset(m, _train(**t), f"Table 4 {row}: {PAPER_SOURCE}")
           for k, (m, t, row) in ABLATION.items()},
        "toy": Preset({}, TOY_TRAIN, "embedded toy world, CPU budget: CLIP-LoRA's toy schedule (AdamW 5e-3, "
                                     "batch 32, 10 epochs) with GradReg ρ=0.1, α=0.5"),
        **{f"toy_{k}": Preset(m, {**TOY_TRAIN, **t}, f"Table 4 {row} on the toy world (toy schedule)")
           for k, (m, t, row) in ABLATION.items()},
    }

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        dim = backbone.embed_dim
        hidden = config.align_hidden or (max(dim // 2, 1), max(dim // 4, 1))
        self.align = AlignNet(dim, hidden, config.align_activation).to(backbone.device) if config.alignnet else None
        self.register_buffer("zero_shot_text", zero_shot_text_features(backbone, task.classnames, [config.template]),
                             persistent=False)
        self._teacher_cache = None

    def scores(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] of image features against class text features f̄_t (AlignNet applied when on)."""
        if self.align is None:
            return clip_logits(self.backbone, image_features, text_features)
        return aligned_logits(self.align, image_features, text_features, self.backbone.logit_scale,
                              self.config.class_chunk, self.config.align_normalize)

    def losses(self, images, labels):
        image_features = self.backbone.encode_image(images)
        if self.config.align_text == "zero_shot":
            text = self.zero_shot_text
        else:
            text = self.backbone.encode_text(self.train_tokens)
        logits = self.scores(image_features, text)
        ce = F.cross_entropy(logits, labels)
        if self.config.kl_weight == 0:
            return ce, torch.zeros((), device=ce.device), logits
        teacher = self.zero_shot_logits(images)
        t = self.config.kl_temperature
        kl = F.kl_div(F.log_softmax(logits.float() / t, dim=-1), F.log_softmax(teacher.float() / t, dim=-1),
                      reduction="batchmean", log_target=True) * t * t
        return ce, kl, logits

    def zero_shot_logits(self, images):
        """Frozen CLIP's logits; kept for the same batch tensor, which a gradient transform's second
        pass at θ + ε feeds again (the frozen teacher does not depend on θ)."""
        cached = self._teacher_cache  # (the batch itself, held so that its memory is not reused; version; logits)
        if cached is not None and cached[0] is images and cached[1] == images._version:
            return cached[2]
        with torch.no_grad(), self.backbone.extensions_disabled():
            teacher = clip_logits(self.backbone, self.backbone.encode_image(images), self.zero_shot_text)
        self._teacher_cache = (images, images._version, teacher)
        return teacher

    def training_loss(self, images, labels):
        ce, kl, logits = self.losses(images, labels)
        return LossOutput(ce + self.config.kl_weight * kl, {"ce": ce.item(), "kl": kl.item()}, logits.detach())

    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        if self.config.align_text == "zero_shot":
            self.eval_text = zero_shot_text_features(self.backbone, task.classnames, [self.config.template])

    def eval_outputs(self, inputs):
        embeddings = self.eval_embeddings(inputs)
        with torch.no_grad():
            return self.scores(embeddings, self.eval_text.to(embeddings.device)), embeddings
