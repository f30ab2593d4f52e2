"""Test-time adaptation: TPT-style views, selection and loss; exact reset per sample; resume."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from workbench.data.images import open_rgb
from workbench.data.transforms import test_transform as eval_transform
from workbench.engine.test_time import (AugmentedViews, TestTimeConfig, adapt_and_predict, adapt_one,
                                        average_entropy, select_confident)
from workbench.methods.base import ClassTask, Method
from workbench.methods.common import clip_logits
from workbench.runs.registry import Registry
from workbench.runs.spec import RunSpec


class ToyTPT(Method):
    """Frozen tower; a learnable shift of the image feature is tuned at test time."""

    name = "toy_tpt"
    frozen_image_tower = True

    def __init__(self, backbone, task):
        super().__init__(backbone, task, None)
        g = torch.Generator().manual_seed(7)
        self.shift = nn.Parameter(0.1 * torch.randn(backbone.embed_dim, generator=g))
        self.register_buffer("classes", torch.randn(len(task.classnames), backbone.embed_dim, generator=g))
        self.calls: list[int] = []

    def test_time_parameters(self):
        return [self.shift]

    def test_time_logits(self, feats):
        self.calls.append(feats.shape[0])
        return clip_logits(self.backbone, feats + self.shift, self.classes)

    def eval_logits(self, inputs):
        return self.test_time_logits(self.image_tower_features(inputs))


class ContentSeededViews(AugmentedViews):
    """Views whose randomness comes from the image content, not from the sample's position."""

    def __call__(self, image, n, seed):
        digest = hashlib.sha256(np.asarray(image).tobytes()).digest()
        return super().__call__(image, n, int.from_bytes(digest[:4], "little"))


def method_for(backbone, ds):
    return ToyTPT(backbone, ClassTask.from_splits(ds))


def small_cfg(**kw):
    return TestTimeConfig(**{"views": 8, "steps": 2, "lr": 0.05, "selection": 0.5, "checkpoint_every": 2,
                             "crop_scale": (0.5, 1.0), **kw})


def test_defaults_are_tpts():
    cfg = TestTimeConfig()
    assert (cfg.views, cfg.steps, cfg.lr, cfg.optimizer, cfg.selection) == (64, 1, 5e-3, "adamw", 0.1)
    assert cfg.include_original and cfg.weight_decay == 0.01  # torch AdamW's default, left by TPT
    assert TestTimeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(KeyError):
        TestTimeConfig.from_dict({"view": 3})


def test_selection_and_average_entropy_against_direct_formulas():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(10, 6, generator=g)
    p = logits.softmax(-1)
    ent = [-(row * row.log()).sum().item() for row in p]
    assert select_confident(logits, 0.3).tolist() == sorted(range(10), key=lambda i: ent[i])[:3]
    assert select_confident(logits, 0.01).tolist() == [int(np.argmin(ent))]  # at least one view
    mean = p.mean(0)
    assert torch.allclose(average_entropy(logits), -(mean * mean.log()).sum(), atol=1e-6)


@pytest.mark.parametrize("kind", ["crops", "augmix"])
def test_views_are_seeded_batched_and_keep_the_original(color_dataset, kind):
    img = open_rgb(color_dataset.image_root / color_dataset.test[0].path)
    views = AugmentedViews(32, (0.5,) * 3, (0.25,) * 3, kind=kind, scale=(0.3, 1.0))
    state = torch.get_rng_state()
    a, b, c = views(img, 6, seed=3), views(img, 6, seed=3), views(img, 6, seed=4)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a[1:], c[1:])
    assert torch.equal(a[0], eval_transform(32, (0.5,) * 3, (0.25,) * 3)(img))
    assert not torch.equal(a[1], a[2])


def test_one_step_lowers_the_average_entropy_of_the_selected_views(tiny_backbone, color_dataset):
    method = method_for(tiny_backbone, color_dataset)
    method.prepare_eval(ClassTask.from_splits(color_dataset), "base")
    feats = torch.randn(16, tiny_backbone.embed_dim, generator=torch.Generator().manual_seed(1))
    cfg = small_cfg(steps=1, optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=0.5, selection=0.25)
    with torch.no_grad():
        before = method.test_time_logits(feats)
    idx = select_confident(before, 0.25)
    opt = torch.optim.SGD([method.shift], lr=0.5)
    adapt_one(method, feats, feats[:1], opt, cfg, average_entropy, torch.device("cpu"))
    with torch.no_grad():
        after = method.test_time_logits(feats)
    assert average_entropy(after[idx]) < average_entropy(before[idx])


def test_state_is_reset_exactly_so_each_prediction_ignores_earlier_samples(tiny_backbone, color_dataset):
    torch.manual_seed(0)
    method = method_for(tiny_backbone, color_dataset)
    initial = method.shift.detach().clone()
    views = ContentSeededViews.for_method(method, small_cfg())
    forward = adapt_and_predict(method, color_dataset, small_cfg(), view_builder=views, progress=False)
    assert torch.equal(method.shift, initial) and method.shift.requires_grad
    assert method.calls[:3] == [8, 8, 1]  # per step one batch of all views, then the original
    rev = dataclasses.replace(color_dataset, test=list(reversed(color_dataset.test)))
    backward = adapt_and_predict(method, rev, small_cfg(), view_builder=views, progress=False)
    assert np.array_equal(forward.logits, backward.logits[::-1])
    plain = adapt_and_predict(method, color_dataset, small_cfg(steps=0), view_builder=views, progress=False)
    assert not np.allclose(plain.logits, forward.logits)  # the steps did adapt
    assert np.array_equal(forward.labels, [s.label for s in color_dataset.test])
    assert np.array_equal(forward.predictions, forward.logits.argmax(-1))


def test_resetting_parameters_without_the_optimizer_state_is_detected(tiny_backbone, color_dataset, monkeypatch):
    from workbench.engine import test_time

    method = method_for(tiny_backbone, color_dataset)
    views = ContentSeededViews.for_method(method, small_cfg())
    rev = dataclasses.replace(color_dataset, test=list(reversed(color_dataset.test)))

    def params_only(self):
        with torch.no_grad():
            for p, v in zip(self.params, self.values):
                p.copy_(v)

    monkeypatch.setattr(test_time.TestTimeState, "restore", params_only)
    forward = adapt_and_predict(method, color_dataset, small_cfg(), view_builder=views, progress=False)
    backward = adapt_and_predict(method, rev, small_cfg(), view_builder=views, progress=False)
    assert not np.array_equal(forward.logits, backward.logits[::-1])  # AdamW moments leaked across samples


class Killed(Exception):
    pass


class KilledAfterSaves:
    def __init__(self, run, saves):
        self.run, self.saves = run, saves

    def save_checkpoint(self, state, epoch, **kw):
        out = self.run.save_checkpoint(state, epoch, **kw)
        self.saves -= 1
        if self.saves == 0:
            raise Killed
        return out

    def __getattr__(self, item):
        return getattr(self.run, item)


def new_run(root, seed=0):
    return Registry(root).create_or_get(RunSpec(method="toy_tpt", protocol="unit", datasets=("colors",), seed=seed))


def test_interrupted_run_resumes_with_identical_predictions(tiny_backbone, color_dataset, tmp_path):
    cfg = small_cfg(views=6)
    whole = adapt_and_predict(method_for(tiny_backbone, color_dataset), color_dataset, cfg, limit=5,
                              run=new_run(tmp_path / "a"), progress=False)
    run = new_run(tmp_path / "b")
    with pytest.raises(Killed):
        adapt_and_predict(method_for(tiny_backbone, color_dataset), color_dataset, cfg, limit=5,
                          run=KilledAfterSaves(run, 1), progress=False)
    method = method_for(tiny_backbone, color_dataset)
    resumed = adapt_and_predict(method, color_dataset, cfg, limit=5, run=run, progress=False)
    assert method.calls == [6, 6, 1] * 3  # only samples 2, 3, 4 were adapted again
    assert np.array_equal(resumed.logits, whole.logits) and np.array_equal(resumed.labels, whole.labels)
    assert "resumed at sample 2/5" in run.read_log()
    with pytest.raises(ValueError, match="other settings"):
        adapt_and_predict(method, color_dataset, small_cfg(views=7), limit=5, run=run, progress=False)


def test_test_time_checkpoints_carry_the_training_checkpoint(tiny_backbone, color_dataset, tmp_path):
    from workbench.engine.train import training_checkpoint

    run = new_run(tmp_path)
    run.save_checkpoint({"phase": "staged", "marker": 1}, 9)
    adapt_and_predict(method_for(tiny_backbone, color_dataset), color_dataset, small_cfg(views=4, steps=1),
                      limit=3, run=run, progress=False)
    assert run.latest_checkpoint()[0] == 10 + 3  # numbered after the training epochs
    epoch, state = training_checkpoint(run)
    assert epoch == 9 and state == {"phase": "staged", "marker": 1}


def test_coop_context_is_tuned_and_restored(tiny_backbone, color_dataset):
    from workbench.methods.coop import CoOp, CoOpConfig

    class TPTCoOp(CoOp):
        def test_time_parameters(self):
            return [self.context.ctx]

        def test_time_logits(self, feats):
            tokens = self.context.tokenized(self.eval_task.classnames).to(feats.device)
            return clip_logits(self.backbone, feats, self.class_features(tokens))

    tiny_backbone.clear_extensions()
    try:
        method = TPTCoOp(tiny_backbone, ClassTask.from_splits(color_dataset), CoOpConfig(n_ctx=4))
        ctx = method.context.ctx.detach().clone()
        cfg = small_cfg(views=4, steps=1, lr=0.5)
        tuned = adapt_and_predict(method, color_dataset, cfg, limit=3, progress=False)
        plain = adapt_and_predict(method, color_dataset, small_cfg(views=4, steps=0), limit=3, progress=False)
        assert torch.equal(method.context.ctx, ctx)
        assert tuned.logits.shape == (3, 5) and not np.allclose(tuned.logits, plain.logits)
    finally:
        tiny_backbone.clear_extensions()


def test_several_evaluations_in_one_run_resume_each_from_its_own_state(tiny_backbone, color_dataset, tmp_path):
    cfg = small_cfg(views=4, steps=1)

    def both(run, method_factory):
        out = []
        for split, domain in (("test", "base"), ("val", "new")):
            method = method_factory()
            out.append((adapt_and_predict(method, color_dataset, cfg, split, domain, limit=3, run=run,
                                          progress=False), method.calls))
        return out

    whole = both(new_run(tmp_path / "a"), lambda: method_for(tiny_backbone, color_dataset))
    assert not np.array_equal(whole[0][0].logits, whole[1][0].logits)
    run = new_run(tmp_path / "b")
    with pytest.raises(Killed):
        both(KilledAfterSaves(run, 3), lambda: method_for(tiny_backbone, color_dataset))  # 2 test saves, 1 val
    (test, test_calls), (val, val_calls) = both(run, lambda: method_for(tiny_backbone, color_dataset))
    assert test_calls == [] and val_calls == [4, 1]  # test came from the checkpoint; val resumed at sample 2
    for got, (ref, _) in zip((test, val), whole):
        assert np.array_equal(got.logits, ref.logits) and got.extra["domain"] == ref.extra["domain"]


class TrainedToyTPT(ToyTPT):
    """ToyTPT that also trains its shift with cross-entropy (train, then adapt at test time)."""

    def training_loss(self, feats, labels):
        from workbench.methods.base import LossOutput

        logits = self.test_time_logits(self.image_tower_features(feats))
        return LossOutput(nn.functional.cross_entropy(logits, labels), logits=logits.detach())


def test_plain_fit_finds_its_checkpoint_under_test_time_ones(tiny_backbone, color_dataset, tmp_path):
    """Train, adapt at test time (which checkpoints after the training epochs), then ask for the training
    again: fit resumes from its own last epoch and trains nothing more."""
    from workbench.engine.train import TrainConfig, fit

    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.05, warmup_epochs=0, crop_scale=(1.0, 1.0), flip=False)
    run = new_run(tmp_path)
    method = TrainedToyTPT(tiny_backbone, ClassTask.from_splits(color_dataset))
    fit(method, color_dataset, cfg, seed=1, run=run, progress=False)
    trained = method.shift.detach().clone()
    adapt_and_predict(method, color_dataset, small_cfg(views=4, steps=1), limit=3, run=run, progress=False)
    again = fit(method, color_dataset, cfg, seed=1, run=run, progress=False)
    assert again.resumed_from_epoch == 1 and len(again.history) == 2
    assert torch.equal(method.shift.detach(), trained)
