"""Evaluation of any method on a dataset split: the method supplies the logits for a domain."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.images import ImageDataset, collate_skip_none
from ..data.transforms import test_transform
from ..data.types import DatasetSplits
from .features import FeatureCache, encode_images
from .zeroshot import EvalResult


@torch.no_grad()
def evaluate(method, ds: DatasetSplits, split: str = "test", domain: str = "base", *, device="cpu",
             batch_size: int = 128, cache: FeatureCache | None = None, progress: bool = True,
             max_embeddings: int = 0) -> EvalResult:
    """Top-1 etc. of `method` on `ds[split]`. With `max_embeddings` > 0, the first that many image
    embeddings (and the class embeddings) are kept in `result.extra` for plots."""
    from ..methods.base import ClassTask

    device = torch.device(device)
    method.to(device).eval()
    method.prepare_eval(ClassTask.from_splits(ds), domain)
    backbone = method.backbone
    transform = test_transform(backbone.image_size, backbone.mean, backbone.std)
    samples = ds.split(split)
    if not samples:
        raise ValueError(f"{ds.name} has no {split} samples")
    logits, labels, embeddings = [], [], []
    kept = 0

    def score(inputs):
        nonlocal kept
        if kept >= max_embeddings:
            logits.append(method.eval_logits(inputs).float().cpu())
            return
        batch_logits, emb = method.eval_outputs(inputs)  # one encoding for both
        logits.append(batch_logits.float().cpu())
        emb = emb[: max_embeddings - kept].float().cpu()
        embeddings.append(emb)
        kept += emb.shape[0]

    if method.evaluates_on_cached_features():
        enc = encode_images(backbone, samples, ds.image_root, transform, cache=cache, desc=f"{ds.name}/{split}",
                            progress=progress)
        for start in range(0, enc.labels.shape[0], batch_size):
            score(enc.features[0, start:start + batch_size].to(device))
        labels = [enc.labels]
    else:
        loader = DataLoader(ImageDataset(samples, ds.image_root, transform), batch_size=batch_size,
                            collate_fn=collate_skip_none)
        for batch in tqdm(loader, desc=f"eval {ds.name}/{split}", leave=False, disable=not progress):
            if batch is None:
                continue
            score(batch[0].to(device))
            labels.append(batch[1])
    logits_t = torch.cat(logits) if logits else torch.empty(0, ds.num_classes)
    labels_t = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    extra = {"domain": domain}
    if embeddings:
        extra["image_embeddings"] = torch.cat(embeddings).numpy()
        classes = method.eval_class_embeddings()
        if classes is not None:
            extra["class_embeddings"] = classes.float().cpu().numpy()
    return EvalResult(ds.name, split, list(ds.classnames), labels_t.numpy(), logits_t.argmax(-1).numpy(),
                      logits_t.numpy(), skipped=len(samples) - labels_t.shape[0], extra=extra)
