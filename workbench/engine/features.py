"""Frozen-feature encoding and an on-disk cache shared between runs.

A cache entry is keyed by everything that determines its content: the model id (name + weights hash),
the exact sample list with each file's size and mtime, the transform, the number of augmented views
and their seed (image features), or the class names and templates (text features). Any change makes
a new key, so a stale entry is never reused. Entries are written atomically (`workbench.fileio`), so
concurrent runs can share the cache.

Size + mtime miss an image rewritten in place with both kept; `content_hash=True` (or
WORKBENCH_CACHE_CONTENT_HASH=1) keys each image on a sha256 of its bytes instead (reads every file).

Each entry stores its key, the sha256, shape and dtype of every array, and a hash of what it encodes
(the (path, label) list in order, or the class names and templates); image entries are also checked
row by row against the samples (indices increasing, labels equal). An entry failing any check is
recomputed with a `FeatureCacheWarning` naming its file.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.types import Sample
from ..fileio import atomic_write, atomic_write_text, sha256_file
from ..paths import features_dir


def stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def samples_fingerprint(samples: Sequence[Sample], image_root: Path, content_hash: bool = False) -> str:
    """Hash of (path, label, size, mtime) for every sample: changes when any image file changes.
    With `content_hash`, of (path, label, sha256 of the file's bytes) instead."""
    h = hashlib.sha256()
    for s in samples:
        path = Path(image_root) / s.path
        try:
            if content_hash:
                stamp = "sha256:" + sha256_file(path)
            else:
                st = os.stat(path)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{s.path}\t{s.label}\t{stamp}\n".encode())
    return h.hexdigest()


def sample_list_hash(samples: Sequence[Sample]) -> str:
    """Hash of the (path, label) list in order: what an image entry's rows are."""
    return stable_hash([[s.path, int(s.label)] for s in samples])


def tensor_sha256(t: torch.Tensor) -> str:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy() if flat.numel() else b"").hexdigest()  # no copy


def _describe(t: torch.Tensor) -> dict:
    return {"sha256": tensor_sha256(t), "shape": list(t.shape), "dtype": str(t.dtype)}


class FeatureCacheWarning(UserWarning):
    """A cache entry failed a check (damaged, or not what its key says) and is recomputed."""


ENTRY_FORMAT = 2  # {format, key, binding, tensors, checks}; format 1 was the bare tensor dict


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class FeatureCache:
    """`content_hash`: key images on their bytes' sha256, not size + mtime (default: the env
    WORKBENCH_CACHE_CONTENT_HASH)."""

    def __init__(self, root: Path | None = None, enabled: bool = True, content_hash: bool | None = None):
        self.root = Path(root) if root is not None else features_dir()
        self.enabled = enabled
        self.content_hash = _env_flag("WORKBENCH_CACHE_CONTENT_HASH") if content_hash is None else content_hash
        self.hits = self.misses = self.rejected = 0

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.pt", folder / f"{key}.json"

    def _load(self, data_path: Path, key: str, binding: str | None, validate) -> tuple[dict | None, str]:
        """The entry's tensors, or None and why it is rejected."""
        try:
            entry = torch.load(data_path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unreadable (truncated, not a torch file)
            return None, f"unreadable ({type(e).__name__})"
        if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT:
            return None, "no checksums (older format or not an entry)"
        if entry.get("key") != key:
            return None, "it belongs to another key"
        if entry.get("binding") != binding:
            return None, "it encodes another sample list or class list"
        tensors, checks = entry.get("tensors"), entry.get("checks")
        if not isinstance(tensors, dict) or not isinstance(checks, dict) or set(tensors) != set(checks):
            return None, "malformed"
        for name, t in tensors.items():
            want = checks[name]
            if not isinstance(t, torch.Tensor) or list(t.shape) != want.get("shape") or str(t.dtype) != want.get("dtype"):
                return None, f"{name!r} has the wrong shape or dtype"
            if tensor_sha256(t) != want.get("sha256"):
                return None, f"{name!r} fails its checksum"
        reason = validate(tensors) if validate is not None else None
        if reason:
            return None, reason
        return tensors, ""

    def get_or_compute(self, parts: dict, compute: Callable[[], dict[str, torch.Tensor]], *,
                       binding: str | None = None, validate: Callable[[dict], str | None] | None = None,
                       ) -> dict[str, torch.Tensor]:
        """`binding`: a hash of what the entry encodes, stored and compared; `validate(tensors)`: a
        reason to reject a loaded entry, or None."""
        if not self.enabled:
            self.misses += 1
            return compute()
        key = stable_hash(parts)
        data_path, meta_path = self._paths(key)
        if data_path.is_file():
            value, reason = self._load(data_path, key, binding, validate)
            if value is not None:
                self.hits += 1
                return value
            self.rejected += 1
            warnings.warn(f"feature cache entry {data_path} rejected ({reason}): recomputing it",
                          FeatureCacheWarning, stacklevel=3)
        self.misses += 1
        value = compute()
        tensors = {k: v.detach().cpu() for k, v in value.items()}
        entry = {"format": ENTRY_FORMAT, "key": key, "binding": binding, "tensors": tensors,
                 "checks": {k: _describe(v) for k, v in tensors.items()}}
        data_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(data_path, lambda f: torch.save(entry, f))
        atomic_write_text(meta_path, json.dumps(parts, indent=1, default=str))
        return value


@dataclass
class EncodedImages:
    features: torch.Tensor  # [views, N, D] projected, not normalized
    labels: torch.Tensor  # [N]
    indices: torch.Tensor  # [N] positions in the sample list (corrupt images are left out)
    skipped: list[str] = field(default_factory=list)  # relative paths of the images left out


def _rows_check(samples: Sequence[Sample], views: int):
    """Rejects an image entry whose rows do not match `samples` (reordered, or of another list)."""
    def check(t: dict) -> str | None:
        feats, labels, idx = t.get("features"), t.get("labels"), t.get("indices")
        if feats is None or labels is None or idx is None:
            return "missing arrays"
        n = idx.numel()
        if feats.dim() != 3 or feats.shape[0] != views or feats.shape[1] != n or labels.shape != (n,) or idx.dim() != 1:
            return "its shapes do not match its samples"
        if n and (int(idx.min()) < 0 or int(idx.max()) >= len(samples) or (n > 1 and bool((idx[1:] <= idx[:-1]).any()))):
            return "its row indices are out of order or range"
        want = torch.tensor([int(samples[i].label) for i in idx.tolist()], dtype=labels.dtype)
        if not torch.equal(labels, want):
            return "its rows' labels do not match its samples"
        return None
    return check


@torch.no_grad()
def encode_images(backbone, samples: Sequence[Sample], image_root: Path, transform, *, views: int = 1,
                  seed: int = 0, batch_size: int = 128, num_workers: int = 0,
                  cache: FeatureCache | None = None, desc: str = "encode images",
                  progress: bool = True) -> EncodedImages:
    """Frozen image features of `samples` (one pass per augmented view), cached on disk."""
    from ..data.images import ImageDataset, collate_skip_none

    cache = cache or FeatureCache(enabled=False)
    fingerprint = samples_fingerprint(samples, image_root, cache.content_hash) if cache.enabled else None
    parts = {"kind": "image", "model": backbone.model_id, "samples": fingerprint,
             "transform": repr(transform), "views": views, "seed": seed if views > 1 else None}
    if cache.content_hash:
        parts["identity"] = "content"

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

    misses = cache.misses
    out = cache.get_or_compute(parts, compute, binding=sample_list_hash(samples), validate=_rows_check(samples, views))
    kept = set(out["indices"].tolist())
    skipped = [s.path for i, s in enumerate(samples) if i not in kept]
    if skipped and cache.misses == misses:  # a hit: the per-file warnings came when it was computed
        from ..data.images import UnreadableImageWarning

        warnings.warn(f"{desc}: {len(skipped)} of {len(samples)} images were unreadable when these cached features "
                      f"were computed and are left out (e.g. {Path(image_root) / skipped[0]})",
                      UnreadableImageWarning, stacklevel=2)
    return EncodedImages(out["features"], out["labels"], out["indices"], skipped)


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

    def rows(t: dict) -> str | None:
        f = t.get("features")
        return None if f is not None and f.dim() == 2 and f.shape[0] == len(classnames) else "wrong shape"

    return (cache or FeatureCache(enabled=False)).get_or_compute(
        parts, compute, binding=stable_hash([list(classnames), list(templates)]), validate=rows)["features"]
