"""Zero-shot evaluation and the feature cache against hand computations with open_clip."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from workbench.analysis.metrics import accuracy, confusion_matrix, harmonic_mean, per_class_accuracy
from workbench.data.transforms import test_transform as eval_transform
from workbench.engine.features import FeatureCache, class_text_features, encode_images
from workbench.engine.zeroshot import base_to_novel_zero_shot, evaluate_zero_shot


def hand_text_classifier(clip, tokenizer, classnames, templates):
    rows = []
    for c in classnames:
        with torch.no_grad():
            e = F.normalize(clip.encode_text(tokenizer([t.format(c) for t in templates])), dim=-1)
        rows.append(F.normalize(e.mean(0), dim=-1))
    return torch.stack(rows)


def test_template_ensemble_matches_hand_computation(tiny_backbone):
    names, templates = ["cat", "dog", "red circle"], ["a photo of a {}.", "a {} thing.", "{}"]
    ours = class_text_features(tiny_backbone, names, templates)
    expected = hand_text_classifier(tiny_backbone.clip, tiny_backbone.tokenizer, names, templates)
    assert torch.allclose(ours, expected, atol=1e-5)


def test_zero_shot_matches_open_clip_by_hand(tiny_backbone, color_dataset):
    ds = color_dataset
    result = evaluate_zero_shot(tiny_backbone, ds, "test")
    transform = eval_transform(tiny_backbone.image_size, tiny_backbone.mean, tiny_backbone.std)
    images = torch.stack([transform(Image.open(ds.image_root / s.path).convert("RGB")) for s in ds.test])
    with torch.no_grad():
        img = F.normalize(tiny_backbone.clip.encode_image(images), dim=-1)
    text = hand_text_classifier(tiny_backbone.clip, tiny_backbone.tokenizer, ds.classnames, ds.templates)
    logits = tiny_backbone.clip.logit_scale.exp().item() * img @ text.T
    labels = np.array([s.label for s in ds.test])
    assert np.array_equal(result.labels, labels)
    assert np.allclose(result.logits, logits.numpy(), atol=1e-3)
    assert np.array_equal(result.predictions, logits.argmax(-1).numpy())
    assert result.top1 == pytest.approx(100.0 * (logits.argmax(-1).numpy() == labels).mean())
    assert result.confusion.sum() == len(ds.test) and result.confusion.shape == (5, 5)


def test_base_to_novel_uses_separate_label_spaces(tiny_backbone, color_dataset):
    r = base_to_novel_zero_shot(tiny_backbone, color_dataset)
    assert r["base"].classnames == ["red", "green", "blue"] and r["new"].classnames == ["yellow", "purple"]
    assert r["hm"] == pytest.approx(harmonic_mean(r["base"].top1, r["new"].top1))
    assert set(r["new"].labels) <= {0, 1}


def test_corrupt_image_is_skipped_and_counted(tiny_backbone, color_dataset):
    bad = color_dataset.image_root / color_dataset.test[0].path
    bad.write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="unreadable"):
        result = evaluate_zero_shot(tiny_backbone, color_dataset, "test")
    assert result.skipped == 1 and len(result.labels) == len(color_dataset.test) - 1


def test_metrics_by_hand():
    labels, preds = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2]
    assert accuracy(labels, preds) == pytest.approx(400 / 6)
    m = confusion_matrix(labels, preds, 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert np.allclose(per_class_accuracy(m), [50.0, 100.0, 200 / 3])
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)


def test_feature_cache_reuses_and_never_serves_stale(tiny_backbone, color_dataset, tmp_path):
    cache = FeatureCache(tmp_path / "features")
    transform = eval_transform(tiny_backbone.image_size, tiny_backbone.mean, tiny_backbone.std)
    first = encode_images(tiny_backbone, color_dataset.test, color_dataset.image_root, transform, cache=cache)
    again = encode_images(tiny_backbone, color_dataset.test, color_dataset.image_root, transform, cache=cache)
    assert (cache.misses, cache.hits) == (1, 1) and torch.equal(first.features, again.features)
    # the same sample list after one image changed on disk: a new key, recomputed features
    changed = color_dataset.image_root / color_dataset.test[2].path
    Image.new("RGB", (48, 48), (0, 0, 0)).save(changed)
    os.utime(changed, ns=(1, 1))
    third = encode_images(tiny_backbone, color_dataset.test, color_dataset.image_root, transform, cache=cache)
    assert cache.misses == 2
    assert not torch.allclose(third.features[0, 2], first.features[0, 2])
    assert torch.equal(third.features[0, 3], first.features[0, 3])
    # other weights: other key
    from workbench.backbone import CLIPBackbone

    torch.manual_seed(1)
    other = CLIPBackbone.from_pretrained("wb-tiny-vit")
    assert other.model_id != tiny_backbone.model_id
    encode_images(other, color_dataset.test, color_dataset.image_root, transform, cache=cache)
    assert cache.misses == 3
    # text features: templates are part of the key
    class_text_features(tiny_backbone, ["a", "b"], ["{}"], cache=cache)
    class_text_features(tiny_backbone, ["a", "b"], ["{}."], cache=cache)
    assert cache.misses == 5
    assert not [p for p in (tmp_path / "features").rglob("*") if ".tmp" in p.name]


def test_augmented_views_are_seeded(tiny_backbone, color_dataset):
    from workbench.data.transforms import train_transform

    aug = train_transform(tiny_backbone.image_size, tiny_backbone.mean, tiny_backbone.std)
    a = encode_images(tiny_backbone, color_dataset.train, color_dataset.image_root, aug, views=2, seed=5)
    b = encode_images(tiny_backbone, color_dataset.train, color_dataset.image_root, aug, views=2, seed=5)
    assert a.features.shape[0] == 2 and torch.equal(a.features, b.features)
    assert not torch.allclose(a.features[0], a.features[1])
