"""What a method is: a config dataclass + an nn.Module + a registry entry (peft's tuner layout).

The engine calls, in this order:
  method = build_method(name, backbone, task, overrides)   # attaches to the backbone
  method.training_loss(images, labels)  /  method.backward(...)   each step
  method.on_epoch_end(epoch, epochs)                          after each epoch
  method.prepare_eval(task, domain); method.eval_logits(images)  for evaluation

`domain` tells a method which inference head to use:
  base  - the classes it was trained on (base-to-novel base, few-shot test, domain-generalization source)
  new   - unseen classes of the training dataset (base-to-novel new)
  cross - another dataset's classes (cross-dataset targets)
  shift - the training classes under a domain shift (domain-generalization targets)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..backbone import CLIPBackbone
from ..data.types import ClassTask  # noqa: F401  (re-exported: methods are built on a ClassTask)

DOMAINS = ("base", "new", "cross", "shift")


@dataclass
class LossOutput:
    loss: torch.Tensor
    scalars: dict[str, float] = field(default_factory=dict)  # loss terms etc., logged per epoch
    logits: torch.Tensor | None = None  # training logits (for training accuracy)


@dataclass(frozen=True)
class Preset:
    """A named default: method config values and training settings (see engine.TrainConfig)."""

    method: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    description: str = ""


class Method(nn.Module):
    name: ClassVar[str] = ""
    Config: ClassVar[type] = None
    presets: ClassVar[dict[str, Preset]] = {}
    default_preset: ClassVar[str] = "default"
    # behaviour version: part of every run's identity; bump it when a change alters this method's results
    version: ClassVar[int] = 1
    # the names the transcribed papers give this method (first = the usual one), for ours-vs-paper joins
    paper_names: ClassVar[tuple[str, ...]] = ()
    trainable: ClassVar[bool] = True  # False: nothing to train (zero-shot)
    inputs: ClassVar[str] = "images"  # "features": trained on cached frozen image features
    # the image tower stays frozen and unextended: evaluation reads cached test features, and training
    # can too (TrainConfig.cached_features); inputs are then features [B, D] instead of images
    frozen_image_tower: ClassVar[bool] = False

    def __init__(self, backbone: CLIPBackbone, task: ClassTask, config):
        super().__init__()
        self.backbone = backbone
        self.task = task
        self.config = config
        self.eval_domain = "base"

    # -- training -----------------------------------------------------------------------------
    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        raise NotImplementedError

    def backward(self, inputs: torch.Tensor, labels: torch.Tensor, scale=lambda loss: loss) -> LossOutput:
        """Compute the loss and fill `.grad`; methods that rewrite gradients override this."""
        out = self.training_loss(inputs, labels)
        scale(out.loss).backward()
        return out

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        pass

    def fit_closed_form(self, features, labels, val_features=None, val_labels=None) -> dict:
        """For methods fitted without SGD (linear probe, Tip-Adapter's cache): return scalars."""
        raise NotImplementedError

    def learned_scalars(self) -> dict[str, float]:
        """Learned hyperparameters to record every epoch (e.g. DAM's λ, α, β, ρ)."""
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return [{"params": self.trainable_parameters(), "lr": lr, "weight_decay": weight_decay}]

    # -- evaluation ---------------------------------------------------------------------------
    def prepare_eval(self, task: ClassTask, domain: str) -> None:
        """Precompute what evaluation over `task`'s classes needs (e.g. class text features)."""
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        self.eval_domain = domain
        self.eval_task = task

    def eval_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def eval_outputs(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, image embeddings) for evaluation that also keeps embeddings for plots. Methods
        whose logits are computed from those embeddings override this to encode the images once."""
        return self.eval_logits(inputs), self.eval_embeddings(inputs)

    def eval_embeddings(self, inputs: torch.Tensor) -> torch.Tensor:
        """Image embeddings the method scores with (for similarity histograms and t-SNE/UMAP);
        default: the image tower's features (or the cached features themselves)."""
        return self.image_tower_features(inputs)

    def image_tower_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Image-tower features without gradients: images [B, 3, H, W] are encoded by the tower as the
        method left it (frozen for the CoOp family, LoRA-adapted for CLIP-LoRA); features [B, D],
        already encoded (cached), pass through."""
        if inputs.dim() == 2:
            return inputs
        with torch.no_grad():
            return self.backbone.encode_image(inputs)

    def reads_cached_features(self, train_cfg=None) -> bool:
        """Whether the engine feeds cached frozen features instead of images (in evaluation when
        `train_cfg` is None, else in training)."""
        if self.inputs == "features":
            return True
        return self.frozen_image_tower and (train_cfg is None or bool(train_cfg.cached_features))

    def eval_class_embeddings(self) -> torch.Tensor | None:
        """Class embeddings [C, D] of the current evaluation classes, if the method has them."""
        return getattr(self, "eval_text", None)

    # -- state --------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        names = {id(p) for p in self.trainable_parameters()}
        state = {k: v for k, v in self.named_parameters() if id(v) in names}
        state.update({k: v for k, v in self.named_buffers() if k.startswith("state_")})
        return {k: v.detach().clone() for k, v in state.items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters()) | dict(self.named_buffers())
        missing = [k for k in state if k not in own]
        if missing:
            raise KeyError(f"checkpoint has parameters this {self.name} method does not: {missing[:5]}")
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)


# ---- registry -----------------------------------------------------------------------------------

METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name`")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise KeyError(f"method {cls.name!r} is registered twice")
    if cls.Config is None or not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass")
    METHODS[cls.name] = cls
    return cls


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def get_method_class(name: str) -> type[Method]:
    from . import _load_all

    _load_all()
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def list_methods() -> list[str]:
    from . import _load_all

    _load_all()
    return sorted(METHODS)


def resolve_config(cls: type[Method], preset: str | None = None, overrides: dict | None = None):
    """The method's Config from its preset (default: `cls.default_preset`) plus overrides."""
    preset_name = preset or cls.default_preset
    values: dict[str, Any] = {}
    if cls.presets:
        if preset_name not in cls.presets:
            raise KeyError(f"{cls.name} has no preset {preset_name!r}; presets: {sorted(cls.presets)}")
        values.update(cls.presets[preset_name].method)
    known = {f.name for f in dataclasses.fields(cls.Config)}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise KeyError(f"{cls.name} has no config field {key!r}; fields: {sorted(known)}")
        values[key] = value
    return cls.Config(**values)


def build_method(name: str, backbone: CLIPBackbone, task: ClassTask, preset: str | None = None,
                 overrides: dict | None = None) -> Method:
    cls = get_method_class(name)
    return cls(backbone, task, resolve_config(cls, preset, overrides))
