"""Damaged or mismatched feature-cache entries are recomputed, never served; content-hash mode."""
from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from workbench.data.transforms import test_transform as eval_transform
from workbench.engine import features as feats
from workbench.engine.features import FeatureCache, FeatureCacheWarning, class_text_features, encode_images


def _encode(backbone, ds, cache, samples=None):
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std)
    return encode_images(backbone, samples if samples is not None else ds.test, ds.image_root, transform,
                         cache=cache, progress=False)


def _entry_file(cache_root):
    (path,) = [p for p in cache_root.rglob("*.pt")]
    return path


def _rewrite(path, edit):
    """Apply `edit(tensors)` and save a well-formed entry (checksums of the edited arrays)."""
    entry = torch.load(path, weights_only=True)
    edit(entry["tensors"])
    entry["checks"] = {k: feats._describe(v) for k, v in entry["tensors"].items()}
    torch.save(entry, path)


def _assert_recomputed(backbone, ds, cache, fresh, match):
    with pytest.warns(FeatureCacheWarning, match=match) as record:
        again = _encode(backbone, ds, cache)
    assert str(_entry_file(cache.root)) in str(record[0].message)  # the warning names the entry
    assert torch.equal(again.features, fresh.features) and torch.equal(again.labels, fresh.labels)
    assert _encode(backbone, ds, cache).features.equal(fresh.features)  # the rewritten entry is served again


def test_flipped_bytes_inside_an_entry_are_caught(tiny_backbone, color_dataset, tmp_path):
    cache = FeatureCache(tmp_path / "f")
    fresh = _encode(tiny_backbone, color_dataset, cache)
    path = _entry_file(cache.root)
    raw = bytearray(path.read_bytes())
    at = raw.find(fresh.features.numpy().tobytes()[:64])
    assert at > 0
    for i in range(at + 100, at + 108):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    damaged = torch.load(path, weights_only=True)["tensors"]["features"]  # loads fine: only the checksum sees it
    assert not torch.equal(damaged, fresh.features)
    _assert_recomputed(tiny_backbone, color_dataset, cache, fresh, "fails its checksum")
    assert (cache.hits, cache.misses, cache.rejected) == (1, 2, 1)


def test_entry_whose_rows_no_longer_match_its_samples_is_rejected(tiny_backbone, color_dataset, tmp_path):
    cache = FeatureCache(tmp_path / "f")
    fresh = _encode(tiny_backbone, color_dataset, cache)
    path = _entry_file(cache.root)
    rev = torch.arange(len(color_dataset.test) - 1, -1, -1)

    # rows of features and labels reversed, checksums rewritten to match: labels no longer match the samples
    def rows(t):
        t["features"], t["labels"] = t["features"][:, rev], t["labels"][rev]

    _rewrite(path, rows)
    _assert_recomputed(tiny_backbone, color_dataset, cache, fresh, "labels do not match")

    # indices reversed too: every row still names its sample, but the order is not the encoding's
    def all_rows(t):
        t["features"], t["labels"], t["indices"] = t["features"][:, rev], t["labels"][rev], t["indices"][rev]

    _rewrite(path, all_rows)
    _assert_recomputed(tiny_backbone, color_dataset, cache, fresh, "out of order")

    # features alone shuffled, checksum left as written: the checksum catches it
    entry = torch.load(path, weights_only=True)
    entry["tensors"]["features"] = entry["tensors"]["features"][:, rev].clone()
    torch.save(entry, path)
    _assert_recomputed(tiny_backbone, color_dataset, cache, fresh, "fails its checksum")

    # a wrong shape with a matching checksum
    _rewrite(path, lambda t: t.update(features=t["features"][:, :3]))
    _assert_recomputed(tiny_backbone, color_dataset, cache, fresh, "shapes do not match")


def test_entry_of_another_sample_list_or_key_is_rejected(tiny_backbone, color_dataset, tmp_path):
    cache = FeatureCache(tmp_path / "f")
    fresh = _encode(tiny_backbone, color_dataset, cache)
    path = _entry_file(cache.root)
    good = path.read_bytes()
    # an entry encoding the sample list in another order, put at this key's file with this key
    other = FeatureCache(tmp_path / "other")
    _encode(tiny_backbone, color_dataset, other, samples=list(reversed(color_dataset.test)))
    entry = torch.load(_entry_file(other.root), weights_only=True)
    entry["key"] = torch.load(path, weights_only=True)["key"]
    torch.save(entry, path)
    _assert_recomputed(tiny_backbone, color_dataset, cache, fresh, "another sample list")
    # the right content under another key (a copied file)
    entry = torch.load(path, weights_only=True)
    entry["key"] = "0" * 64
    torch.save(entry, path)
    _assert_recomputed(tiny_backbone, color_dataset, cache, fresh, "another key")
    # an entry of the format before checksums, and a truncated file
    torch.save({"features": fresh.features, "labels": fresh.labels, "indices": fresh.indices}, path)
    _assert_recomputed(tiny_backbone, color_dataset, cache, fresh, "no checksums")
    path.write_bytes(good[: len(good) // 2])
    _assert_recomputed(tiny_backbone, color_dataset, cache, fresh, "unreadable")


def test_damaged_text_entry_is_recomputed(tiny_backbone, tmp_path):
    cache = FeatureCache(tmp_path / "t")
    fresh = class_text_features(tiny_backbone, ["a", "b"], ["{}"], cache=cache)
    path = _entry_file(cache.root)
    entry = torch.load(path, weights_only=True)
    entry["tensors"]["features"] = entry["tensors"]["features"].flip(0).clone()
    torch.save(entry, path)
    with pytest.warns(FeatureCacheWarning, match="checksum"):
        again = class_text_features(tiny_backbone, ["a", "b"], ["{}"], cache=cache)
    assert torch.equal(again, fresh) and cache.rejected == 1


def _same_size_png(path, color):
    Image.new("RGB", (48, 48), color).save(path, compress_level=0)  # uncompressed: size set by the dimensions


@pytest.mark.parametrize("mode", ["option", "env"])
def test_content_hash_mode_sees_an_image_rewritten_with_size_and_mtime_kept(tiny_backbone, color_dataset, tmp_path,
                                                                             monkeypatch, mode):
    target = color_dataset.image_root / color_dataset.test[2].path
    _same_size_png(target, (255, 0, 0))
    os.utime(target, ns=(10**18, 10**18))
    size = target.stat().st_size
    if mode == "env":
        monkeypatch.setenv("WORKBENCH_CACHE_CONTENT_HASH", "1")
        by_content = FeatureCache(tmp_path / "content")
    else:
        by_content = FeatureCache(tmp_path / "content", content_hash=True)
    assert by_content.content_hash
    by_stat = FeatureCache(tmp_path / "stat", content_hash=False)
    first = _encode(tiny_backbone, color_dataset, by_content)
    _encode(tiny_backbone, color_dataset, by_stat)

    _same_size_png(target, (0, 0, 255))  # other bytes, same size, old mtime restored
    os.utime(target, ns=(10**18, 10**18))
    assert target.stat().st_size == size
    stale = _encode(tiny_backbone, color_dataset, by_stat)
    assert by_stat.hits == 1 and torch.equal(stale.features[0, 2], first.features[0, 2])  # size+mtime cannot see it
    fresh = _encode(tiny_backbone, color_dataset, by_content)
    assert (by_content.hits, by_content.misses) == (0, 2)
    assert not torch.allclose(fresh.features[0, 2], first.features[0, 2])
    assert torch.equal(fresh.features[0, 3], first.features[0, 3])
    _encode(tiny_backbone, color_dataset, by_content)
    assert by_content.hits == 1  # unchanged content: a hit


def test_skipped_images_are_reported_on_miss_and_hit(tiny_backbone, color_dataset, tmp_path):
    from workbench.data.images import UnreadableImageWarning

    bad = color_dataset.test[4]
    (color_dataset.image_root / bad.path).write_bytes(b"truncated")
    cache = FeatureCache(tmp_path / "f")
    with pytest.warns(UnreadableImageWarning, match="skipping unreadable"):
        miss = _encode(tiny_backbone, color_dataset, cache)
    with pytest.warns(UnreadableImageWarning, match="1 of 15 images were unreadable"):
        hit = _encode(tiny_backbone, color_dataset, cache)
    assert cache.hits == 1 and miss.skipped == hit.skipped == [bad.path]
    assert 4 not in hit.indices.tolist() and hit.features.shape[1] == len(color_dataset.test) - 1
