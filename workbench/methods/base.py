"""What a method is: a config dataclass + an nn.Module + a registry entry (peft's tuner layout).

The contract, in the order the engine uses it:

  building      cls(backbone, task, config): attach to the backbone only through its extension points
                (tokens, adapters, LoRA); the constructor's random inits follow the run's seed.
  training      training_loss(inputs, labels) -> LossOutput, or backward(...) when the method rewrites
                gradients; on_epoch_end(epoch, epochs); learned_scalars() recorded every epoch;
                trainable_parameters() / param_groups(lr, wd) choose what the optimizer updates.
  stages        stage_parameters(key) / on_stage_start(key): what each stage of staged training updates
                (engine.staged: LP-FT's "head" then "all"), each stage with its own optimizer settings.
  test time     test_time_parameters(), test_time_logits(views), test_time_loss(logits): what
                engine.test_time tunes on each test sample's views before predicting it, then resets.
  closed form   methods with `closed_form = True` (linear probe, Tip-Adapter's cache) are fitted once by
                fit_closed_form(features, labels, val_features, val_labels) -> scalars, without SGD.
  checkpoints   trainable_state_dict() holds the trainable parameters plus every buffer with a name part
                starting with "state_" (`state_c`, `state_gpa.<param>`: non-parameter state that training changes: a running statistic, a fitted
                cache); load_trainable_state_dict() restores both, so a resumed run is exact.
  evaluation    prepare_eval(task, domain) then eval_logits(inputs) / eval_outputs(inputs) -> (logits,
                the image embeddings it scores with); eval_class_embeddings() -> the class embeddings
                [C, D] it scores against (for similarity histograms and t-SNE/UMAP), or None.
  cached input  the engine may feed cached image-tower features [B, D] instead of images only when the
                method reads nothing but the tower's final features (`frozen_image_tower = True`, or
                `inputs = "features"`) AND the tower is exactly the pretrained one: nothing attached to it,
                no weight trainable (`backbone.image_tower_is_pretrained()`). A method that declares a
                frozen tower but attaches a vision extension is evaluated on images, with its extension.

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
    # inspector plots over the per-epoch history (learned_scalars(), loss terms), rendered by the app and
    # notebooks (workbench.analysis.inspect): {"kind": "scalars" | "heatmap" | "distribution",
    # "columns": [fnmatch patterns], "title": optional}, e.g. ({"kind": "heatmap", "columns": ["norm.*"]},)
    plots: ClassVar[tuple[dict, ...]] = ()
    trainable: ClassVar[bool] = True  # False: nothing to train (zero-shot)
    closed_form: ClassVar[bool] = False  # True: fitted by fit_closed_form on cached features, not by SGD
    inputs: ClassVar[str] = "images"  # "features": trained on cached frozen image features
    # the method reads only the image tower's final features: when the tower is also untouched
    # (image_tower_is_pretrained), evaluation reads cached test features, and training can too
    # (TrainConfig.cached_features); inputs are then features [B, D] instead of images
    frozen_image_tower: ClassVar[bool] = False

    def __init__(self, backbone: CLIPBackbone, task: ClassTask, config):
        super().__init__()
        self.backbone = backbone
        self.task = task
        self.config = config
        self.eval_domain = "base"
        if getattr(config, "dual_shared", False):  # DsRA's plug-in (methods/_dual_shared.py), any method
            from ._dual_shared import attach_dual_shared

            with torch.random.fork_rng(devices=[]):  # the method's own random inits stay as without it
                self.dual_shared = attach_dual_shared(backbone, config)

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
        """Learned hyperparameters to record every epoch (e.g. DAM's λ, α, β, ρ; the dual-shared
        adapters' coefficients when attached)."""
        adapters = getattr(self, "dual_shared", None)
        return adapters.learned_scalars() if adapters is not None else {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return [{"params": self.trainable_parameters(), "lr": lr, "weight_decay": weight_decay}]

    # -- staged training (engine.staged, e.g. LP-FT) -------------------------------------------
    def stage_parameters(self, key: str) -> list[nn.Parameter]:
        """The parameters training stage `key` updates ("head", "all", ...); methods with stages
        override this. engine.staged sets requires_grad on exactly these before the stage."""
        raise KeyError(f"{self.name} has no training stage {key!r}: it defines no stages (stage_parameters)")

    def on_stage_start(self, key: str) -> None:
        """Called after a stage's parameters are selected, before it trains."""

    # -- test-time adaptation (engine.test_time, e.g. TPT) --------------------------------------
    def test_time_parameters(self) -> list[nn.Parameter]:
        """Parameters tuned on each test sample's views and reset after it (empty: no test-time
        adaptation)."""
        return []

    def test_time_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits [N, C] over the current evaluation classes with gradients reaching
        `test_time_parameters()`; inputs are views (or their features when `evaluates_on_cached_features`)."""
        raise NotImplementedError(f"{self.name} does not adapt at test time")

    def test_time_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """The unsupervised test-time objective; default: entropy of the averaged prediction (TPT)."""
        from ..engine.test_time import average_entropy

        return average_entropy(logits)

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
        if not self.backbone.image_tower_is_pretrained():  # e.g. trainable adapters attached: gradients flow
            return self.backbone.encode_image(inputs)
        with torch.no_grad():
            return self.backbone.encode_image(inputs)

    def zero_shot_image_features(self, inputs: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The pretrained tower's features of `inputs` (a zero-shot teacher's): `features` when they are
        already those (nothing attached to the image tower), else re-encoded with extensions disabled."""
        if features is not None and (inputs.dim() == 2 or self.backbone.image_tower_is_pretrained()):
            return features.detach()
        if inputs.dim() == 2:
            return inputs
        with torch.no_grad(), self.backbone.extensions_disabled():
            return self.backbone.encode_image(inputs)

    def reads_tower_features_only(self) -> bool:
        """Whether cached features of the pretrained image tower can stand in for images: the method
        declares it reads only the tower's final features, and nothing is attached to the tower."""
        if self.inputs == "features":
            return True
        return self.frozen_image_tower and self.backbone.image_tower_is_pretrained()

    def evaluates_on_cached_features(self) -> bool:
        """Whether evaluation feeds cached test features instead of images (exact: tested)."""
        return self.reads_tower_features_only()

    def trains_on_cached_features(self, train_cfg) -> bool:
        """Whether training feeds cached augmented views: always for feature methods, on request
        (`train.cached_features`) for methods that read only the untouched tower's features."""
        if self.inputs == "features":
            return True
        return self.reads_tower_features_only() and bool(train_cfg.cached_features)

    def inspection_arrays(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Arrays to inspect for some evaluated images (after prepare_eval), e.g. RAda's mask [B, C, D]:
        stored by the protocols in the run folder (runs.files.INSPECTION) and drawn by plots of kind
        "arrays" (their `columns` name the arrays). Default: none."""
        return {}

    def eval_class_embeddings(self) -> torch.Tensor | None:
        """Class embeddings [C, D] of the current evaluation classes, if the method has them."""
        return getattr(self, "eval_text", None)

    # -- state --------------------------------------------------------------------------------
    STATE_PREFIX: ClassVar[str] = "state_"  # buffers checkpointed with the trainable parameters

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        names = {id(p) for p in self.trainable_parameters()}
        state = {k: v for k, v in self.named_parameters() if id(v) in names}
        state.update({k: v for k, v in self.named_buffers() if any(part.startswith(self.STATE_PREFIX) for part in k.split("."))})
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
