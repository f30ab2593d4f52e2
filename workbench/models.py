"""Backbone names as run specs use them: `toy` (the embedded offline default) or any open_clip model."""
from __future__ import annotations

from .backbone import CLIPBackbone

EMBEDDED_BACKBONE = "toy"
REAL_DEFAULT = ("ViT-B-16-quickgelu", "openai")


def load_backbone(name: str = EMBEDDED_BACKBONE, pretrained: str | None = None, device: str = "cpu") -> CLIPBackbone:
    """`toy` builds the embedded tiny CLIP on first use (cached); anything else goes to open_clip."""
    if name == EMBEDDED_BACKBONE:
        from .data.toy import ensure_embedded_model

        return CLIPBackbone.from_pretrained(f"local-dir:{ensure_embedded_model()}", device=device)
    if pretrained is None and not name.startswith("local-dir:"):
        import torch

        with torch.random.fork_rng():  # a random-init backbone is the same in every run
            torch.manual_seed(0)
            return CLIPBackbone.from_pretrained(name, None, device=device)
    return CLIPBackbone.from_pretrained(name, pretrained, device=device)


def is_embedded_scale(name: str) -> bool:
    """True for backbones built like the embedded tiny CLIP (`toy`, the `wb-tiny-vit` config, or a
    `local-dir:` folder written by the toy pretraining): they get the methods' `toy` presets."""
    if name in (EMBEDDED_BACKBONE, "wb-tiny-vit"):
        return True
    if name.startswith("local-dir:"):
        from pathlib import Path

        from .data.toy.pretrain import MODEL_NAME, read_meta

        return (read_meta(Path(name[len("local-dir:"):])) or {}).get("model") == MODEL_NAME
    return False


def check_backbone(name: str, pretrained: str | None = None) -> None:
    """Raise now what loading `name` / `pretrained` would raise (nothing is loaded or downloaded)."""
    if name == EMBEDDED_BACKBONE:
        if pretrained:
            raise ValueError("the embedded 'toy' backbone has its own weights: give no --pretrained")
        return
    from .backbone.load import check_loadable

    check_loadable(name, pretrained)


DEVICE_FORMS = ("cpu", "cuda", "cuda:N", "mps")


def check_device(device: str) -> None:
    """ValueError unless `device` names a device this machine has."""
    import re

    import torch

    match = re.fullmatch(r"(cpu|mps|cuda)(?::(\d+))?", str(device))
    if not match or (match.group(1) != "cuda" and match.group(2) is not None):
        raise ValueError(f"device {device!r} is not one of {', '.join(DEVICE_FORMS)}")
    kind, index = match.group(1), int(match.group(2) or 0)
    if kind == "cuda" and (not torch.cuda.is_available() or index >= torch.cuda.device_count()):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ValueError(f"device {device!r} is not available: this machine has {have} CUDA device(s); "
                         "use --device cpu")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} is not available on this machine; use --device cpu")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
