"""Running a `RunSpec`: protocol × datasets × method, recorded in the run registry.

Every protocol follows the same flow: load the datasets (few-shot split of the source), build the
method on the training classes, `engine.fit`, then `engine.evaluate` each test set in the right
domain, and write metrics and predictions to the run folder.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..analysis.metrics import harmonic_mean
from ..engine.evaluate import evaluate
from ..engine.features import FeatureCache
from ..engine.train import TrainConfig, fit
from ..methods import ClassTask, build_method, get_method_class
from ..runs import Registry, RunSpec

@dataclass(frozen=True)
class ProtocolInfo:
    """What a protocol declares about itself; the CLI, launcher, app and comparison tables read this."""

    name: str
    run: Callable  # run(ctx: RunContext) -> metrics dict
    description: str = ""
    min_datasets: int = 1
    max_datasets: int | None = 1  # None: any number of targets after the source
    metrics: tuple[str, ...] = ()  # metric columns it always writes (base/new/hm, top1, average)
    per_dataset_metrics: bool = False  # also one top-1 column named after each dataset (source, targets)
    domains: tuple[str, ...] = ("base",)  # evaluation domains it asks methods for (methods.DOMAINS)
    namespace: str | None = None  # prefix of its own settings (`--set <namespace>.<field>=...`)
    settings: type | None = None  # dataclass of those settings (None: it has none)
    version: int = 1  # behaviour version, part of every run's identity

    def dataset_count_error(self, n: int) -> str | None:
        """Why `n` datasets do not fit this protocol (None when they do)."""
        if self.max_datasets == 1 and n != 1:
            return f"{self.name} takes exactly one dataset, got {n}"
        if n < self.min_datasets:
            return (f"{self.name} needs a source dataset and at least {self.min_datasets - 1} target(s) "
                    f"(the first one is the source), got {n}")
        if self.max_datasets is not None and n > self.max_datasets:
            return f"{self.name} takes at most {self.max_datasets} datasets, got {n}"
        return None


PROTOCOLS: dict[str, ProtocolInfo] = {}


def register_protocol(name: str, **meta):
    """Decorator: register `fn(ctx) -> metrics` as protocol `name` with its `ProtocolInfo` fields."""
    def wrap(fn):
        if name in PROTOCOLS and PROTOCOLS[name].run is not fn:
            raise KeyError(f"protocol {name!r} is registered twice")
        PROTOCOLS[name] = ProtocolInfo(name=name, run=fn, description=(fn.__doc__ or "").strip(), **meta)
        return fn

    return wrap


class UnknownProtocolError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


@dataclass
class RunContext:
    spec: RunSpec
    run: object  # RunHandle
    device: str
    data_root: str | None
    cache: FeatureCache
    progress: bool = True
    backbone: object = None
    metrics: dict = field(default_factory=dict)


def resolve_preset(method: str, protocol: str, backbone: str, dataset: str | None = None) -> str:
    """Which named preset a run uses when none is given: the embedded toy world has its own CPU
    budget; otherwise a protocol preset for the (source) dataset such as `base_to_novel_imagenet`,
    then the protocol's preset, else the method's default."""
    from ..models import is_embedded_scale

    cls = get_method_class(method)
    if "toy" in cls.presets and is_embedded_scale(backbone):
        return "toy"
    if dataset and f"{protocol}_{dataset.lower()}" in cls.presets:
        return f"{protocol}_{dataset.lower()}"
    if protocol in cls.presets:
        return protocol
    return cls.default_preset


def train_config_for(spec: RunSpec) -> TrainConfig:
    cls = get_method_class(spec.method)
    preset = spec.method_config.get("preset") or cls.default_preset
    values = dict(cls.presets[preset].train) if preset in cls.presets else {}
    values.update({k[len("train."):]: v for k, v in spec.overrides.items() if k.startswith("train.")})
    return TrainConfig.from_dict(values)


def method_overrides(spec: RunSpec) -> tuple[str | None, dict]:
    config = dict(spec.method_config)
    return config.pop("preset", None), config


def load_splits(name: str, ctx: RunContext, shots: int | None, seed: int):
    from ..data import load_dataset, load_few_shot, load_manifest

    manifest = load_manifest(name)
    if manifest.is_toy:
        from ..data.toy import ensure_toy_data

        ensure_toy_data()
    if shots is None or manifest.test_only:
        return load_dataset(name, root=ctx.data_root)
    return load_few_shot(name, shots, seed, root=ctx.data_root)


def build_for(ctx: RunContext, train_ds):
    from ..engine.train import seed_everything

    preset, overrides = method_overrides(ctx.spec)
    seed_everything(ctx.spec.seed)  # random inits (context vectors, adapters) follow the run's seed
    return build_method(ctx.spec.method, ctx.backbone, ClassTask.from_splits(train_ds), preset, overrides)


def train(ctx: RunContext, method, train_ds) -> None:
    cfg = train_config_for(ctx.spec)
    start = time.perf_counter()
    result = fit(method, train_ds, cfg, seed=ctx.spec.seed, device=ctx.device, run=ctx.run, cache=ctx.cache,
                 progress=ctx.progress)
    ctx.metrics["train_seconds"] = round(time.perf_counter() - start, 3)
    ctx.metrics["skipped_train_images"] = result.skipped_images
    if result.resumed_from_epoch is not None:
        ctx.metrics["resumed_from_epoch"] = result.resumed_from_epoch


MAX_SAVED_EMBEDDINGS = 2000  # image embeddings kept per evaluated split, for the app's plots


def score(ctx: RunContext, method, ds, domain: str, key: str) -> float:
    cfg = train_config_for(ctx.spec)
    result = evaluate(method, ds, "test", domain, device=ctx.device, batch_size=cfg.eval_batch_size,
                      cache=ctx.cache, progress=ctx.progress, max_embeddings=MAX_SAVED_EMBEDDINGS)
    ctx.run.save_predictions(key, result.labels, result.predictions, result.logits.astype(np.float16))
    save_embeddings(ctx.run, key, result)
    ctx.metrics[f"{key}_skipped_images"] = result.skipped
    return result.top1


def save_embeddings(run, key: str, result) -> None:
    """embeddings.npz in the run folder: `<key>/image` [n, D], `<key>/labels` [n], `<key>/classes`
    [C, D] (when the method has class embeddings) and `<key>/classnames`."""
    image = result.extra.get("image_embeddings")
    if image is None:
        return
    path = run.dir / "embeddings.npz"
    arrays = dict(np.load(path, allow_pickle=False)) if path.exists() else {}
    arrays[f"{key}/image"] = image.astype(np.float16)
    arrays[f"{key}/labels"] = result.labels[: len(image)]
    arrays[f"{key}/classnames"] = np.array(result.classnames)
    if "class_embeddings" in result.extra:
        arrays[f"{key}/classes"] = result.extra["class_embeddings"].astype(np.float16)
    tmp = path.with_name("embeddings.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_embeddings(run_dir, key: str) -> dict:
    """What `save_embeddings` stored for one evaluated split (empty dict when nothing was)."""
    from pathlib import Path

    path = Path(run_dir) / "embeddings.npz"
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {name.split("/", 1)[1]: z[name] for name in z.files if name.split("/", 1)[0] == key}


def execute(spec: RunSpec, registry: Registry | None = None, *, device: str | None = None,
            data_root: str | None = None, force: bool = False, progress: bool = True,
            cache: FeatureCache | None = None):
    """Run `spec` unless a finished run with the same hash exists (then return it). A run that was
    interrupted resumes from its last checkpoint."""
    from ..backbone import trainable_parameter_report
    from ..models import default_device, load_backbone

    if spec.protocol not in PROTOCOLS:
        raise UnknownProtocolError(f"unknown protocol {spec.protocol!r}; available: {', '.join(sorted(PROTOCOLS))}")
    get_method_class(spec.method)  # fail early on unknown methods
    registry = registry or Registry()
    run = registry.create_or_get(spec)
    if not registry.should_run(spec, force=force):
        return run
    ctx = RunContext(spec, run, device or default_device(), data_root, cache or FeatureCache(), progress)
    with run.running():
        ctx.backbone = load_backbone(spec.backbone, spec.pretrained, device=ctx.device)
        run.log(f"backbone {ctx.backbone.model_id} on {ctx.device}")
        metrics = PROTOCOLS[spec.protocol].run(ctx)
        method = getattr(ctx, "method", None)
        if method is not None:
            report = trainable_parameter_report(method)
            metrics["trainable_params"] = report["trainable"]
        metrics.update({k: v for k, v in ctx.metrics.items() if k not in metrics})
        run.write_metrics(metrics)
        run.set_progress(1.0, "done")
    return run


def hm_metrics(base: float, new: float) -> dict:
    return {"base": base, "new": new, "hm": harmonic_mean(base, new)}


def format_exception_for_user(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()
