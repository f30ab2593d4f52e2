"""Test-time training (RAda Table 3, after TPT): every test sample adapts the method's test-time
parameters on its own views, is predicted, and the parameters are reset (offline TTT), through
`engine.test_time.adapt_and_predict`. Any method with test-time hooks runs under it (rada, tpt, coop_tpt).

Paper (papers/rada.txt, Sec. 4.3) [paper]: 63 augmented views + the original form a batch of 64; the
10% lowest-entropy predictions are kept and the entropy of their averaged prediction minimized; three
steps at lr 0.0008 for every dataset; weights reset to their original state before each sample.
The optimizer is TPT's AdamW (its default weight decay 0.01 left in place) [code: azshue/TPT].

Datasets: every dataset named is a test set, adapted on sample by sample (its test split); the first
one names the classes the method is built on (the others are scored as its shifted domains, so they
share its label space: ImageNet and its OOD variants). With `pretrain` the method first trains on the
first dataset's `shots`-shot split (CoOp+TPT, RAda†: "uses ImageNet-pretrained information").
Metrics: top-1 per dataset after adaptation, the average over the targets after the first (or over
the one dataset), `<dataset>_unadapted` (the same method without adaptation) and
`<dataset>_changed_percent` (predictions adaptation changed), and `seconds_per_sample`.
`limit` takes that many test samples per dataset, spread evenly (CPU budgets); the metrics name it.
A method with no test-time parameters (zero-shot CLIP) is scored as it is: Table 3's baseline row.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from ..engine.evaluate import evaluate
from ..engine.test_time import TestTimeConfig, adapt_and_predict
from .base import RunContext, build_for, load_splits, register_protocol, train

VIEW_KINDS = ("crops", "augmix")


@dataclass
class TestTimeSettings:
    views: int = field(default=64, metadata={"help": "views per test sample, the original included (paper: 64)"})
    keep: float = field(default=0.1, metadata={"help": "fraction of lowest-entropy views kept (paper: 10%)"})
    steps: int = field(default=3, metadata={"help": "gradient steps per sample (paper: 3; TPT: 1)"})
    lr: float = field(default=0.0008, metadata={"help": "AdamW learning rate (paper: 0.0008; TPT: 5e-3)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (TPT leaves torch's 0.01)"})
    reset: bool = field(default=True, metadata={
        "help": "reset the weights before every sample (offline TTT, the paper's); only True is supported"})
    view_kind: str = field(default="crops", metadata={
        "help": "crops (TPT on ImageNet and its variants) | augmix (TPT on the fine-grained datasets)"})
    crop_scale: tuple[float, float] = field(default=(0.08, 1.0), metadata={
        "help": "RandomResizedCrop scale of the augmented views (TPT: torchvision's default)"})
    pretrain: bool = field(default=False, metadata={
        "help": "train the method on the first dataset's few-shot split first (CoOp+TPT, RAda†)"})
    compare_unadapted: bool = field(default=True, metadata={
        "help": "also score each dataset without adaptation (the *_unadapted and *_changed_percent metrics)"})
    limit: int | None = field(default=None, metadata={"help": "test samples per dataset, spread evenly over its classes (None: all)"})

    __test__ = False

    def __post_init__(self):
        problems = []
        if self.views < 2:
            problems.append(f"test_time.views must be >= 2, got {self.views}")
        if not 0 < self.keep <= 1:
            problems.append(f"test_time.keep must be in (0, 1], got {self.keep}")
        if self.steps < 0:
            problems.append(f"test_time.steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            problems.append(f"test_time.lr must be positive, got {self.lr}")
        if self.reset is not True:
            problems.append("test_time.reset must be true: online TTT (weights carried across samples) is not "
                            "implemented; the paper uses offline TTT")
        if self.view_kind not in VIEW_KINDS:
            problems.append(f"test_time.view_kind must be one of {', '.join(VIEW_KINDS)}, got {self.view_kind!r}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            problems.append(f"test_time.crop_scale must be 0 < low <= high <= 1, got {self.crop_scale!r}")
        if self.limit is not None and self.limit < 1:
            problems.append(f"test_time.limit must be >= 1 or null, got {self.limit}")
        if problems:
            raise ValueError("; ".join(problems))

    def engine_config(self, precision: str = "amp") -> TestTimeConfig:
        return TestTimeConfig(views=self.views, include_original=True, view_kind=self.view_kind,
                              crop_scale=tuple(self.crop_scale), selection=self.keep, steps=self.steps,
                              optimizer="adamw", lr=self.lr, weight_decay=self.weight_decay, precision=precision)


@register_protocol("test_time", max_datasets=None, metrics=("average", "seconds_per_sample"),
                   per_dataset_metrics=True, domains=("base", "shift"), settings=TestTimeSettings)
def test_time(ctx: RunContext) -> dict:
    """Offline test-time training: per test sample, tune on its views, predict it, reset."""
    settings = TestTimeSettings(**ctx.spec.protocol_settings)
    names = list(ctx.spec.datasets)
    first = load_splits(names[0], ctx, ctx.spec.shots if settings.pretrain else None, ctx.spec.seed)
    ctx.method = build_for(ctx, first)
    if settings.pretrain:
        train(ctx, ctx.method, first)
        first = load_splits(names[0], ctx, None, ctx.spec.seed)
    precision = ctx.spec.train_config.get("precision", "amp")
    cfg = settings.engine_config(precision)
    metrics, seconds, samples = {}, 0.0, 0
    adapts = bool(list(ctx.method.test_time_parameters())) if hasattr(ctx.method, "test_time_parameters") else False
    for i, name in enumerate(names):
        ds = spread_subset(first if i == 0 else load_splits(name, ctx, None, ctx.spec.seed), settings.limit)
        domain = "base" if i == 0 else "shift"
        if settings.compare_unadapted or not adapts:
            unadapted = evaluate(ctx.method, ds, "test", domain, device=ctx.device, progress=ctx.progress)
        if not adapts:  # nothing to tune (zero-shot CLIP): the baseline row, scored as it is
            result = unadapted
        else:
            start = time.perf_counter()
            result = adapt_and_predict(ctx.method, ds, cfg, "test", domain, seed=ctx.spec.seed, device=ctx.device,
                                       run=ctx.run, progress=ctx.progress)
            seconds += time.perf_counter() - start
            samples += len(result.labels)
        ctx.run.save_predictions(name, result.labels, result.predictions, result.logits.astype(np.float16))
        metrics[name] = result.top1
        ctx.metrics[f"{name}_skipped_images"] = result.skipped
        if settings.compare_unadapted:
            metrics[f"{name}_unadapted"] = unadapted.top1
            metrics[f"{name}_changed_percent"] = 100.0 * float((unadapted.predictions != result.predictions).mean())
    targets = names[1:] or names
    metrics["average"] = sum(metrics[t] for t in targets) / len(targets)
    metrics["seconds_per_sample"] = seconds / max(samples, 1)
    if settings.limit is not None:
        metrics["samples_per_dataset_limit"] = settings.limit
    return metrics


def spread_subset(ds, limit: int | None):
    """`ds` with `limit` test samples spread evenly over its test split (splits list classes in order)."""
    n = len(ds.test)
    if limit is None or limit >= n:
        return ds
    return replace(ds, test=[ds.test[(i * n) // limit] for i in range(limit)])


__all__ = ["TestTimeSettings", "spread_subset", "test_time"]
