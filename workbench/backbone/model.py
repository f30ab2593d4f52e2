"""`CLIPBackbone`: the one object methods attach to. It owns a frozen open_clip CLIP and exposes both
towers (`.visual`, `.text`) with their extension points."""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .load import LoadedCLIP, load_clip, weights_fingerprint
from .plain import PlainTower
from .towers import TextTower, TowerOutput, VisionTower


def _tower(build, encode, name: str):
    """The workbench tower (with extension points), or open_clip's own encoder where it does not apply."""
    try:
        return build()
    except NotImplementedError as exc:
        return PlainTower(encode, name, str(exc))


def _output_dim(clip: nn.Module) -> int:
    """The joint embedding width of an open_clip model whose image tower is not a VisionTransformer."""
    for owner in (clip, getattr(clip, "text", None)):
        proj = getattr(owner, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[1])
        if isinstance(proj, nn.Linear):
            return int(proj.out_features)
    for owner in (clip.visual, getattr(clip, "text", None)):
        if isinstance(getattr(owner, "output_dim", None), int):
            return owner.output_dim
    raise NotImplementedError(f"cannot tell the embedding width of {type(clip).__name__}")


class CLIPBackbone(nn.Module):
    def __init__(self, loaded: LoadedCLIP, freeze: bool = True):
        super().__init__()
        self.clip = loaded.model
        self.tokenizer = loaded.tokenizer
        self.model_name = loaded.model_name
        self.pretrained = loaded.pretrained
        self.checkpoint_path = loaded.checkpoint_path
        self.mean, self.std, self.image_size = loaded.mean, loaded.std, loaded.image_size
        if freeze:
            self.clip.requires_grad_(False)
        self.visual = _tower(lambda: VisionTower(self.clip.visual), self.clip.encode_image, "image")
        self.text = _tower(lambda: TextTower(self.clip), self.clip.encode_text, "text")
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(cls, model_name: str, pretrained: str | None = None, device="cpu", freeze: bool = True):
        return cls(load_clip(model_name, pretrained, device=device), freeze=freeze)

    # -- identity --------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """Name + weights hash: a key that changes whenever the base weights change."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.clip, self.checkpoint_path)
        return f"{self.model_name}|{self.pretrained or ''}|{self._fingerprint[:16]}"

    @property
    def embed_dim(self) -> int:
        if isinstance(self.visual, PlainTower):
            return _output_dim(self.clip)
        proj = self.clip.visual.proj
        return proj.shape[1] if proj is not None else self.visual.width

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    # -- encoding --------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.device)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        feats = self.visual(images).features
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        feats = self.text(tokens).features
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward_image(self, images: torch.Tensor, output_hidden_states: bool = False) -> TowerOutput:
        return self.visual(images, output_hidden_states=output_hidden_states)

    def forward_text(self, tokens: torch.Tensor, embeddings: torch.Tensor | None = None,
                     output_hidden_states: bool = False) -> TowerOutput:
        return self.text(tokens, embeddings=embeddings, output_hidden_states=output_hidden_states)

    @contextmanager
    def extensions_disabled(self):
        """Run the plain pretrained towers (zero-shot CLIP) while extensions stay attached."""
        previous = self.visual.extensions_enabled, self.text.extensions_enabled
        self.visual.extensions_enabled = self.text.extensions_enabled = False
        try:
            yield self
        finally:
            self.visual.extensions_enabled, self.text.extensions_enabled = previous

    def image_tower_is_pretrained(self) -> bool:
        """True when image features are exactly the pretrained tower's: nothing attached to the vision
        tower and none of its weights trainable (so cached features of these weights stand in for it)."""
        return not self.visual.has_extensions() and not any(p.requires_grad for p in self.clip.visual.parameters())

    def clear_extensions(self) -> None:
        self.visual.clear_extensions()
        self.text.clear_extensions()


def trainable_parameter_report(module: nn.Module) -> dict:
    """Counts like peft's `print_trainable_parameters`, plus a breakdown by top-level submodule."""
    total = trainable = 0
    by_module: OrderedDict[str, int] = OrderedDict()
    seen: set[int] = set()
    for name, p in module.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            key = ".".join(name.split(".")[:2])
            by_module[key] = by_module.get(key, 0) + p.numel()
    return {"trainable": trainable, "total": total,
            "trainable_percent": 100.0 * trainable / max(total, 1), "by_module": dict(by_module)}


def format_trainable_report(report: dict) -> str:
    lines = [f"trainable params: {report['trainable']:,} || all params: {report['total']:,} || "
             f"trainable%: {report['trainable_percent']:.4f}"]
    lines += [f"  {name}: {count:,}" for name, count in report["by_module"].items()]
    return "\n".join(lines)
