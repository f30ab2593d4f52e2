"""What a protocol is (`ProtocolInfo`, `register_protocol`) and the steps every protocol shares.

Every protocol follows the same flow: load the datasets (few-shot split of the source), build the
method on the training classes, `engine.fit`, then `engine.evaluate` each test set in the right
domain, and write metrics, predictions and embeddings through the run handle (`ctx.run`). Running a
spec into the registry is `workbench.runs.execute` (the layer above).
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
from ..data.types import ClassTask
from ..methods import get_method_class
from .runspec import RunSpec
from .settings import coerce, field_types

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
    settings: type | None = None  # dataclass of its own settings, set as `<name>.<field>` (None: it has none)
    version: int = 1  # behaviour version, part of every run's identity

    @property
    def namespace(self) -> str | None:
        """The prefix of the protocol's own settings: its name."""
        return self.name if self.settings is not None else None

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


def _typed(config_cls, values: dict, what: str):
    """A config instance from resolved values as stored (JSON: lists for tuples, 1 for 1.0)."""
    types = field_types(config_cls)
    return config_cls(**{k: coerce(v, types[k], f"{what}.{k}") for k, v in values.items()})


def train_config_for(spec: RunSpec) -> TrainConfig:
    """The resolved training settings of a spec (see `builder.build_spec`)."""
    return _typed(TrainConfig, spec.train_config, "train")


def method_config_for(spec: RunSpec):
    """The resolved method Config of a spec."""
    return _typed(get_method_class(spec.method).Config, spec.method_config, "method")


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

    cls = get_method_class(ctx.spec.method)
    seed_everything(ctx.spec.seed)  # random inits (context vectors, adapters) follow the run's seed
    return cls(ctx.backbone, ClassTask.from_splits(train_ds), method_config_for(ctx.spec))


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
    image = result.extra.get("image_embeddings")
    if image is not None:
        ctx.run.save_embeddings(key, image.astype(np.float16), result.labels[: len(image)], np.array(result.classnames),
                                result.extra.get("class_embeddings"))
    ctx.metrics[f"{key}_skipped_images"] = result.skipped
    from ._inspection import save_inspection_arrays

    save_inspection_arrays(ctx.run, method, ds, key, ctx.device)
    return result.top1


def hm_metrics(base: float, new: float) -> dict:
    return {"base": base, "new": new, "hm": harmonic_mean(base, new)}


def format_exception_for_user(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()
