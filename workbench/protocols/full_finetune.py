"""Full fine-tuning (RAda's FFT setting, after WiSE-FT / FLYP): train on the source dataset (all its
training data, or K shots), evaluate on it and on its distribution-shifted variants.

    workbench run --method lp_ft --protocol full_finetune --dataset imagenet imagenetv2 imagenet_r \
        imagenet_a imagenet_sketch objectnet --shots none --backbone ViT-B-16 --pretrained openai
    (toy: --dataset toy_objects toy_objects_shifted)

Methods that declare `stages` (LP-FT, FT, L2-SP, FLYP, CLIP-Adapter LP-FT, RAda-FT) train them in order
through `engine.staged.fit_staged` (each stage its parameters and optimizer settings, resumable); other
methods (zero-shot CLIP, the closed-form linear probe = the paper's LP row) train as in every protocol.
The image tower is trained, so training reads images, not cached features (except a head-only stage
with train.cached_features). Metrics: top-1 on the source (ID) and on each target, and `average` over
the targets (the paper's "OOD Avg."). Under torchrun, training runs with DDP (engine.distributed) and
only rank 0 writes the run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..engine.staged import Stage, fit_staged
from .base import RunContext, build_for, load_splits, register_protocol, score, train, train_config_for


@dataclass
class FullFinetuneSettings:
    # ObjectNet and the other variants are large downloads: "skip" leaves out a target whose data is not
    # present (recorded in the metrics as missing_targets), "error" refuses the run
    missing_targets: str = "skip"

    def __post_init__(self) -> None:
        if self.missing_targets not in ("skip", "error"):
            raise ValueError(f"full_finetune.missing_targets must be skip or error, got {self.missing_targets!r}")


def present(name: str, data_root: str | None) -> bool:
    """Whether dataset `name`'s data can be read (toy datasets are generated on demand)."""
    from ..data.manifests import load_manifest

    manifest = load_manifest(name)
    if manifest.is_toy:
        return True
    try:
        folder = manifest.resolve_root(data_root) / manifest.folder
    except Exception:  # noqa: BLE001 - no data root: not present
        return False
    return folder.is_dir()


def train_in_stages(ctx: RunContext, method, train_ds) -> None:
    cfg = train_config_for(ctx.spec)
    stages = [Stage(key, stage_cfg, name=key) for key, stage_cfg in method.stage_plan(cfg)]
    start = time.perf_counter()
    result = fit_staged(method, train_ds, stages, seed=ctx.spec.seed, device=ctx.device, run=ctx.run,
                        cache=ctx.cache, progress=ctx.progress)
    ctx.metrics["train_seconds"] = round(time.perf_counter() - start, 3)
    ctx.metrics["skipped_train_images"] = sum(r.skipped_images for r in result.stages)
    if result.resumed_from is not None:
        ctx.metrics["resumed_from_stage"], ctx.metrics["resumed_from_epoch"] = result.resumed_from


@register_protocol("full_finetune", min_datasets=2, max_datasets=None, metrics=("average",),
                   per_dataset_metrics=True, domains=("base", "shift"), settings=FullFinetuneSettings)
def full_finetune(ctx: RunContext) -> dict:
    """Fine-tune on the source (LP-FT and the like, image tower trained); evaluate ID and shifted targets."""
    from .base import _typed

    settings = _typed(FullFinetuneSettings, ctx.spec.protocol_settings, "full_finetune")
    source_name, *targets = ctx.spec.datasets
    missing = [t for t in targets if not present(t, ctx.data_root)]
    if missing and (settings.missing_targets == "error" or len(missing) == len(targets)):
        raise FileNotFoundError(f"target dataset(s) {', '.join(missing)} are not present under the data root; "
                                "add them (`workbench data check`)" + (
                                    "" if len(missing) == len(targets) else " or set full_finetune.missing_targets=skip"))
    if missing:
        ctx.run.log(f"targets not present, left out: {', '.join(missing)}")
    source = load_splits(source_name, ctx, ctx.spec.shots, ctx.spec.seed)
    ctx.method = build_for(ctx, source)
    if getattr(ctx.method, "stages", None):
        train_in_stages(ctx, ctx.method, source)
    else:
        train(ctx, ctx.method, source)
    metrics = {source_name: score(ctx, ctx.method, source, "base", source_name)}
    scored = [t for t in targets if t not in missing]
    for target in scored:
        ds = load_splits(target, ctx, None, ctx.spec.seed)
        metrics[target] = score(ctx, ctx.method, ds, "shift", target)
    metrics["average"] = sum(metrics[t] for t in scored) / len(scored)
    metrics["missing_targets"] = len(missing)
    return metrics
