"""Loading open_clip models by name + pretrained tag, local weights file, or `local-dir:` folder."""
from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from .configs import register_workbench_configs

HF_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are not on this machine and cannot be downloaded."""


@dataclass(frozen=True)
class LoadedCLIP:
    model: torch.nn.Module
    tokenizer: object
    model_name: str
    pretrained: str | None
    checkpoint_path: str | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int


def _offline_forced() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "WORKBENCH_OFFLINE"))


def _network_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_hub_file(hf_hub: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    repo_id, filename = os.path.split(hf_hub.rstrip("/")) if not hf_hub.endswith("/") else (hf_hub.rstrip("/"), "")
    names = (filename,) if filename else HF_WEIGHT_NAMES
    for name in names:
        found = try_to_load_from_cache(repo_id=repo_id, filename=name)
        if isinstance(found, str):
            return found
    return None


def _weights_help(model_name: str, tag: str, cfg: dict) -> str:
    hub = cfg.get("hf_hub", "").rstrip("/")
    lines = [
        f"Pretrained weights '{tag}' for {model_name} are not on this machine and cannot be downloaded "
        "(offline: HF_HUB_OFFLINE/WORKBENCH_OFFLINE set, or no network).",
        "To use them, on a machine with internet run:",
        f"  python -c \"import open_clip; open_clip.create_model('{model_name}', pretrained='{tag}')\"",
        "then copy its Hugging Face cache (~/.cache/huggingface/hub) to the same place here, or",
    ]
    if hub:
        lines.append(f"  download {HF_WEIGHT_NAMES[1]} from the Hugging Face repo '{hub}' and pass its path:")
    elif cfg.get("url"):
        lines.append(f"  download {cfg['url']} and pass its path:")
    lines.append(f"  --backbone {model_name} --pretrained /path/to/weights.bin")
    lines.append("or use the embedded offline default: --backbone toy")
    return "\n".join(lines)


def check_loadable(model_name: str, pretrained: str | None = None) -> None:
    """Raise now, without loading or downloading anything, what `load_clip` would raise: an unknown
    model, a local-dir folder without config or weights, an unknown tag, weights unavailable offline."""
    register_workbench_configs()
    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"{folder} has no open_clip_config.json; a local-dir model folder needs "
                                    "open_clip_config.json and open_clip_model.safetensors")
        if open_clip.factory._find_checkpoint_in_dir(folder) is None:
            raise FileNotFoundError(f"{folder} has no weights file (open_clip_model.safetensors)")
        return
    if open_clip.get_model_config(model_name) is None:
        raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
    if pretrained and not os.path.isfile(pretrained):
        _pretrained_cfg(model_name, pretrained, offline_check=True)


def _pretrained_cfg(model_name: str, pretrained: str, offline_check: bool) -> dict:
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(f"'{pretrained}' is neither a file nor a known pretrained tag for {model_name}; "
                         f"known tags: {tags}")
    if offline_check and not (cfg.get("hf_hub") and _cached_hub_file(cfg["hf_hub"])) \
            and (_offline_forced() or not _network_reachable()):
        raise WeightsUnavailableError(_weights_help(model_name, pretrained, cfg))
    return cfg


def resolve_checkpoint(model_name: str, pretrained: str | None) -> str | None:
    """Path of the weights file to load, or None for a random init / local-dir model.

    A pretrained tag resolves to the local Hugging Face cache; if it is not cached and the machine is
    offline, raise `WeightsUnavailableError` at once with instructions."""
    if model_name.startswith("local-dir:") or not pretrained:
        return None
    if os.path.isfile(pretrained):
        return pretrained
    cfg = _pretrained_cfg(model_name, pretrained, offline_check=False)
    if cfg.get("hf_hub"):
        cached = _cached_hub_file(cfg["hf_hub"])
        if cached:
            return cached
    if _offline_forced() or not _network_reachable():
        raise WeightsUnavailableError(_weights_help(model_name, pretrained, cfg))
    return open_clip.download_pretrained(cfg)


def load_clip(model_name: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> LoadedCLIP:
    """Create an open_clip model. `model_name` may be a built-in or workbench config name, or
    `local-dir:PATH` (a folder with open_clip_config.json and weights)."""
    register_workbench_configs()
    checkpoint = resolve_checkpoint(model_name, pretrained)
    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"{folder} has no open_clip_config.json; a local-dir model folder needs "
                                    "open_clip_config.json and open_clip_model.safetensors")
        model = open_clip.create_model(model_name, device=device)
        checkpoint = open_clip.factory._find_checkpoint_in_dir(folder)
        if checkpoint is None:
            raise FileNotFoundError(f"{folder} has no weights file (open_clip_model.safetensors)")
        preprocess = json.loads((folder / "open_clip_config.json").read_text()).get("preprocess_cfg", {})
    else:
        if open_clip.get_model_config(model_name) is None:
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
        model = open_clip.create_model(model_name, pretrained=checkpoint, device=device)
        preprocess = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained and not os.path.isfile(pretrained) else {}
    model.eval()
    visual = model.visual
    mean = tuple(preprocess.get("mean") or getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(preprocess.get("std") or getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    size = visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return LoadedCLIP(model, open_clip.get_tokenizer(model_name), model_name, pretrained, checkpoint,
                      mean, std, int(size))


_HASH_CACHE: dict[tuple[str, int, float], str] = {}


def weights_fingerprint(model: torch.nn.Module, checkpoint_path: str | None) -> str:
    """sha256 identifying the weights: of the checkpoint file when there is one (memoized by size and
    mtime), otherwise of the parameters themselves (random-init models)."""
    if checkpoint_path:
        st = os.stat(checkpoint_path)
        key = (os.path.abspath(checkpoint_path), st.st_size, st.st_mtime)
        if key not in _HASH_CACHE:
            h = hashlib.sha256()
            with open(checkpoint_path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
            _HASH_CACHE[key] = h.hexdigest()
        return _HASH_CACHE[key]
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
