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


def _png(path, color, size=8):
    Image.new("RGB", (size, size), color).save(path)
    return path


def test_decoded_image_cache_hits_rereads_changed_files_and_evicts(tmp_path, monkeypatch):
    from workbench.data import images as images_mod

    opened = []
    real_open = images_mod.open_rgb
    monkeypatch.setattr(images_mod, "open_rgb", lambda p: opened.append(str(p)) or real_open(p))
    a, b, c = (_png(tmp_path / f"{n}.png", (i * 80, 0, 0)) for i, n in enumerate("abc"))
    cache = images_mod.DecodedImageCache(max_bytes=2 * 8 * 8 * 3)  # room for two 8x8 images
    assert cache.get(a).getpixel((0, 0)) == (0, 0, 0)
    assert cache.get(a).getpixel((0, 0)) == (0, 0, 0)
    assert opened == [str(a)] and (cache.hits, cache.misses) == (1, 1)

    _png(a, (5, 6, 7))  # rewritten (new mtime/size key): decoded again, not served stale
    import os
    os.utime(a, ns=(10**18, 10**18))
    assert cache.get(a).getpixel((0, 0)) == (5, 6, 7)
    assert opened.count(str(a)) == 2

    cache.clear()
    cache.get(a), cache.get(b), cache.get(a), cache.get(c)  # b is least recently used when c arrives
    assert cache.bytes <= cache.max_bytes
    opened.clear()
    cache.get(a), cache.get(c), cache.get(b)
    assert opened == [str(b)]


def test_dataset_reads_through_the_cache_and_still_skips_corrupt_files(tmp_path):
    from workbench.data.images import DecodedImageCache

    make_eurosat(tmp_path)
    ds = load_dataset("eurosat", root=tmp_path)
    cache = DecodedImageCache(max_bytes=2**24)
    data = ImageDataset(ds.test, ds.image_root, tfm.test_transform(16), cache=cache)
    uncached = ImageDataset(ds.test, ds.image_root, tfm.test_transform(16), cache=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = [data[i] for i in range(len(data))]
        again = [data[i] for i in range(len(data))]
        plain = [uncached[i] for i in range(len(uncached))]
    readable = len(ds.test) - 1
    assert cache.misses == readable + 2 and cache.hits == readable  # the corrupt file: a miss every time
    for x, y, z in zip(first, again, plain):
        assert (x is None) == (y is None) == (z is None)
        if x is not None:
            assert torch.equal(x[0], y[0]) and torch.equal(x[0], z[0])
    assert data.skipped == [CORRUPT]


def test_dataloader_workers_bypass_the_cache(tmp_path, monkeypatch):
    from workbench.data import images as images_mod

    path = _png(tmp_path / "a.png", (1, 2, 3))
    cache = images_mod.DecodedImageCache(max_bytes=2**20)
    monkeypatch.setattr(images_mod, "get_worker_info", lambda: object())  # as inside a worker process
    cache.get(path), cache.get(path)
    assert (cache.hits, cache.misses, cache.bytes) == (0, 0, 0)
    monkeypatch.setattr(images_mod, "get_worker_info", lambda: None)
    cache.get(path), cache.get(path)
    assert (cache.hits, cache.misses) == (1, 1)


def test_decoded_image_cache_sees_a_rewrite_with_size_and_mtime_kept(tmp_path):
    import os

    from workbench.data.images import DecodedImageCache

    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path, compress_level=0)
    os.utime(path, ns=(10**18, 10**18))
    cache = DecodedImageCache(max_bytes=2**20)
    assert cache.get(path).getpixel((0, 0)) == (1, 2, 3)
    size = path.stat().st_size
    Image.new("RGB", (8, 8), (9, 9, 9)).save(path, compress_level=0)
    os.utime(path, ns=(10**18, 10**18))
    assert path.stat().st_size == size
    assert cache.get(path).getpixel((0, 0)) == (9, 9, 9)


def test_check_skipped_threshold_and_env(monkeypatch):
    import pytest

    from workbench.data.images import TooManyUnreadableImagesError, check_skipped

    check_skipped(["a.jpg"], 20, "eurosat")  # 5%: at the limit, allowed
    with pytest.raises(TooManyUnreadableImagesError, match=r"2 of 20 training images of eurosat could not be read "
                       r"\(e.g. /d/a.jpg\): run `workbench data check --dataset eurosat`"):
        check_skipped(["a.jpg", "b.jpg"], 20, "eurosat_base", image_root="/d")
    monkeypatch.setenv("WORKBENCH_MAX_SKIPPED_FRACTION", "0.5")
    check_skipped(["a.jpg"] * 10, 20, "eurosat")
    monkeypatch.setenv("WORKBENCH_MAX_SKIPPED_FRACTION", "0")
    with pytest.raises(TooManyUnreadableImagesError):
        check_skipped(["a.jpg"], 1000, "eurosat")
    monkeypatch.setenv("WORKBENCH_MAX_SKIPPED_FRACTION", "lots")
    with pytest.raises(ValueError, match="WORKBENCH_MAX_SKIPPED_FRACTION"):
        check_skipped([], 10, "eurosat")
