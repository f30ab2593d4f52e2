"""Frozen-feature encoding and an on-disk cache shared between runs.

A cache entry is keyed by everything that determines its content: the model id (name + weights hash),
the exact sample list with each file's size and mtime, the transform, the number of augmented views
and their seed (image features), or the class names and templates (text features). Any change makes
a new key, so a stale entry is never reused. Entries are written atomically (`workbench.fileio`), so
concurrent runs can share the cache.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.types import Sample
from ..fileio import atomic_write, atomic_write_text
from ..paths import features_dir


def stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def samples_fingerprint(samples: Sequence[Sample], image_root: Path) -> str:
    """Hash of (path, label, size, mtime) for every sample: changes when any image file changes."""
    h = hashlib.sha256()
    for s in samples:
        try:
            st = os.stat(Path(image_root) / s.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{s.path}\t{s.label}\t{stamp}\n".encode())
    return h.hexdigest()


class FeatureCache:
    def __init__(self, root: Path | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else features_dir()
        self.enabled = enabled
        self.hits = self.misses = 0

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.pt", folder / f"{key}.json"

    def get_or_compute(self, parts: dict, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        key = stable_hash(parts)
        data_path, meta_path = self._paths(key)
        if self.enabled and data_path.is_file():
            try:
                value = torch.load(data_path, map_location="cpu", weights_only=True)
                self.hits += 1
                return value
            except Exception:  # unreadable entry (e.g. disk full earlier): recompute and overwrite
                pass
        self.misses += 1
        value = compute()
        if self.enabled:
            data_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(data_path, lambda f: torch.save({k: v.cpu() for k, v in value.items()}, f))
            atomic_write_text(meta_path, json.dumps(parts, indent=1, default=str))
        return value


@dataclass
class EncodedImages:
    features: torch.Tensor  # [views, N, D] projected, not normalized
    labels: torch.Tensor  # [N]
    indices: torch.Tensor  # [N] positions in the sample list (corrupt images are left out)


@torch.no_grad()
def encode_images(backbone, samples: Sequence[Sample], image_root: Path, transform, *, views: int = 1,
                  seed: int = 0, batch_size: int = 128, num_workers: int = 0,
                  cache: FeatureCache | None = None, desc: str = "encode images",
                  progress: bool = True) -> EncodedImages:
    """Frozen image features of `samples` (one pass per augmented view), cached on disk."""
    from ..data.images import ImageDataset, collate_skip_none

    parts = {"kind": "image", "model": backbone.model_id, "samples": samples_fingerprint(samples, image_root),
             "transform": repr(transform), "views": views, "seed": seed if views > 1 else None}

    def compute():
        with backbone.extensions_disabled():  # the frozen tower: the model id must say what encoded
            return encode()

    def encode():
        dataset = ImageDataset(list(samples), image_root, transform)
        feats, labels, indices = [], None, None
        for view in range(views):
            generator = torch.Generator().manual_seed(seed + view)
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                collate_fn=collate_skip_none, generator=generator)
            with torch.random.fork_rng():
                torch.manual_seed(seed + view)
                chunks, view_labels, view_indices = [], [], []
                label = desc if views == 1 else f"{desc} (view {view + 1}/{views})"
                for batch in tqdm(loader, desc=label, leave=False, disable=not progress):
                    if batch is None:  # every image of the batch was unreadable
                        continue
                    images, batch_labels, batch_indices = batch
                    chunks.append(backbone.encode_image(images.to(backbone.device)).float().cpu())
                    view_labels.append(batch_labels)
                    view_indices.append(batch_indices)
            feats.append(torch.cat(chunks) if chunks else torch.empty(0, backbone.embed_dim))
            labels = torch.cat(view_labels) if view_labels else torch.empty(0, dtype=torch.long)
            indices = torch.cat(view_indices) if view_indices else torch.empty(0, dtype=torch.long)
        return {"features": torch.stack(feats), "labels": labels, "indices": indices}

    cache = cache or FeatureCache(enabled=False)
    out = cache.get_or_compute(parts, compute)
    return EncodedImages(out["features"], out["labels"], out["indices"])


def class_prompt(template: str, classname: str) -> str:
    """One prompt; underscores of CoOp split-file names ("american_bulldog") read as spaces, as every
    released CLIP adaptation code does (`name.replace("_", " ")`)."""
    return template.format(classname.replace("_", " "))


@torch.no_grad()
def class_text_features(backbone, classnames: Sequence[str], templates: Sequence[str], *, batch_size: int = 512,
                        cache: FeatureCache | None = None) -> torch.Tensor:
    """Template-ensembled class embeddings [C, D], L2-normalized: each prompt is normalized, the
    templates of a class are averaged, and the mean is normalized again (CLIP's ensembling)."""
    if not templates:
        raise ValueError("at least one prompt template is needed")
    parts = {"kind": "text", "model": backbone.model_id, "classnames": list(classnames), "templates": list(templates),
             "names": "underscores as spaces"}

    def compute():
        prompts = [class_prompt(t, c) for c in classnames for t in templates]
        chunks = []
        for start in range(0, len(prompts), batch_size):
            tokens = backbone.tokenize(prompts[start:start + batch_size])
            chunks.append(F.normalize(backbone.encode_text(tokens).float(), dim=-1).cpu())
        per_prompt = torch.cat(chunks).view(len(classnames), len(templates), -1)
        return {"features": F.normalize(per_prompt.mean(dim=1), dim=-1)}

    return (cache or FeatureCache(enabled=False)).get_or_compute(parts, compute)["features"]
