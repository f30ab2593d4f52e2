"""The one spec builder: every run (`workbench run`, the demo, the notebooks, the launcher, the app)
is described by a `RunSpec` built here.

    spec = build_spec("coop", "base_to_novel", "toy_objects", shots=16, seed=1,
                      settings={"train.epochs": 5, "method.n_ctx": 4})
    specs = build_specs(["zeroshot", "coop"], "base_to_novel", [("toy_objects",)], shots=[16], seeds=[1, 2, 3])

Settings are flat namespaced keys: `method.<field>` (the method's Config), `train.<field>`
(`engine.TrainConfig`) and `<namespace>.<field>` for a protocol that declares its own settings. A nested
dict ({"train": {"epochs": 1}}) is flattened; "KEY=VALUE" strings are read as YAML. An unknown key, a key
without a namespace, or a value of the wrong type is an error that names the setting and the valid ones.
Nothing is ignored.

The spec holds the resolved settings (preset values + the given ones, every field) and the behaviour
versions, so its hash changes when a preset's values, a method's or the engine's behaviour change.

Methods that train nothing (zero-shot) depend on neither shots nor seed: their specs have shots None and
seed 1, so the same request from the demo, the CLI and a notebook is one run. Training settings do not
apply to them: `build_spec` refuses them, `build_specs` (grids) leaves them out for those methods.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Iterable, Mapping, Sequence

from .runspec import RunSpec
from .settings import SettingError, coerce, field_types, flatten_settings

# training settings that still matter for a method that trains nothing (how evaluation runs)
EVAL_TRAIN_SETTINGS = ("eval_batch_size", "precision")


class SpecError(ValueError):
    """The request cannot become a run spec; the message says what to change."""


def _classes(method: str, protocol: str):
    from ..engine.train import TrainConfig
    from ..methods import get_method_class
    from .registry import get_protocol

    return get_method_class(method), TrainConfig, get_protocol(protocol)


def resolve_preset(method: str, protocol: str, backbone: str, dataset: str | None = None,
                   shots: int | None = None) -> str:
    """Which named preset a run uses when none is given. The embedded toy world has its own CPU budget
    (`toy`); otherwise the first preset the method has of `<protocol>_<dataset>_<k>shot`,
    `<protocol>_<dataset>`, `<protocol>_<k>shot`, `<protocol>`, else the method's default (released
    configs differ per dataset and per shot count: CoOp's 1/2/4-shot schedules, ImageNet's)."""
    from ..methods import get_method_class
    from ..models import is_embedded_scale

    cls = get_method_class(method)
    if "toy" in cls.presets and is_embedded_scale(backbone):
        return "toy"
    data = dataset.lower() if dataset else None
    shot = f"{shots}shot" if shots is not None else None
    for parts in ((protocol, data, shot), (protocol, data), (protocol, shot), (protocol,)):
        if None not in parts and "_".join(parts) in cls.presets:
            return "_".join(parts)
    return cls.default_preset


def current_versions(method: str, protocol: str, backbone: str | None = None) -> dict[str, int]:
    """The behaviour versions a run of `method` under `protocol` gets today (with the embedded `toy`
    backbone also the version of its pretraining recipe, which decides its weights)."""
    from ..data.sampling import FEW_SHOT_SPLIT_VERSION
    from ..engine.versions import ENGINE_VERSION

    cls, _, info = _classes(method, protocol)
    versions = {"engine": ENGINE_VERSION, "method": cls.version, "protocol": info.version,
                "splits": FEW_SHOT_SPLIT_VERSION}
    if backbone == "toy":
        from ..data.toy.pretrain import PRETRAIN_VERSION

        versions["toy_model"] = PRETRAIN_VERSION
    return versions


MAX_SHOTS = 1024  # more shots per class than any protocol uses; "all data" is shots=None
MAX_SEED = 2**31 - 1


def _file_digest(path) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def data_identity(datasets: Sequence[str], data_root: str | None) -> dict:
    """What identifies the data a run reads: the resolved data root and, per dataset, its split and
    class files' digests, and of its description and structure files (a toy dataset: its world and
    knowledge versions). SpecError for an unknown dataset or a
    real dataset without a data root. Image bytes are covered by the feature cache's own keys."""
    from ..data.manifests import DataRootError, list_manifests, load_manifest
    from ..data.toy.knowledge import KNOWLEDGE_VERSION
    from ..data.toy.world import WORLD_VERSION

    known = list_manifests()
    unknown = [d for d in datasets if d not in known]
    if unknown:
        raise SpecError(f"unknown dataset(s) {', '.join(map(repr, unknown))}; datasets: {', '.join(known)} "
                        "(`workbench data check` says which are present)")
    root, out = None, {}
    for name in datasets:
        manifest = load_manifest(name)
        if manifest.is_toy:
            out[name] = {"toy": WORLD_VERSION, "knowledge": KNOWLEDGE_VERSION}
            continue
        try:
            resolved = manifest.resolve_root(data_root).resolve()
        except DataRootError as exc:
            raise SpecError(str(exc)) from None
        root = str(resolved)
        folder = resolved / manifest.folder
        files = [manifest.split.file] + [manifest.split.get(k) for k in ("classnames_file", "variants_file")]
        files += [manifest.descriptions, manifest.structures]  # class knowledge (HPT, DAM), when named
        out[name] = {f: _file_digest(folder / f) for f in files if f}
    return {"root": root, "datasets": out}


def stale_reason(spec: RunSpec) -> str | None:
    """Why a recorded run would not be reused today (None when it would): made by an older format or
    an older engine / method / protocol / split / toy-model version."""
    if spec.is_legacy:
        return "made before runs recorded their resolved settings"
    try:
        now = current_versions(spec.method, spec.protocol, spec.backbone)
    except (KeyError, ValueError) as exc:
        return f"not runnable here ({exc})"
    changed = [f"{k} {spec.versions.get(k)} → {v}" for k, v in now.items() if spec.versions.get(k) != v]
    return ("older behaviour: " + ", ".join(changed)) if changed else None


def _namespace_table(cls, train_cls, info) -> dict[str, dict[str, Any]]:
    table = {"method": field_types(cls.Config), "train": field_types(train_cls)}
    if info.namespace and info.settings is not None:
        table[info.namespace] = field_types(info.settings)
    return table


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _split_settings(flat: Mapping[str, Any], table: dict[str, dict[str, Any]], method: str) -> dict[str, dict]:
    """{namespace: {field: coerced value}}; SpecError on any key that sets nothing."""
    out: dict[str, dict] = {ns: {} for ns in table}
    all_keys = [f"{ns}.{f}" for ns, fields in table.items() for f in fields]
    for key, value in flat.items():
        ns, dot, name = key.partition(".")
        if not dot:
            homes = [f"{n}.{key}" for n, fields in table.items() if key in fields]
            hint = f"; did you mean {' or '.join(homes)}?" if homes else _suggest(key, all_keys)
            raise SpecError(f"setting {key!r} has no namespace: write method.<field>, train.<field>"
                            + "".join(f" or {n}.<field>" for n in table if n not in ("method", "train")) + hint)
        if ns not in table:
            raise SpecError(f"setting {key!r}: unknown namespace {ns!r}; namespaces: {', '.join(table)}"
                            + _suggest(key, all_keys))
        if name not in table[ns]:
            what = f"{method} has no setting" if ns == "method" else f"no {ns} setting"
            raise SpecError(f"{what} {name!r}{_suggest(key, all_keys)}; {ns} settings: "
                            f"{', '.join(sorted(table[ns]))}")
        try:
            out[ns][name] = coerce(value, table[ns][name], key)
        except SettingError as exc:
            raise SpecError(str(exc)) from None
    return out


def _instantiate(config_cls, values: dict, what: str) -> dict:
    try:
        return dataclasses.asdict(config_cls(**values))
    except (TypeError, ValueError, KeyError) as exc:
        raise SpecError(f"{what}: {exc}") from None


def _coerced(values: Mapping[str, Any], types: Mapping[str, Any], ns: str) -> dict:
    try:
        return {k: coerce(v, types[k], f"{ns}.{k}") if k in types else v for k, v in values.items()}
    except SettingError as exc:
        raise SpecError(f"preset value {exc}") from None


def build_spec(method: str, protocol: str = "base_to_novel", datasets: str | Sequence[str] = "toy_objects", *,
               shots: int | None = 16, seed: int = 1, backbone: str = "toy", pretrained: str | None = None,
               preset: str | None = None, settings: Mapping[str, Any] | Iterable[str] | None = None,
               data_root: str | None = None, name: str | None = None, _resolved: bool = False,
               _data: dict | None = None) -> RunSpec:
    """The RunSpec of one run, with every setting resolved and checked (see the module doc).
    `data_root` holds the real datasets (default: $WORKBENCH_DATA); it is part of the run's identity."""
    try:
        cls, train_cls, info = _classes(method, protocol)
    except KeyError as exc:
        raise SpecError(exc.args[0] if exc.args else str(exc)) from None
    datasets = (datasets,) if isinstance(datasets, str) else tuple(datasets)
    problem = info.dataset_count_error(len(datasets))
    if problem:
        raise SpecError(problem)
    if len(set(datasets)) != len(datasets):
        raise SpecError(f"a dataset is listed twice: {', '.join(datasets)}")
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or not 1 <= shots <= MAX_SHOTS):
        raise SpecError(f"shots must be a whole number from 1 to {MAX_SHOTS} (or none for all data), got {shots!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise SpecError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    data = data_identity(datasets, data_root) if _data is None else _data
    preset = preset or resolve_preset(method, protocol, backbone, datasets[0], shots if cls.trainable else None)
    if cls.presets and preset not in cls.presets:
        raise SpecError(f"{method} has no preset {preset!r}; presets: {', '.join(sorted(cls.presets))}")
    table = _namespace_table(cls, train_cls, info)
    flat = flatten_settings(settings, table)
    given = _split_settings(flat, table, method)
    if not cls.trainable and not _resolved:
        ignored = sorted(k for k in given["train"] if k not in EVAL_TRAIN_SETTINGS)
        if ignored:
            raise SpecError(f"{method} trains nothing: train.{ignored[0]} does not apply (training settings it "
                            f"reads: {', '.join('train.' + k for k in EVAL_TRAIN_SETTINGS)})")
    chosen = cls.presets.get(preset)
    method_values = {**_coerced(chosen.method if chosen else {}, table["method"], "method"), **given["method"]}
    train_values = {**_coerced(chosen.train if chosen else {}, table["train"], "train"), **given["train"]}
    method_config = _instantiate(cls.Config, method_values, f"{method} settings")
    train_config = _instantiate(train_cls, train_values, "training settings")
    protocol_settings = {}
    if info.namespace and info.settings is not None:
        protocol_settings = _instantiate(info.settings, given[info.namespace], f"{protocol} settings")
    if not cls.trainable:
        shots, seed = None, 1
    return RunSpec(method=method, protocol=protocol, datasets=datasets, shots=shots, seed=seed, backbone=backbone,
                   pretrained=pretrained, preset=preset, method_config=method_config, train_config=train_config,
                   protocol_settings=protocol_settings, versions=current_versions(method, protocol, backbone),
                   data=data, settings={} if _resolved else {k: v for k, v in flat.items()}, name=name)


def build_specs(methods: Sequence[str], protocol: str, dataset_groups: Sequence[str | Sequence[str]], *,
                shots: int | None | Sequence[int | None] = 16, seeds: Sequence[int] = (1,), backbone: str = "toy",
                pretrained: str | None = None, presets: Mapping[str, str] | str | None = None,
                settings: Mapping[str, Any] | Iterable[str] | None = None, name: str | None = None,
                strict: bool = False, data_root: str | None = None) -> list[RunSpec]:
    """Specs for methods × dataset groups × shots × seeds, in that order, each built by `build_spec`,
    without duplicates (a method that trains nothing is one run per dataset group).

    dataset_groups: one entry per run's datasets: "eurosat" or ("imagenet", "caltech101", ...).
    presets: a preset per method ({"mmrl": "toy"}), or one name used by every method that has it.
    settings: as for `build_spec`; for a grid (strict=False) training settings are left out for the
    methods that train nothing, while strict=True (one request from the CLI or the app) refuses them.
    """
    from ..methods import get_method_class

    shot_list = list(shots) if isinstance(shots, (list, tuple)) else [shots]
    specs: dict[str, RunSpec] = {}
    for method in methods:
        cls = get_method_class(method)
        if isinstance(presets, str):
            preset = presets if presets in cls.presets else None
        else:
            preset = (presets or {}).get(method)
        method_settings = settings
        if not cls.trainable and settings is not None and not strict:
            flat = flatten_settings(settings, ("method", "train"))
            method_settings = {k: v for k, v in flat.items()
                               if not k.startswith("train.") or k.removeprefix("train.") in EVAL_TRAIN_SETTINGS}
        for group in dataset_groups:
            for k in shot_list:
                for seed in seeds:
                    spec = build_spec(method, protocol, group, shots=k, seed=int(seed), backbone=backbone,
                                      pretrained=pretrained, preset=preset, settings=method_settings,
                                      data_root=data_root, name=name)
                    specs.setdefault(spec.hash, spec)
    return list(specs.values())


def check_resolved(spec: RunSpec) -> None:
    """SpecError unless `spec` is what `build_spec` makes today for the same request: every setting
    resolved, current behaviour versions. `execute` calls this so that no hand-made or stale spec runs."""
    if spec.is_legacy:
        raise SpecError(f"run {spec.short_hash} was made by an older workbench ({stale_reason(spec)}); it is kept "
                        "for reading, but cannot be re-run: build a new spec with build_spec(...)")
    rebuilt = build_spec(spec.method, spec.protocol, spec.datasets, shots=spec.shots, seed=spec.seed,
                         backbone=spec.backbone, pretrained=spec.pretrained, preset=spec.preset,
                         settings=spec.resolved_settings(), data_root=spec.data_root, _resolved=True)
    if rebuilt.hash == spec.hash:
        return
    reason = stale_reason(spec)
    if reason:
        raise SpecError(f"spec {spec.short_hash} is stale ({reason}); build it again with build_spec(...)")
    if rebuilt.data != spec.data:
        raise SpecError(f"the data of spec {spec.short_hash} changed since it was built (split or class files "
                        f"under {spec.data_root}); build it again with build_spec(...)")
    missing = {f"{ns}.{k}" for ns, mine, full in (("method", spec.method_config, rebuilt.method_config),
                                                  ("train", spec.train_config, rebuilt.train_config))
               for k in full if k not in mine}
    detail = f"; it lacks {', '.join(sorted(missing)[:6])}" if missing else ""
    raise SpecError(f"spec {spec.short_hash} is not fully resolved{detail}: build specs with "
                    "workbench.protocols.build_spec(method, protocol, datasets, settings={...})")


def differences_from_preset(method: str, protocol: str, datasets: Sequence[str], preset: str | None,
                            method_config: Mapping[str, Any], train_config: Mapping[str, Any],
                            backbone: str = "toy") -> dict[str, Any]:
    """The settings of a recorded run that differ from what its preset resolves to today, as flat keys
    ({"train.epochs": 2}); for labels. Keys a (legacy) record lacks count as the preset's."""
    from .runspec import canonicalize

    try:
        base = build_spec(method, protocol, datasets, backbone=backbone, preset=preset, _resolved=True, _data={})
    except (SpecError, KeyError, ValueError):
        return {}
    out = {}
    for ns, mine, theirs in (("method", method_config, base.method_config), ("train", train_config, base.train_config)):
        for key, value in mine.items():
            if key != "preset" and canonicalize(value) != canonicalize(theirs.get(key)):
                out[f"{ns}.{key}"] = value
    return out
