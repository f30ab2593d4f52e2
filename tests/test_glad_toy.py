"""GLAD learns on the toy world: its `toy` preset (GradReg + AlignNet) beats zero-shot CLIP on the base
classes and stays within a few points of it on the new ones (the briefly pretrained toy CLIP)."""
from __future__ import annotations

import pytest

from workbench.data import base_new_split, load_few_shot
from workbench.engine.evaluate import evaluate
from workbench.engine.train import fit
from workbench.methods import ClassTask, build_method
from workbench.protocols import build_spec, train_config_for


@pytest.mark.slow
def test_toy_glad_beats_zero_shot_on_base_and_keeps_new(toy_backbone, toy_data_root):
    base, new = base_new_split(load_few_shot("toy_objects", 16, 1))
    zero = build_method("zeroshot", toy_backbone, ClassTask.from_splits(base))
    zero_base = evaluate(zero, base, progress=False).top1
    zero_new = evaluate(zero, new, domain="new", progress=False).top1
    glad = build_method("glad", toy_backbone, ClassTask.from_splits(base), preset="toy")
    cfg = train_config_for(build_spec("glad", "base_to_novel", "toy_objects", preset="toy"))
    history = fit(glad, base, cfg, seed=1, progress=False).history
    glad_base = evaluate(glad, base, progress=False).top1
    glad_new = evaluate(glad, new, domain="new", progress=False).top1
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(0.0 <= h["grad_conflict"] <= 1.0 for h in history)
    assert glad_base > zero_base + 5.0, (glad_base, zero_base)
    assert glad_new > zero_new - 5.0, (glad_new, zero_new)
