"""CLIP-style image transforms.

train: RandomResizedCrop(size, scale) with bicubic interpolation, horizontal flip, normalize.
test:  resize the short side to `size` (bicubic), center crop `size`, normalize.
Defaults are OpenAI CLIP's mean/std and CoOp's crop scale (0.08, 1); MMRL uses scale (0.5, 1).
"""
from __future__ import annotations

from typing import Any, Sequence

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_SCALE = (0.08, 1.0)


def normalized_batch(images, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
    """uint8 array (N, H, W, 3) -> normalised float tensor (N, 3, H, W), as open_clip's preprocess does."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _size(image_size: int | Sequence[int]) -> int:
    if isinstance(image_size, (tuple, list)):
        if len(set(image_size)) != 1:
            raise ValueError(f"only square images are supported, got {image_size}")
        return int(image_size[0])
    return int(image_size)


def train_transform(
    image_size: int | Sequence[int] = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    scale: Sequence[float] = DEFAULT_SCALE,
    flip: bool = True,
) -> T.Compose:
    size = _size(image_size)
    steps: list[Any] = [T.RandomResizedCrop(size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(steps)


def test_transform(
    image_size: int | Sequence[int] = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> T.Compose:
    size = _size(image_size)
    return T.Compose(
        [
            T.Resize(size, interpolation=InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(tuple(mean), tuple(std)),
        ]
    )


def preprocess_params(model: Any) -> dict[str, Any]:
    """image_size, mean and std of an open_clip model (falls back to CLIP's values)."""
    visual = getattr(model, "visual", model)
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    size = cfg.get("size") or getattr(visual, "image_size", 224)
    mean = cfg.get("mean") or getattr(visual, "image_mean", None) or CLIP_MEAN
    std = cfg.get("std") or getattr(visual, "image_std", None) or CLIP_STD
    return {"image_size": _size(size), "mean": tuple(mean), "std": tuple(std)}


def transforms_for(model: Any, scale: Sequence[float] = DEFAULT_SCALE) -> tuple[T.Compose, T.Compose]:
    """(train, test) transforms matching an open_clip model's input size and normalization."""
    p = preprocess_params(model)
    return train_transform(scale=scale, **p), test_transform(**p)
