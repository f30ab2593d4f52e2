"""Staged training (LP-FT): each stage trains only its parameters at its own learning rate, through the
one training loop; an interrupted staged run resumes in the right stage and epoch, bit for bit."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.engine.staged import Stage, fit_staged, lp_ft
from workbench.engine.train import TrainConfig, fit
from workbench.methods.base import ClassTask, LossOutput, Method
from workbench.runs.registry import Registry
from workbench.runs.spec import RunSpec


class ToyLPFT(Method):
    """On frozen features: an adapter (identity at init) then a linear head."""

    name = "toy_lpft"
    inputs = "features"

    def __init__(self, backbone, task):
        super().__init__(backbone, task, None)
        torch.manual_seed(0)
        d = backbone.embed_dim
        self.adapter = nn.Linear(d, d)
        with torch.no_grad():
            self.adapter.weight.copy_(torch.eye(d))
            self.adapter.bias.zero_()
        self.head = nn.Linear(d, len(task.classnames))

    def stage_parameters(self, key):
        return {"head": list(self.head.parameters()), "adapter": list(self.adapter.parameters()),
                "all": list(self.head.parameters()) + list(self.adapter.parameters())}[key]

    def training_loss(self, inputs, labels):
        logits = self.head(self.adapter(inputs))
        return LossOutput(F.cross_entropy(logits, labels), logits=logits.detach())

    def eval_logits(self, inputs):
        return self.head(self.adapter(inputs))


def sgd(lr, epochs=1, **kw):
    return TrainConfig(**{"optimizer": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0, "epochs": epochs,
                          "batch_size": 64, "warmup_epochs": 0, "schedule": "constant", "feature_views": 2, **kw})


def state(method):
    return {k: v.detach().clone() for k, v in method.named_parameters() if not k.startswith("backbone.")}


def new_method(backbone, ds):
    return ToyLPFT(backbone, ClassTask.from_splits(ds))


def test_each_stage_updates_only_its_parameters_at_its_learning_rate(tiny_backbone, color_dataset):
    m0 = new_method(tiny_backbone, color_dataset)
    init = state(m0)
    only_head = fit_staged(m0, color_dataset, [Stage("head", sgd(0.5, epochs=2))], progress=False)
    after_head = state(m0)
    assert torch.equal(after_head["adapter.weight"], init["adapter.weight"])
    assert not torch.equal(after_head["head.weight"], init["head.weight"])

    ends = {}
    for lr in (0.01, 0.02):
        m = new_method(tiny_backbone, color_dataset)
        res = fit_staged(m, color_dataset, [Stage("head", sgd(0.5, epochs=2)), Stage("adapter", sgd(lr))],
                         progress=False)
        ends[lr] = state(m)
        assert torch.equal(ends[lr]["head.weight"], after_head["head.weight"])  # stage 2 leaves the head
        assert [(r["stage"], r["epoch"], r["stage_epoch"], r["lr"]) for r in res.history] == [
            ("head", 0, 0, 0.5), ("head", 1, 1, 0.5), ("adapter", 2, 0, lr)]
        assert res.stages[0].history == only_head.stages[0].history
    # one plain SGD step over one batch: the adapter moved by lr · gradient, so twice as far at twice the lr
    d1 = ends[0.01]["adapter.weight"] - init["adapter.weight"]
    d2 = ends[0.02]["adapter.weight"] - init["adapter.weight"]
    assert d1.abs().max() > 0 and torch.allclose(d2, 2 * d1, rtol=1e-3, atol=5e-7)  # float32 near 1
    assert m.adapter.weight.requires_grad and m.head.weight.requires_grad  # every trained set left trainable


def test_one_stage_equals_plain_fit(tiny_backbone, color_dataset):
    cfg = sgd(0.3, epochs=2, momentum=0.9)
    staged = new_method(tiny_backbone, color_dataset)
    res = fit_staged(staged, color_dataset, [Stage("head", cfg)], seed=3, progress=False)
    plain = new_method(tiny_backbone, color_dataset)
    plain.adapter.requires_grad_(False)
    ref = fit(plain, color_dataset, cfg, seed=3, progress=False)
    assert all(torch.equal(state(staged)[k], v) for k, v in state(plain).items())
    assert [r["loss"] for r in res.history] == [r["loss"] for r in ref.history]


def test_stage_parameters_must_belong_to_the_method(tiny_backbone, color_dataset):
    method = new_method(tiny_backbone, color_dataset)
    with pytest.raises(ValueError, match="not parameters of the method"):
        fit_staged(method, color_dataset, [Stage(lambda m: [nn.Parameter(torch.zeros(2))], sgd(0.1))],
                   progress=False)


class Killed(Exception):
    pass


class KilledRun:
    """Dies after the n-th checkpoint is written, or (mid_epoch) after the n-th epoch is logged but
    before its checkpoint."""

    def __init__(self, run, n, mid_epoch=False):
        self.run, self.n, self.mid_epoch = run, n, mid_epoch

    def _tick(self):
        self.n -= 1
        if self.n == 0:
            raise Killed

    def log_epoch(self, epoch, values):
        self.run.log_epoch(epoch, values)
        if self.mid_epoch:
            self._tick()

    def save_checkpoint(self, state, epoch, **kw):
        out = self.run.save_checkpoint(state, epoch, **kw)
        if not self.mid_epoch:
            self._tick()
        return out

    def __getattr__(self, item):
        return getattr(self.run, item)


def lpft_stages(full="all"):
    """LP-FT; with full="adapter" stage 2 leaves the head alone, so resuming in it must restore stage 1's head."""
    return lp_ft(sgd(0.5, epochs=2, momentum=0.9),
                 TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.01, epochs=3, batch_size=8, warmup_epochs=1,
                             warmup_lr=1e-4, schedule="cosine", feature_views=2), full=full)


def new_run(root):
    return Registry(root).create_or_get(RunSpec(method="toy_lpft", protocol="unit", datasets=("colors",), seed=1))


def history_file(run):
    return [json.loads(line) for line in (run.dir / "history.jsonl").read_text().splitlines()]


@pytest.fixture(params=["all", "adapter"])
def full(request):
    return request.param


@pytest.fixture
def uninterrupted(tiny_backbone, color_dataset, tmp_path, full):
    run = new_run(tmp_path / "whole")
    method = new_method(tiny_backbone, color_dataset)
    res = fit_staged(method, color_dataset, lpft_stages(full), run=run, progress=False)
    return state(method), res, history_file(run)


@pytest.mark.parametrize("n, mid_epoch, resumed_from", [
    (1, False, (0, 0)),  # in stage 1
    (2, False, (0, 1)),  # at the stage boundary: stage 1 done, stage 2 not started
    (4, False, (1, 1)),  # in stage 2
    (4, True, (1, 0)),   # killed in stage 2 after logging its epoch 1, before its checkpoint
])
def test_interrupted_staged_run_resumes_bit_for_bit(tiny_backbone, color_dataset, tmp_path, uninterrupted, full,
                                                    n, mid_epoch, resumed_from):
    whole_state, whole, whole_history = uninterrupted
    run = new_run(tmp_path / "killed")
    with pytest.raises(Killed):
        fit_staged(new_method(tiny_backbone, color_dataset), color_dataset, lpft_stages(full),
                   run=KilledRun(run, n, mid_epoch), progress=False)
    method = new_method(tiny_backbone, color_dataset)
    res = fit_staged(method, color_dataset, lpft_stages(full), run=run, progress=False)
    assert res.resumed_from == resumed_from
    got = state(method)
    assert all(torch.equal(got[k], v) for k, v in whole_state.items())
    assert res.history == whole.history
    logged = history_file(run)
    assert logged == whole_history
    assert [(r["epoch"], r["stage"], r["stage_epoch"]) for r in logged] == [
        (0, "lp", 0), (1, "lp", 1), (2, "ft", 0), (3, "ft", 1), (4, "ft", 2)]
    assert run.latest_checkpoint()[0] == 4


@pytest.mark.parametrize("full", ["all"])
def test_finished_run_after_test_time_checkpoints_trains_nothing(tiny_backbone, color_dataset, tmp_path,
                                                                 uninterrupted):
    from workbench.engine.test_time import TestTimeConfig, adapt_and_predict

    class Tunable(ToyLPFT):
        def test_time_parameters(self):
            return [self.adapter.bias]

        def test_time_logits(self, feats):
            return self.head(self.adapter(feats))

    run = new_run(tmp_path / "tta")
    fit_staged(Tunable(tiny_backbone, ClassTask.from_splits(color_dataset)), color_dataset, lpft_stages(), run=run,
               progress=False)
    adapt_and_predict(Tunable(tiny_backbone, ClassTask.from_splits(color_dataset)), color_dataset,
                      TestTimeConfig(views=4, checkpoint_every=1), limit=2, run=run, progress=False)
    method = Tunable(tiny_backbone, ClassTask.from_splits(color_dataset))
    res = fit_staged(method, color_dataset, lpft_stages(), run=run, progress=False)
    assert res.resumed_from == (1, 2) and res.steps == uninterrupted[1].steps
    assert all(torch.equal(state(method)[k], v) for k, v in uninterrupted[0].items())


class ImageLPFT(Method):
    """LP-FT on images: a linear head on the image tower; stage "all" fine-tunes the tower too."""

    name = "image_lpft"

    def __init__(self, backbone, task):
        super().__init__(backbone, task, None)
        torch.manual_seed(0)
        self.head = nn.Linear(backbone.embed_dim, len(task.classnames))

    def stage_parameters(self, key):
        tower = [p for n, p in self.backbone.named_parameters() if n.startswith("visual.") or ".visual." in n]
        return list(self.head.parameters()) + (tower if key == "all" else [])

    def training_loss(self, images, labels):
        logits = self.head(self.backbone.encode_image(images))
        return LossOutput(F.cross_entropy(logits, labels), logits=logits.detach())


def test_lp_ft_on_images_probes_then_fine_tunes_the_tower(tiny_backbone, color_dataset):
    import copy

    backbone = copy.deepcopy(tiny_backbone)  # the session's backbone stays untouched
    method = ImageLPFT(backbone, ClassTask.from_splits(color_dataset))
    tower = {n: p.detach().clone() for n, p in backbone.named_parameters() if id(p) in
             {id(q) for q in method.stage_parameters("all")[2:]}}
    assert tower
    head0 = method.head.weight.detach().clone()
    probe = fit_staged(method, color_dataset, [Stage("head", sgd(0.1))], progress=False)
    assert all(torch.equal(p, tower[n]) for n, p in backbone.named_parameters() if n in tower)
    assert not torch.equal(method.head.weight, head0) and probe.steps == 1
    method = ImageLPFT(copy.deepcopy(tiny_backbone), ClassTask.from_splits(color_dataset))
    res = fit_staged(method, color_dataset, lp_ft(sgd(0.1), sgd(1e-3, batch_size=8), head="head"), progress=False)
    moved = [n for n, p in method.backbone.named_parameters() if n in tower and not torch.equal(p, tower[n])]
    assert moved and [r["lr"] for r in res.history] == [0.1, 1e-3] and res.steps == 1 + 2
