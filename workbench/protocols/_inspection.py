"""Arrays a method produces for inspection (`Method.inspection_arrays`), stored per evaluated split.

Only for methods that declare a plot of kind "arrays"; computed on the first `INSPECTED_IMAGES` test
images of the split, after its evaluation (the method is prepared for that split's classes)."""
from __future__ import annotations

import torch

INSPECTED_IMAGES = 4


def declares_arrays(method) -> bool:
    return any(p.get("kind") == "arrays" for p in getattr(method, "plots", ()) or ())


def save_inspection_arrays(run, method, ds, key: str, device, n: int = INSPECTED_IMAGES) -> None:
    """Store `method.inspection_arrays` of the first `n` readable test images of `ds` under `key`."""
    if run is None or not declares_arrays(method):
        return
    from ..data.images import ImageDataset
    from ..data.transforms import test_transform

    backbone = method.backbone
    images = ImageDataset(ds.test, ds.image_root, test_transform(backbone.image_size, backbone.mean, backbone.std))
    batch = []
    for i in range(len(images)):
        item = images[i]
        if item is not None:
            batch.append(item[0])
        if len(batch) == n:
            break
    if not batch:
        return
    with torch.no_grad():
        arrays = method.inspection_arrays(torch.stack(batch).to(device))
    if arrays:
        run.files.save_inspection(key, arrays)
