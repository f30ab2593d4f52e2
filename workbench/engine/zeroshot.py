"""Zero-shot classification with prompt templates (and template ensembles), plus base/new/HM."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..analysis.metrics import accuracy, confusion_matrix, harmonic_mean
from ..data.sampling import base_new_split
from ..data.transforms import test_transform
from ..data.types import DatasetSplits
from .features import FeatureCache, class_text_features, encode_images


@dataclass
class EvalResult:
    dataset: str
    split: str
    classnames: list[str]
    labels: np.ndarray
    predictions: np.ndarray
    logits: np.ndarray
    skipped: int = 0  # unreadable images left out
    extra: dict = field(default_factory=dict)

    @property
    def top1(self) -> float:
        return accuracy(self.labels, self.predictions)

    @property
    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.labels, self.predictions, len(self.classnames))


def backbone_test_transform(backbone):
    return test_transform(backbone.image_size, backbone.mean, backbone.std)


def zero_shot_classifier(backbone, classnames: Sequence[str], templates: Sequence[str],
                         cache: FeatureCache | None = None) -> torch.Tensor:
    return class_text_features(backbone, classnames, templates, cache=cache)


def evaluate_zero_shot(backbone, ds: DatasetSplits, split: str = "test", templates: Sequence[str] | None = None,
                       cache: FeatureCache | None = None, batch_size: int = 128) -> EvalResult:
    """Top-1 of CLIP's zero-shot classifier (logit scale · cosine) on one split of `ds`."""
    templates = list(templates or ds.templates)
    samples = ds.split(split)
    if not samples:
        raise ValueError(f"{ds.name} has no {split} samples")
    text = zero_shot_classifier(backbone, ds.classnames, templates, cache)
    images = encode_images(backbone, samples, ds.image_root, backbone_test_transform(backbone),
                           batch_size=batch_size, cache=cache, desc=f"{ds.name}/{split}")
    feats = torch.nn.functional.normalize(images.features[0], dim=-1)
    logits = backbone.logit_scale.detach().cpu().float() * feats @ text.T
    return EvalResult(ds.name, split, list(ds.classnames), images.labels.numpy(),
                      logits.argmax(-1).numpy(), logits.numpy(), skipped=len(samples) - len(images.labels),
                      extra={"templates": templates})


def base_to_novel_zero_shot(backbone, ds: DatasetSplits, templates: Sequence[str] | None = None,
                            cache: FeatureCache | None = None) -> dict:
    """Zero-shot top-1 on the base and new halves (each its own label space) and their HM."""
    base, new = base_new_split(ds)
    base_result = evaluate_zero_shot(backbone, base, "test", templates, cache)
    new_result = evaluate_zero_shot(backbone, new, "test", templates, cache)
    return {"base": base_result, "new": new_result,
            "hm": harmonic_mean(base_result.top1, new_result.top1)}
