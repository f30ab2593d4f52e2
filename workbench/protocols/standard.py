"""Base-to-novel, few-shot, cross-dataset and domain-generalization protocols."""
from __future__ import annotations

from ..data.sampling import base_new_split
from .base import RunContext, build_for, hm_metrics, load_splits, register_protocol, score, train


@register_protocol("base_to_novel", metrics=("base", "new", "hm"), domains=("base", "new"))
def base_to_novel(ctx: RunContext) -> dict:
    """Train on the base half of the source's few-shot split; test on base and new halves."""
    (name,) = ctx.spec.datasets[:1]
    if len(ctx.spec.datasets) != 1:
        raise ValueError("base_to_novel takes exactly one dataset")
    base, new = base_new_split(load_splits(name, ctx, ctx.spec.shots, ctx.spec.seed))
    ctx.method = build_for(ctx, base)
    train(ctx, ctx.method, base)
    return hm_metrics(score(ctx, ctx.method, base, "base", "base"), score(ctx, ctx.method, new, "new", "new"))


@register_protocol("few_shot", metrics=("top1",), domains=("base",))
def few_shot(ctx: RunContext) -> dict:
    """Train on K shots of every class; test on the full test set."""
    if len(ctx.spec.datasets) != 1:
        raise ValueError("few_shot takes exactly one dataset")
    ds = load_splits(ctx.spec.datasets[0], ctx, ctx.spec.shots, ctx.spec.seed)
    ctx.method = build_for(ctx, ds)
    train(ctx, ctx.method, ds)
    return {"top1": score(ctx, ctx.method, ds, "base", "test")}


def _transfer(ctx: RunContext, target_domain: str) -> dict:
    if len(ctx.spec.datasets) < 2:
        raise ValueError(f"{ctx.spec.protocol} needs a source dataset and at least one target")
    source_name, *targets = ctx.spec.datasets
    source = load_splits(source_name, ctx, ctx.spec.shots, ctx.spec.seed)
    ctx.method = build_for(ctx, source)
    train(ctx, ctx.method, source)
    metrics = {source_name: score(ctx, ctx.method, source, "base", source_name)}
    for target in targets:
        ds = load_splits(target, ctx, None, ctx.spec.seed)
        metrics[target] = score(ctx, ctx.method, ds, target_domain, target)
    metrics["average"] = sum(metrics[t] for t in targets) / len(targets)
    return metrics


@register_protocol("cross_dataset", min_datasets=2, max_datasets=None, metrics=("average",),
                   per_dataset_metrics=True, domains=("base", "cross"))
def cross_dataset(ctx: RunContext) -> dict:
    """Train on the source (all classes); evaluate other datasets' classes without tuning."""
    return _transfer(ctx, "cross")


@register_protocol("domain_generalization", min_datasets=2, max_datasets=None, metrics=("average",),
                   per_dataset_metrics=True, domains=("base", "shift"))
def domain_generalization(ctx: RunContext) -> dict:
    """Train on the source; evaluate its shifted variants (same label space)."""
    return _transfer(ctx, "shift")
