"""Sweep files: a YAML grid expanded into RunSpecs through the one spec builder (`build_specs`).

    grid:                                  # one product (a mapping) or several (a list of mappings)
      - methods: [zeroshot, coop]
        protocols: base_to_novel
        datasets: [toy_objects]            # an entry may be a list: one run's datasets, source first
        shots: [4, 16]                     # null: all data
        seeds: [1, 2, 3]
        backbones: [toy]                   # or {name: ViT-B-16-quickgelu, pretrained: openai}
        presets: toy                       # names (each for the methods that have it) or {method: preset}
        settings: {train.epochs: 2}        # fixed; a list of mappings: explicit alternatives
        vary: {train.lr: [0.01, 0.002]}    # a product over setting values
    executor: {kind: local, workers: 2}    # local | slurm | submitit-local | debug
    slurm: {partition: gpu, array_parallelism: 32, gpus_per_task: 1, cpus_per_task: 8, mem_gb: 32,
            time_min: 240, max_requeues: 3}

Several GPUs per task (full fine-tuning): `slurm: {gpus_per_task: 4}` or, locally, `executor: {devices: [0, 1, 2, 3],
gpus_per_task: 2}` (each worker sees its 2 GPUs); `executor: {nproc_per_task: 2}` without devices: 2 CPU processes
(gloo). Such a task runs its spec under torchrun (`python -m workbench.runs.distributed`, DDP).

Grid keys at the top level are defaults for every block (with no `grid`, they are the one block).
Singular spellings (method, seed, ...) are accepted. Every error names the file and line.
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

BLOCK_KEYS = {"methods": "methods", "method": "methods", "protocols": "protocols", "protocol": "protocols",
              "datasets": "datasets", "dataset": "datasets", "shots": "shots", "seeds": "seeds", "seed": "seeds",
              "backbones": "backbones", "backbone": "backbones", "pretrained": "pretrained",
              "presets": "presets", "preset": "presets", "settings": "settings", "vary": "vary",
              "data_root": "data_root"}
TOP_KEYS = {"grid", "registry", "executor", "slurm", "metrics", "name"}
EXECUTOR_KEYS = {"kind", "workers", "devices", "device", "threads", "gpus_per_task", "nproc_per_task"}
SLURM_KEYS = {"partition", "array_parallelism", "gpus_per_task", "cpus_per_task", "mem_gb", "time_min",
              "max_requeues", "account", "qos", "constraint", "folder", "additional", "setup", "torchrun",
              "index"}
EXECUTORS = ("local", "slurm", "submitit-local", "debug")
DEFAULTS = {"protocols": ["base_to_novel"], "datasets": ["toy_objects"], "shots": [16], "seeds": [1],
            "backbones": ["toy"]}


class SweepError(ValueError):
    """A sweep file that cannot be expanded; the message starts with FILE:LINE."""


@dataclasses.dataclass
class Sweep:
    path: str  # the file (or "<text>")
    specs: list  # RunSpecs, unique by hash, in expansion order
    lines: dict  # spec hash -> line of the grid block it came from
    registry: str | None = None
    executor: dict = dataclasses.field(default_factory=dict)
    slurm: dict = dataclasses.field(default_factory=dict)
    metrics: list | None = None
    name: str | None = None


# -- YAML with line numbers -----------------------------------------------------------------------
class _Doc:
    """The parsed document plus the line (1-based) of every key and value, by path."""

    def __init__(self, text: str, source: str):
        import yaml

        self.source = source
        try:
            loader = yaml.SafeLoader(text)
            try:
                node = loader.get_single_node()
                self.data = loader.construct_document(node) if node is not None else None
            finally:
                loader.dispose()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 1
            raise SweepError(f"{source}:{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        self.lines: dict[tuple, int] = {}
        self.texts: list[tuple[str, tuple, int]] = []  # (scalar text, path, line) of keys and values
        if node is not None:
            self._walk(node, ())

    def _walk(self, node, path: tuple) -> None:
        import yaml

        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    raise SweepError(f"{self.source}:{key_node.start_mark.line + 1}: key {key!r} given twice")
                seen.add(key)
                self.texts.append((str(key), path + (key,), key_node.start_mark.line + 1))
                self._walk(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, path + (i,))
        else:
            self.texts.append((str(node.value), path, node.start_mark.line + 1))

    def line(self, path: tuple) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def fail(self, path: tuple, msg: str):
        raise SweepError(f"{self.source}:{self.line(path)}: {msg}")

    def blame(self, prefix: tuple, message: str) -> int:
        """The line under `prefix` of the first quoted word of `message` that the file spells there."""
        words = re.findall(r"'([^']+)'", message)
        for word in words:
            for text, path, line in self.texts:
                if path[:len(prefix)] == prefix and (text == word or text.split(".")[-1] == word):
                    return line
        return self.line(prefix)


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), sorted(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


# -- expansion --------------------------------------------------------------------------------------
def load_sweep(source: str | Path | Mapping, *, data_root: str | None = None) -> Sweep:
    """Parse and expand a sweep (a file path, YAML text, or an already loaded mapping). `SweepError`
    (FILE:LINE: what) for anything that would not run; nothing is submitted before this passes."""
    if isinstance(source, Mapping):
        import yaml

        doc = _Doc(yaml.safe_dump(dict(source), sort_keys=False), "<sweep>")
    elif isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml"))):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SweepError(f"{path}: cannot read the sweep file ({exc.strerror or exc})") from None
        doc = _Doc(text, str(path))
    else:
        doc = _Doc(str(source), "<sweep>")
    data = doc.data
    if not isinstance(data, dict):
        doc.fail((), "a sweep file is a mapping (grid:, executor:, ...)")
    for key in data:
        if key not in TOP_KEYS and key not in BLOCK_KEYS:
            doc.fail((key,), f"unknown key {key!r}{_suggest(key, TOP_KEYS | set(BLOCK_KEYS))}; keys: "
                             f"{', '.join(sorted(TOP_KEYS | set(BLOCK_KEYS)))}")
    defaults = {k: v for k, v in data.items() if k in BLOCK_KEYS}
    if "grid" in data:
        grid = data["grid"]
        blocks = [(("grid",), grid)] if isinstance(grid, dict) else \
            [(("grid", i), b) for i, b in enumerate(grid)] if isinstance(grid, list) else None
        if not blocks:
            doc.fail(("grid",), "the grid is empty: give a mapping of methods, datasets, seeds, ... (or a list of them)")
    else:
        blocks = [((), {})]
    executor = _section(doc, data, "executor", EXECUTOR_KEYS)
    kind = executor.setdefault("kind", "local")
    if kind not in EXECUTORS:
        doc.fail(("executor", "kind"), f"unknown executor {kind!r}{_suggest(kind, EXECUTORS)}; executors: "
                                       f"{', '.join(EXECUTORS)}")
    slurm = _section(doc, data, "slurm", SLURM_KEYS)
    # N > 1 GPUs (or CPU processes) per task: the task runs under torchrun with DDP (engine.distributed)
    for section, name in ((executor, "executor"), (slurm, "slurm")):
        for key in ("gpus_per_task", "nproc_per_task"):
            value = section.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                doc.fail((name, key), f"{key} is a whole number of at least 1, got {value!r}")
    if "torchrun" in slurm and not isinstance(slurm["torchrun"], bool):
        doc.fail(("slurm", "torchrun"), f"torchrun is true or false, got {slurm['torchrun']!r}")
    if slurm.get("torchrun") is False and int(slurm.get("gpus_per_task") or 1) > 1:
        doc.fail(("slurm", "torchrun"), "a task with several GPUs runs under torchrun (DDP); torchrun: false would "
                                        "leave all GPUs but one idle")
    root = data_root if data_root is not None else data.get("data_root")
    specs: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for prefix, block in blocks:
        if not isinstance(block, dict):
            doc.fail(prefix, "a grid block is a mapping (methods:, datasets:, seeds:, ...)")
        for key in block:
            if key not in BLOCK_KEYS:
                doc.fail(prefix + (key,), f"unknown key {key!r}{_suggest(key, BLOCK_KEYS)}; grid keys: "
                                          f"{', '.join(sorted(set(BLOCK_KEYS.values())))}")
        merged = {BLOCK_KEYS[k]: (v, (k,)) for k, v in defaults.items()}
        merged.update({BLOCK_KEYS[k]: (v, prefix + (k,)) for k, v in block.items()})
        for spec in _expand_block(doc, prefix, merged, root):
            if spec.hash not in specs:
                specs[spec.hash] = spec
                lines[spec.hash] = doc.line(prefix)
    if not specs:
        doc.fail(("grid",), "the grid expands to no runs")
    metrics = data.get("metrics")
    return Sweep(doc.source, list(specs.values()), lines, data.get("registry"), executor, slurm,
                 _as_list(metrics) if metrics is not None else None, data.get("name"))


def _section(doc: _Doc, data: dict, name: str, keys: set) -> dict:
    value = data.get(name) or {}
    if not isinstance(value, dict):
        doc.fail((name,), f"{name}: is a mapping ({', '.join(sorted(keys))})")
    for key in value:
        if key not in keys:
            doc.fail((name, key), f"unknown {name} key {key!r}{_suggest(key, keys)}; {name} keys: "
                                  f"{', '.join(sorted(keys))}")
    return dict(value)


def _axis(doc: _Doc, merged: dict, name: str) -> tuple[list, tuple]:
    if name not in merged:
        return list(DEFAULTS.get(name, [None])), ()
    value, path = merged[name]
    values = _as_list(value)
    if not values:
        doc.fail(path, f"{path[-1]}: is empty, so the grid has no runs")
    return values, path


def _expand_block(doc: _Doc, prefix: tuple, merged: dict, data_root: str | None) -> list:
    from workbench.methods import list_methods
    from workbench.protocols import PROTOCOLS
    from workbench.protocols.builder import SpecError, build_specs
    from workbench.protocols.settings import SettingError

    if "methods" not in merged:
        doc.fail(prefix, "this grid block names no methods (methods: [...]; `workbench methods` lists them)")
    methods, mpath = _axis(doc, merged, "methods")
    known = list_methods()
    for i, m in enumerate(methods):
        if m not in known:
            doc.fail(mpath + (i,) if isinstance(merged["methods"][0], list) else mpath,
                     f"unknown method {m!r}{_suggest(m, known)}; methods: {', '.join(known)}")
    protocols, ppath = _axis(doc, merged, "protocols")
    for i, p in enumerate(protocols):
        if p not in PROTOCOLS:
            doc.fail(ppath + ((i,) if isinstance(merged.get("protocols", (None,))[0], list) else ()),
                     f"unknown protocol {p!r}{_suggest(p, PROTOCOLS)}; protocols: {', '.join(sorted(PROTOCOLS))}")
    datasets, _ = _axis(doc, merged, "datasets")
    groups = [tuple(d) if isinstance(d, list) else (d,) for d in datasets]
    shots, _ = _axis(doc, merged, "shots")
    seeds, spath = _axis(doc, merged, "seeds")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        doc.fail(spath, f"seeds are whole numbers, got {seeds!r}")
    backbones, bpath = _axis(doc, merged, "backbones")
    pretrained_default = merged.get("pretrained", (None,))[0]
    pairs = []
    for b in backbones:
        if isinstance(b, dict):
            extra = set(b) - {"name", "pretrained"}
            if "name" not in b or extra:
                doc.fail(bpath, "a backbone is a name or {name: ..., pretrained: ...}")
            pairs.append((b["name"], b.get("pretrained")))
        else:
            pairs.append((b, pretrained_default))
    if "presets" in merged:
        value, _ = merged["presets"]
        presets = [value] if isinstance(value, dict) else _as_list(value)
    else:
        presets = [None]
    alternatives, _ = (_as_list(merged["settings"][0]), merged["settings"][1]) if "settings" in merged else ([{}], ())
    vary: dict = merged["vary"][0] if "vary" in merged else {}
    if not isinstance(vary, dict):
        doc.fail(merged["vary"][1], "vary: is a mapping of setting -> list of values")
    for key, values in vary.items():
        if not _as_list(values):
            doc.fail(merged["vary"][1] + (key,), f"vary: {key} has no values, so the grid has no runs")
    combos = []
    for alt in alternatives:
        if not isinstance(alt, dict):
            doc.fail(merged["settings"][1], "settings: is a mapping (train.epochs: 2) or a list of mappings")
        for values in itertools.product(*[_as_list(v) for v in vary.values()]):
            combos.append({**alt, **dict(zip(vary, values))})
    root = merged["data_root"][0] if "data_root" in merged else data_root
    out = []
    for protocol, (backbone, pretrained), preset, settings in itertools.product(protocols, pairs, presets, combos):
        try:
            out += build_specs(methods, protocol, groups, shots=shots, seeds=seeds, backbone=backbone,
                               pretrained=pretrained, presets=preset, settings=settings, data_root=root)
        except (SpecError, SettingError, KeyError, TypeError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            raise SweepError(f"{doc.source}:{doc.blame(prefix, str(msg))}: {msg}") from None
    return out


# -- writing a sweep file (notebooks) ---------------------------------------------------------------
def sweep_dict(methods: Sequence[str], protocol: str, datasets: Sequence, shots, seeds: Sequence[int], *,
               backbone: str = "toy", pretrained: str | None = None, presets=None,
               settings: Mapping[str, Any] | None = None, data_root: str | None = None,
               executor: Mapping[str, Any] | None = None, slurm: Mapping[str, Any] | None = None,
               metrics: Sequence[str] | None = None) -> dict:
    """A sweep as a mapping, from the same arguments the notebooks give `build_specs`."""
    block: dict[str, Any] = {"methods": list(methods), "protocols": [protocol],
                             "datasets": [list(d) if isinstance(d, (list, tuple)) else d for d in
                                          ([datasets] if isinstance(datasets, str) else datasets)],
                             "shots": list(shots) if isinstance(shots, (list, tuple)) else [shots],
                             "seeds": [int(s) for s in seeds],
                             "backbones": [{"name": backbone, "pretrained": pretrained} if pretrained else backbone]}
    if presets:
        block["presets"] = dict(presets) if isinstance(presets, Mapping) else presets
    if settings:
        block["settings"] = {k: v for k, v in settings.items()}
    out: dict[str, Any] = {"grid": [block]}
    if data_root:
        out["data_root"] = str(data_root)
    if metrics:
        out["metrics"] = list(metrics)
    out["executor"] = dict(executor or {"kind": "local", "workers": 1})
    if slurm:
        out["slurm"] = dict(slurm)
    return out


def sweep_from_specs(specs: Sequence, *, executor: Mapping[str, Any] | None = None,
                     slurm: Mapping[str, Any] | None = None, metrics: Sequence[str] | None = None) -> dict:
    """A sweep mapping that expands to exactly `specs` (e.g. what a notebook built with
    `notebook_specs`): one grid block per configuration, its seeds as a list."""
    blocks: dict[str, dict] = {}
    for spec in specs:
        backbone = {"name": spec.backbone, "pretrained": spec.pretrained} if spec.pretrained else spec.backbone
        block = {"methods": [spec.method], "protocols": [spec.protocol], "datasets": [list(spec.datasets)],
                 "shots": [spec.shots], "backbones": [backbone], "presets": {spec.method: spec.preset}}
        if spec.settings:
            block["settings"] = dict(spec.settings)
        if spec.data_root:
            block["data_root"] = spec.data_root
        key = repr(sorted((k, repr(v)) for k, v in block.items()))
        blocks.setdefault(key, {**block, "seeds": []})["seeds"].append(int(spec.seed))
    out: dict[str, Any] = {"grid": list(blocks.values()),
                           "executor": dict(executor or {"kind": "local", "workers": 1})}
    if metrics:
        out["metrics"] = list(metrics)
    if slurm:
        out["slurm"] = dict(slurm)
    return out


def write_sweep_specs(path: str | Path, specs: Sequence, **kwargs) -> Path:
    """Write `sweep_from_specs(specs, **kwargs)` as a sweep file, checked to expand to the same runs."""
    import yaml

    data = sweep_from_specs(specs, **kwargs)
    got = [s.hash for s in load_sweep(data).specs]
    if sorted(got) != sorted(s.hash for s in specs):
        raise SweepError(f"{path}: the written grid would not reproduce the given runs")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def write_sweep(path: str | Path, *args, **kwargs) -> Path:
    """Write `sweep_dict(*args, **kwargs)` as a sweep file (checked by expanding it first); returns
    the path. `workbench sweep PATH` then runs the grid (locally or on SLURM)."""
    import yaml

    data = sweep_dict(*args, **kwargs)
    load_sweep(data)  # fail here, not on the cluster
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path
