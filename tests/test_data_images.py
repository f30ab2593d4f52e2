"""Corrupt images are skipped and counted without crashing an epoch; transforms have the right shape."""
from __future__ import annotations

import warnings

import torch
from PIL import Image
from torch.utils.data import DataLoader

from workbench.data import load_dataset
from workbench.data.images import ImageDataset, UnreadableImageWarning, collate_skip_none
from workbench.data import transforms as tfm

try:
    from data_fixtures import CORRUPT, make_eurosat
except ImportError:
    from tests.data_fixtures import CORRUPT, make_eurosat


def _epoch(loader):
    seen, batches = [], 0
    for batch in loader:
        if batch is None:
            continue
        images, labels, index = batch
        assert images.shape[1:] == (3, 16, 16)
        seen += index.tolist()
        batches += 1
    return seen, batches


def test_corrupt_image_skipped_and_counted(tmp_path):
    make_eurosat(tmp_path)
    ds = load_dataset("eurosat", root=tmp_path)
    data = ImageDataset(ds.test, ds.image_root, tfm.test_transform(16))
    loader = DataLoader(data, batch_size=4, shuffle=False, collate_fn=collate_skip_none)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        seen, _ = _epoch(loader)
        seen2, _ = _epoch(loader)  # second epoch: no second warning for the same file
    bad = next(i for i, s in enumerate(ds.test) if s.path == CORRUPT)
    assert sorted(seen) == [i for i in range(len(ds.test)) if i != bad] == sorted(seen2)
    assert data.skipped == [CORRUPT]
    assert sum(issubclass(x.category, UnreadableImageWarning) for x in w) == 1


def test_skips_counted_across_workers(tmp_path):
    make_eurosat(tmp_path)
    ds = load_dataset("eurosat", root=tmp_path)
    data = ImageDataset(ds.test, ds.image_root, tfm.test_transform(16))
    loader = DataLoader(data, batch_size=5, num_workers=1, collate_fn=collate_skip_none)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seen, _ = _epoch(loader)
    assert len(seen) == len(ds.test) - 1
    assert data.skipped == [CORRUPT]


def test_missing_file_and_all_bad_batch(tmp_path):
    make_eurosat(tmp_path)
    ds = load_dataset("eurosat", root=tmp_path)
    (ds.image_root / ds.test[0].path).unlink()
    bad = [ds.test[0]] + [s for s in ds.test if s.path == CORRUPT]
    data = ImageDataset(bad, ds.image_root, tfm.test_transform(16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert collate_skip_none([data[0], data[1]]) is None
    assert len(data.skipped) == 2


def test_transforms_shapes_and_normalization():
    img = Image.new("RGB", (40, 24), (255, 255, 255))
    x = tfm.test_transform(16)(img)
    assert x.shape == (3, 16, 16)
    expected = (1 - torch.tensor(tfm.CLIP_MEAN)) / torch.tensor(tfm.CLIP_STD)
    assert torch.allclose(x[:, 8, 8], expected, atol=1e-4)
    t = tfm.train_transform(16, scale=(0.5, 1.0))
    assert t(img).shape == (3, 16, 16)
    crop = t.transforms[0]
    assert crop.scale == (0.5, 1.0) and crop.interpolation.value == "bicubic"
    assert tfm.train_transform(16).transforms[0].scale == (0.08, 1.0)
