"""Methods with a frozen image tower (zero-shot, the CoOp family) read cached image features:
always in evaluation, in training when `cached_features` is set. The cached path must compute
exactly what the image path computes."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from workbench.data.images import ImageDataset
from workbench.data.transforms import test_transform as eval_transform
from workbench.engine.evaluate import evaluate
from workbench.engine.features import FeatureCache, encode_images
from workbench.engine.train import TrainConfig, fit
from workbench.methods import ClassTask, build_method

DETERMINISTIC = {"optimizer": "sgd", "lr": 0.05, "batch_size": 4, "epochs": 3, "warmup_epochs": 0,
                 "crop_scale": (1.0, 1.0), "flip": False}


def _coop(backbone, ds):
    return build_method("coop", backbone, ClassTask.from_splits(ds), overrides={"n_ctx": 4, "ctx_init": "a photo of a"})


def test_evaluation_on_cached_features_equals_scoring_the_images(tiny_backbone, color_dataset, tmp_path):
    tiny_backbone.clear_extensions()
    method = _coop(tiny_backbone, color_dataset)
    try:
        with torch.no_grad():
            method.context.ctx.add_(0.1 * torch.randn_like(method.context.ctx))
        assert method.evaluates_on_cached_features()
        result = evaluate(method, color_dataset, progress=False, cache=FeatureCache(tmp_path))
        loader = DataLoader(ImageDataset(color_dataset.test, color_dataset.image_root,
                                         eval_transform(tiny_backbone.image_size, tiny_backbone.mean, tiny_backbone.std)),
                            batch_size=64)
        with torch.no_grad():
            by_hand = torch.cat([method.eval_logits(images) for images, _, _ in loader])  # images in, encoded inside
        assert torch.allclose(torch.from_numpy(result.logits), by_hand, atol=1e-5)
    finally:
        tiny_backbone.clear_extensions()


def test_training_on_one_cached_view_equals_training_on_images(tiny_backbone, color_dataset, tmp_path):
    """With a deterministic transform and one view, cached features are the images' features, and the
    shuffling is the same: the learned context must match the image path's."""
    learned = {}
    for cached in (False, True):
        tiny_backbone.clear_extensions()
        torch.manual_seed(0)
        method = _coop(tiny_backbone, color_dataset)
        cfg = TrainConfig.from_dict({**DETERMINISTIC, "cached_features": cached, "feature_views": 1})
        assert method.trains_on_cached_features(cfg) is cached
        fit(method, color_dataset, cfg, seed=3, progress=False, cache=FeatureCache(tmp_path))
        learned[cached] = method.context.ctx.detach().clone()
    tiny_backbone.clear_extensions()
    assert not torch.allclose(learned[True], _coop(tiny_backbone, color_dataset).context.ctx)  # it did train
    tiny_backbone.clear_extensions()
    assert torch.allclose(learned[False], learned[True], atol=1e-5)


def test_runs_of_one_seed_share_the_cached_views(tiny_backbone, color_dataset, tmp_path):
    cache = FeatureCache(tmp_path)
    cfg = TrainConfig.from_dict({**DETERMINISTIC, "epochs": 2, "cached_features": True, "feature_views": 2,
                                 "crop_scale": (0.5, 1.0), "flip": True})
    for name in ("coop", "kgcoop"):
        tiny_backbone.clear_extensions()
        fit(build_method(name, tiny_backbone, ClassTask.from_splits(color_dataset)), color_dataset, cfg, seed=1,
            progress=False, cache=cache)
    tiny_backbone.clear_extensions()
    assert (cache.misses, cache.hits) == (1, 1)


def test_cached_features_come_from_the_frozen_tower(tiny_backbone, color_dataset):
    """Whatever is attached to the backbone, encode_images stores the plain tower's features."""
    transform = eval_transform(tiny_backbone.image_size, tiny_backbone.mean, tiny_backbone.std)
    tiny_backbone.clear_extensions()
    plain = encode_images(tiny_backbone, color_dataset.test, color_dataset.image_root, transform, progress=False)
    try:
        for lora in tiny_backbone.visual.add_lora(r=2):
            torch.nn.init.normal_(lora.lora_B, std=0.5)
        images = next(iter(DataLoader(ImageDataset(color_dataset.test, color_dataset.image_root, transform),
                                      batch_size=len(color_dataset.test))))[0]
        with torch.no_grad():
            assert not torch.allclose(tiny_backbone.encode_image(images), plain.features[0], atol=1e-3)
        again = encode_images(tiny_backbone, color_dataset.test, color_dataset.image_root, transform, progress=False)
        assert torch.allclose(again.features, plain.features, atol=1e-6)
    finally:
        tiny_backbone.clear_extensions()


def test_a_vision_extension_turns_cached_features_off_and_is_evaluated(tiny_backbone, color_dataset, tmp_path):
    """A method that declares a frozen tower (CoOp) but attaches a vision adapter must be scored through
    the adapted tower: cached features of the pretrained tower would silently drop the adapter."""

    class Shift(torch.nn.Module):
        def forward(self, h):
            return h + 0.5

    tiny_backbone.clear_extensions()
    method = _coop(tiny_backbone, color_dataset)
    try:
        plain = evaluate(method, color_dataset, progress=False, cache=FeatureCache(tmp_path))
        tiny_backbone.visual.add_adapter(0, "pre_attn", Shift())
        assert not tiny_backbone.image_tower_is_pretrained() and not method.evaluates_on_cached_features()
        assert not method.trains_on_cached_features(TrainConfig(cached_features=True))
        adapted = evaluate(method, color_dataset, progress=False, cache=FeatureCache(tmp_path))
        loader = DataLoader(ImageDataset(color_dataset.test, color_dataset.image_root,
                                         eval_transform(tiny_backbone.image_size, tiny_backbone.mean, tiny_backbone.std)),
                            batch_size=64)
        with torch.no_grad():
            by_hand = torch.cat([method.eval_logits(images) for images, _, _ in loader])  # through the adapter
        assert torch.allclose(torch.from_numpy(adapted.logits), by_hand, atol=1e-5)
        assert not torch.allclose(torch.from_numpy(adapted.logits), torch.from_numpy(plain.logits), atol=1e-3)
    finally:
        tiny_backbone.clear_extensions()


def _corrupt_train(ds, n=1):
    for s in ds.train[:n]:
        (ds.image_root / s.path).write_bytes(b"truncated jpeg")
    return [s.path for s in ds.train[:n]]


def test_skipped_training_images_are_counted_on_every_path(tiny_backbone, color_dataset, tmp_path, monkeypatch):
    import warnings

    _corrupt_train(color_dataset)  # 1 of 15
    monkeypatch.setenv("WORKBENCH_MAX_SKIPPED_FRACTION", "0.1")
    counts = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cached in (False, True):
            tiny_backbone.clear_extensions()
            cfg = TrainConfig.from_dict({**DETERMINISTIC, "epochs": 1, "cached_features": cached, "feature_views": 1})
            counts[cached] = fit(_coop(tiny_backbone, color_dataset), color_dataset, cfg, progress=False,
                                 cache=FeatureCache(tmp_path)).skipped_images
        tiny_backbone.clear_extensions()
        probe = build_method("linear_probe", tiny_backbone, ClassTask.from_splits(color_dataset))
        counts["closed form"] = fit(probe, color_dataset, TrainConfig(feature_views=1), progress=False,
                                    cache=FeatureCache(tmp_path)).skipped_images
    tiny_backbone.clear_extensions()
    assert counts == {False: 1, True: 1, "closed form": 1}


def test_too_many_unreadable_training_images_fail_with_what_to_do(tiny_backbone, color_dataset, tmp_path, monkeypatch):
    import warnings

    import pytest

    from workbench.data.images import TooManyUnreadableImagesError

    bad = _corrupt_train(color_dataset)  # 1 of 15 = 6.7%, over the default 5%
    for cached in (False, True):
        tiny_backbone.clear_extensions()
        cfg = TrainConfig.from_dict({**DETERMINISTIC, "epochs": 1, "cached_features": cached, "feature_views": 1})
        with warnings.catch_warnings(), pytest.raises(TooManyUnreadableImagesError) as err:
            warnings.simplefilter("ignore")
            fit(_coop(tiny_backbone, color_dataset), color_dataset, cfg, progress=False, cache=FeatureCache(tmp_path))
        assert (f"1 of 15 training images of colors could not be read (e.g. {color_dataset.image_root / bad[0]}): "
                "run `workbench data check --dataset colors`") in str(err.value)
    tiny_backbone.clear_extensions()


def test_a_missing_class_folder_fails_the_run_or_is_counted_in_its_metrics(tmp_path, monkeypatch):
    import shutil
    import warnings

    import pytest

    from workbench.protocols import build_spec
    from workbench.runs import Registry
    from workbench.runs.execute import execute

    try:
        from data_fixtures import make_eurosat
    except ImportError:
        from tests.data_fixtures import make_eurosat

    shutil.rmtree(make_eurosat(tmp_path, corrupt=False) / "2750" / "Forest")  # a base class: 4 of 12 shots gone
    spec = build_spec("coop", "base_to_novel", "eurosat", shots=4, seed=1, backbone="wb-tiny-vit", preset="toy",
                      data_root=str(tmp_path), settings={"train.epochs": 1, "train.batch_size": 4,
                                                         "train.cached_features": True, "train.feature_views": 1})
    reg = Registry(tmp_path / "runs")
    with warnings.catch_warnings(), pytest.raises(Exception, match=r"4 of 12 training images of eurosat could not be "
                                                                   r"read .*workbench data check --dataset eurosat"):
        warnings.simplefilter("ignore")
        execute(spec, reg, data_root=str(tmp_path), progress=False)
    assert reg.find(spec).status == "failed"
    monkeypatch.setenv("WORKBENCH_MAX_SKIPPED_FRACTION", "0.5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = execute(spec, reg, data_root=str(tmp_path), progress=False)
    assert run.status == "done"
    assert run.metrics["skipped_train_images"] == 4 and run.metrics["base_skipped_images"] == 2
