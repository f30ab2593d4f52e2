"""Methods trained on cached frozen features: linear probe, CLIP-Adapter, Tip-Adapter-F.

Checked against independent truths: hand parameter counts on ViT-B/16, zero-shot CLIP at α = 0,
the Tip-Adapter cache formula on hand-made tensors, sklearn fitted directly, the feature cache."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_color_dataset

from workbench.backbone import CLIPBackbone, trainable_parameter_report
from workbench.data.transforms import train_transform
from workbench.engine.evaluate import evaluate
from workbench.engine.features import FeatureCache, class_text_features, encode_images
from workbench.engine.train import TrainConfig, fit
from workbench.methods import ClassTask, build_method
from workbench.methods.linear_probe import COARSE_GRID

TASK = ClassTask("fixture", ("cat", "dog", "golden retriever", "red circle"), ("a photo of a {}.",))


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return CLIPBackbone.from_pretrained("ViT-B-16-quickgelu")


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return make_color_dataset(tmp_path_factory.mktemp("colors"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return FeatureCache(tmp_path_factory.mktemp("features"))


@pytest.fixture
def backbone(tiny_backbone):
    tiny_backbone.clear_extensions()
    yield tiny_backbone
    tiny_backbone.clear_extensions()


def trainable(method) -> int:
    return trainable_parameter_report(method)["trainable"]


def test_parameter_counts_vit_b16(vit_b16):
    vit_b16.clear_extensions()
    # two bias-free linears 512 -> 128 -> 512, as in the released adapter
    assert trainable(build_method("clip_adapter", vit_b16, TASK)) == 2 * 512 * 128 == 131_072
    # one weight row and one bias per class
    assert trainable(build_method("linear_probe", vit_b16, TASK)) == 4 * 512 + 4
    tip = build_method("tip_adapter", vit_b16, TASK, overrides={"epochs": 0, "search": False})
    assert trainable(tip) == 0  # the cache exists only once fitted
    shots = 16
    labels = torch.arange(len(TASK.classnames)).repeat(shots)
    tip.fit_closed_form(torch.randn(2, labels.numel(), 512), labels)
    assert trainable(tip) == shots * 4 * 512  # keys: N_shots · C · D


def test_clip_adapter_ratio_zero_is_zero_shot(backbone, colors, cache):
    task = ClassTask.from_splits(colors)
    zero = evaluate(build_method("zeroshot", backbone, task), colors, cache=cache, progress=False)
    frozen = evaluate(build_method("clip_adapter", backbone, task, overrides={"ratio": 0.0}), colors, cache=cache,
                      progress=False)
    blended = evaluate(build_method("clip_adapter", backbone, task), colors, cache=cache, progress=False)
    assert np.allclose(frozen.logits, zero.logits, atol=1e-4)
    assert not np.allclose(blended.logits, zero.logits, atol=1e-3)  # α = 0.2 does change the logits


def _fit_tip(backbone, ds, cache, **overrides):
    method = build_method("tip_adapter", backbone, ClassTask.from_splits(ds), overrides=overrides)
    fit(method, ds, TrainConfig(feature_views=2, crop_scale=(0.5, 1.0)), cache=cache, progress=False)
    return method


def test_tip_adapter_alpha_zero_is_zero_shot(backbone, colors, cache):
    task = ClassTask.from_splits(colors)
    zero = evaluate(build_method("zeroshot", backbone, task), colors, cache=cache, progress=False)
    tip = _fit_tip(backbone, colors, cache, init_alpha=0.0, search=False, epochs=1)
    assert tip.keys.shape[0] == len(colors.train)
    assert np.allclose(evaluate(tip, colors, cache=cache, progress=False).logits, zero.logits, atol=1e-4)
    tip.state_alpha.fill_(1.0)
    assert not np.allclose(evaluate(tip, colors, cache=cache, progress=False).logits, zero.logits, atol=1e-3)


def test_tip_adapter_cache_logits_by_hand(backbone):
    task = ClassTask("hand", ("red", "green"), ("a photo of a {}.",))
    method = build_method("tip_adapter", backbone, task,
                          overrides={"init_alpha": 0.5, "init_beta": 2.0, "epochs": 0, "search": False})
    dim = backbone.embed_dim
    keys = torch.zeros(1, 3, dim)
    keys[0, 0, 0] = keys[0, 1, 1] = keys[0, 2, 2] = 7.0  # unit axes once normalized
    method.fit_closed_form(keys, torch.tensor([0, 1, 0]))
    method.prepare_eval(task, "base")
    f = torch.zeros(1, dim)
    f[0, 0], f[0, 1] = 3.0, 4.0  # normalized: (0.6, 0.8, 0, …)
    # affinities 0.6, 0.8, 0 -> exp(-2·0.4), exp(-2·0.2), exp(-2·1); the third key is class 0 too
    cache_part = torch.tensor([[math.exp(-0.8) + math.exp(-2.0), math.exp(-0.4)]])
    text = class_text_features(backbone, task.classnames, task.templates)
    clip_part = backbone.logit_scale * (f / 5.0) @ text.t()
    assert torch.allclose(method.eval_logits(f), clip_part + 0.5 * cache_part, atol=1e-4)


def test_tip_adapter_scores_other_classes_zero_shot_and_subsets_from_cache(backbone, colors, cache):
    tip = _fit_tip(backbone, colors, cache, epochs=1, search=False, init_alpha=1.0)
    features = torch.randn(6, backbone.embed_dim)
    tip.prepare_eval(ClassTask.from_splits(colors), "base")
    full = tip.eval_logits(features)
    subset = ClassTask("colors_subset", ("blue", "red"), tuple(colors.templates))
    tip.prepare_eval(subset, "shift")
    assert torch.allclose(tip.eval_logits(features), full[:, [2, 0]], atol=1e-5)
    other = ClassTask("other", ("cat", "dog", "red"), tuple(colors.templates))
    tip.prepare_eval(other, "new")
    zero = backbone.logit_scale * F.normalize(features, dim=-1) @ class_text_features(
        backbone, other.classnames, other.templates).t()
    assert torch.allclose(tip.eval_logits(features), zero, atol=1e-4)


def test_tip_adapter_finetuning_lowers_the_loss(backbone, colors, cache):
    def training_loss(method):
        enc = encode_images(backbone, colors.train, colors.image_root,
                            train_transform(backbone.image_size, backbone.mean, backbone.std, scale=(0.5, 1.0)),
                            views=2, seed=1, cache=cache)
        with torch.no_grad():
            logits = method.tip_logits(enc.features[0], method.train_text, method.state_values)
        return float(F.cross_entropy(logits, enc.labels))

    before = training_loss(_fit_tip(backbone, colors, cache, epochs=0, search=False))
    after = training_loss(_fit_tip(backbone, colors, cache, epochs=5, lr=0.01, search=False))
    assert after < before


def _clusters(generator, n_per_class, centers, noise):
    labels = torch.arange(centers.shape[0]).repeat_interleave(n_per_class)
    return centers[labels] + noise * torch.randn(labels.numel(), centers.shape[1], generator=generator), labels


def test_linear_probe_search_picks_the_best_val_c_by_sklearn(backbone):
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(3)
    dim, classes = backbone.embed_dim, 5
    centers = torch.randn(classes, dim, generator=g)
    train_x, train_y = _clusters(g, 4, centers, 2.5)
    val_x, val_y = _clusters(g, 4, centers, 2.5)
    test_x, _ = _clusters(g, 6, centers, 2.5)
    task = ClassTask("clusters", tuple(f"class {i}" for i in range(classes)))
    probe = build_method("linear_probe", backbone, task, overrides={"max_iter": 100})
    scalars = probe.fit_closed_form(train_x.unsqueeze(0), train_y, val_x, val_y)

    def sk_fit(c):
        return LogisticRegression(C=c, max_iter=100).fit(F.normalize(train_x, dim=-1).double().numpy(), train_y.numpy())

    val_norm = F.normalize(val_x, dim=-1).double().numpy()
    truth = {c: float((sk_fit(c).predict(val_norm) == val_y.numpy()).mean()) for c, _ in probe.search_log}
    assert set(COARSE_GRID) <= set(truth)
    assert len(truth) > len(COARSE_GRID)  # the fine search ran
    assert len(set(truth.values())) > 1  # C matters on this data, so the choice is a real one
    assert dict(probe.search_log) == pytest.approx(truth)
    chosen = float(probe.state_c)
    assert truth[chosen] == max(truth.values())
    assert scalars["C"] == chosen
    # the refit classifier is sklearn's at the chosen C
    probe.prepare_eval(task, "base")
    logits = probe.eval_logits(test_x)
    expected = sk_fit(chosen).decision_function(F.normalize(test_x, dim=-1).double().numpy())
    assert np.allclose(logits.detach().numpy(), expected, atol=1e-3)


def test_linear_probe_scores_only_its_classes(backbone, colors, cache):
    probe = build_method("linear_probe", backbone, ClassTask.from_splits(colors), overrides={"max_iter": 100})
    result = fit(probe, colors, TrainConfig(feature_views=1, crop_scale=(1.0, 1.0), flip=False), cache=cache,
                 progress=False)
    assert result.history[0]["C"] == float(probe.state_c)
    full = evaluate(probe, colors, cache=cache, progress=False)
    assert full.logits.shape == (len(colors.test), 5)
    features = torch.randn(3, backbone.embed_dim)
    probe.prepare_eval(ClassTask.from_splits(colors), "base")
    all_logits = probe.eval_logits(features)
    probe.prepare_eval(ClassTask("subset", ("yellow", "green")), "shift")
    assert torch.allclose(probe.eval_logits(features), all_logits[:, [3, 1]])
    with pytest.raises(ValueError, match="not applicable"):
        probe.prepare_eval(ClassTask("novel", ("red", "orange")), "new")


def test_one_epoch_on_features_lowers_the_loss(backbone, colors, cache):
    cfg = TrainConfig(epochs=1, batch_size=4, feature_views=1, warmup_epochs=0, lr=0.05, schedule="constant")
    adapter = build_method("clip_adapter", backbone, ClassTask.from_splits(colors))
    enc = encode_images(backbone, colors.train, colors.image_root,
                        train_transform(backbone.image_size, backbone.mean, backbone.std, scale=cfg.crop_scale),
                        views=1, seed=1, cache=cache)
    with torch.no_grad():
        before = float(adapter.training_loss(enc.features[0], enc.labels).loss)
    fit(adapter, colors, cfg, seed=1, cache=cache, progress=False)
    with torch.no_grad():
        after = float(adapter.training_loss(enc.features[0], enc.labels).loss)
    assert after < before


def test_training_on_features_reuses_the_cache(backbone, colors, tmp_path):
    cache = FeatureCache(tmp_path / "features")
    cfg = TrainConfig(epochs=3, batch_size=4, feature_views=2, warmup_epochs=0, lr=0.01)
    task = ClassTask.from_splits(colors)

    def adapter():
        torch.manual_seed(0)  # the same adapter init both times
        return build_method("clip_adapter", backbone, task)

    first = fit(adapter(), colors, cfg, seed=7, cache=cache, progress=False)
    assert (cache.misses, cache.hits) == (1, 0)
    image_passes = []
    hook = backbone.visual.register_forward_hook(lambda *args: image_passes.append(1))
    try:
        second = fit(adapter(), colors, cfg, seed=7, cache=cache, progress=False)
    finally:
        hook.remove()
    assert (cache.misses, cache.hits) == (1, 1)
    assert image_passes == []  # no image was encoded while training the second time
    assert [h["loss"] for h in second.history] == [h["loss"] for h in first.history]


@pytest.mark.parametrize("name", ["linear_probe", "tip_adapter"])
def test_fitted_state_round_trips_into_a_fresh_method(backbone, name):
    g = torch.Generator().manual_seed(0)
    task = ClassTask("clusters", ("a", "b", "c"))
    labels = torch.arange(3).repeat(4)
    features = torch.randn(2, labels.numel(), backbone.embed_dim, generator=g)
    overrides = {"max_iter": 50} if name == "linear_probe" else {"epochs": 2, "search": False}
    fitted = build_method(name, backbone, task, overrides=overrides)
    fitted.fit_closed_form(features, labels, features[1], labels)
    fresh = build_method(name, backbone, task, overrides=overrides)
    fresh.load_trainable_state_dict(fitted.trainable_state_dict())
    probe = torch.randn(5, backbone.embed_dim, generator=g)
    for method in (fitted, fresh):
        method.prepare_eval(task, "base")
    assert torch.equal(fresh.eval_logits(probe), fitted.eval_logits(probe))
