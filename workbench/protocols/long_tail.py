"""Long-tailed base-to-novel (DAM Table V, after Candle): the base classes' training data downsampled to an
exponential profile with a given imbalance ratio, then base and new tested as in base_to_novel. Any
method runs under it.

Paper (papers/dam.txt, Sec. IV-G) [paper]: "all training data are obtained by downsampling the base class
data with varying imbalance ratios (IR), i.e. the ratio between the maximum and minimum number of samples
across all classes"; at most 100 samples per class, or the largest class's count when smaller; IR 10, 20, 50.
Class c of C (sorted base labels) keeps ⌊n_max · IR^(−c/(C−1))⌋ items (at least 1): `data.sampling`.

Our choices [decision]: the paper starts from the full training set: `shots` none. With `shots` K the
profile is drawn from the K-shot split instead (n_max = min(max_per_class, K)), so the usual CLI default
(16 shots) gives a small long-tailed toy run. The long-tail draw uses the run's seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..data.sampling import base_new_split, long_tail_split
from .base import RunContext, build_for, hm_metrics, load_splits, register_protocol, score, train


@dataclass
class LongTailSettings:
    imbalance_ratio: float = field(default=10.0, metadata={
        "help": "largest / smallest per-class count among the base classes (the paper's IR: 10, 20, 50)"})
    max_per_class: int = field(default=100, metadata={
        "help": "items of the largest class (the paper: 100, or the largest class's count when smaller)"})

    def __post_init__(self):
        if isinstance(self.imbalance_ratio, bool) or not float(self.imbalance_ratio) >= 1:
            raise ValueError(f"imbalance_ratio must be a number >= 1 (the paper uses 10, 20, 50), "
                             f"got {self.imbalance_ratio!r}")
        if isinstance(self.max_per_class, bool) or not isinstance(self.max_per_class, int) or self.max_per_class < 1:
            raise ValueError(f"max_per_class must be a whole number >= 1 (the paper uses 100), got {self.max_per_class!r}")


def long_tail_base(ctx: RunContext):
    """(long-tailed base training set, new classes) for the spec's single dataset."""
    if len(ctx.spec.datasets) != 1:
        raise ValueError("long_tailed takes exactly one dataset")
    settings = LongTailSettings(**ctx.spec.protocol_settings)
    base, new = base_new_split(load_splits(ctx.spec.datasets[0], ctx, ctx.spec.shots, ctx.spec.seed))
    long_tailed = long_tail_split(base, settings.imbalance_ratio, ctx.spec.seed, settings.max_per_class)
    return replace(long_tailed, name=base.name), base, new  # the base's name: per-dataset method settings apply


@register_protocol("long_tailed", metrics=("base", "new", "hm"), domains=("base", "new"), settings=LongTailSettings)
def long_tailed(ctx: RunContext) -> dict:
    """Base-to-novel with the base classes' training data long-tailed (imbalance ratio, max per class)."""
    train_ds, base, new = long_tail_base(ctx)
    ctx.metrics["train_images"] = len(train_ds.train)
    ctx.method = build_for(ctx, train_ds)
    train(ctx, ctx.method, train_ds)
    return hm_metrics(score(ctx, ctx.method, base, "base", "base"), score(ctx, ctx.method, new, "new", "new"))
