"""`workbench data check` and `workbench data prepare`: what is on disk, what is missing, what next.

check: per dataset, whether its folder and split/class files exist, how many listed images are
present / missing / unreadable (decoded with PIL; `verify` = none | sample | all), class and split
counts against the manifest's expected (CoOp's) numbers, and the exact next step.
prepare: writes the CoOp few-shot split files (`split_fewshot/shot_{k}-seed_{s}.json`).

Root: an explicit root applies to every dataset named explicitly. When all datasets are checked,
a toy dataset is looked up under the given root if its folder is there, else under the toy root.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from workbench.data.coop import DatasetFormatError, DatasetMissingError, load_from_manifest
from workbench.data.knowledge import check_files as check_knowledge_files
from workbench.data.manifests import DataRootError, Manifest, list_manifests, load_manifest
from workbench.data.sampling import FewShotCacheError, few_shot_splits, fewshot_filename

VERIFY_MODES = ("none", "sample", "all")
DEFAULT_SAMPLE = 1000
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)


@dataclass
class DatasetReport:
    name: str
    display_name: str
    status: str = "missing"  # ok | incomplete | missing | error
    dataset_dir: str | None = None
    image_root: str | None = None
    classes: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int | None] = field(default_factory=dict)
    images_listed: int = 0
    present: int = 0
    missing: int = 0
    checked: int = 0  # images decoded
    unreadable: int = 0
    missing_examples: list[str] = field(default_factory=list)
    unreadable_examples: list[str] = field(default_factory=list)
    fewshot_files: int = 0
    # class knowledge files the manifest names (HPT, DAM): {"kind", "status": ok|missing|invalid, "detail"}
    knowledge: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    needs_root: bool = False  # not checked: no data root was given

    def to_dict(self) -> dict:
        return asdict(self)


def _root_for(m: Manifest, root: str | os.PathLike | None, explicit: bool) -> Path:
    if root is not None and not explicit and m.is_toy and not (Path(root).expanduser() / m.folder).exists():
        return m.resolve_root(None)
    return m.resolve_root(root)


def _obtain_step(m: Manifest, data_root: Path) -> str:
    where = m.image_root(data_root)
    src = m.obtain.official or "its official source"
    step = f"download {m.display_name} from {src} and extract it to {where}"
    details = m.how_to_obtain(data_root, official=False)
    return step + ("\n" + details if details else "")


def check_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    verify: str = "sample",
    sample_size: int = DEFAULT_SAMPLE,
    explicit: bool = True,
) -> DatasetReport:
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    m = load_manifest(name)
    rep = DatasetReport(name=m.name, display_name=m.display_name, expected=asdict(m.expected))
    try:
        data_root = _root_for(m, root, explicit)
    except DataRootError as e:
        rep.status = "error"
        rep.needs_root = True
        rep.problems.append(str(e))
        rep.next_steps.append(f"pass --root DIR or set WORKBENCH_DATA=DIR (DIR holds {m.folder}/)")
        return rep
    rep.dataset_dir = str(data_root / m.folder)
    rep.image_root = str(m.image_root(data_root))

    try:
        ds = load_from_manifest(m, data_root)
    except DatasetMissingError as e:
        rep.status = "missing"
        rep.problems.append(str(e).splitlines()[0])
        if m.is_toy:
            rep.next_steps.append(f"render the toy datasets (see `workbench toy --help`) into {data_root}")
        elif m.test_only and e.what == "class-name file":
            rep.next_steps.append(str(e).splitlines()[1])
        elif e.what == "split file" and e.path is not None:
            src = next((x for x in m.obtain.mirrors if e.path.name in x), m.obtain.official)
            rep.next_steps.append(f"download {e.path.name} from {src} and put it at {e.path}")
        elif e.what not in ("dataset folder", "image folder") and e.path is not None:
            rep.next_steps.append(f"{e.path.name} is missing: put it at {e.path}\n" + m.how_to_obtain(data_root))
        else:
            rep.next_steps.append(_obtain_step(m, data_root))
        return rep
    except (DatasetFormatError, OSError, ValueError) as e:
        rep.status = "error"
        rep.problems.append(f"{type(e).__name__}: {e}")
        rep.next_steps.append(f"fix or re-download the files under {data_root / m.folder}")
        return rep

    rep.classes = ds.num_classes
    rep.knowledge = [{"kind": kind, "status": status, "detail": detail}
                     for kind, status, detail in check_knowledge_files(m, data_root / m.folder, ds.classnames)]
    rep.counts = {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)}
    if ds.val is ds.test and ds.val:
        rep.counts["val"] = 0  # ImageNet: val is the test set, not a split of its own

    # presence: folder-built datasets list what exists; file lists can point at absent files
    paths = sorted({s.path for split in (ds.train, ds.val, ds.test) for s in split})
    rep.images_listed = len(paths)
    image_root = Path(ds.image_root)
    if m.split.kind in ("split_file", "fgvc_aircraft"):
        present = []
        for p in paths:
            if (image_root / p).is_file():
                present.append(p)
            else:
                rep.missing += 1
                if len(rep.missing_examples) < 5:
                    rep.missing_examples.append(p)
    else:
        present = paths
    rep.present = len(present)

    if verify != "none" and present:
        from workbench.data.images import check_image  # PIL only when needed

        if verify == "all" or len(present) <= sample_size:
            chosen = present
        else:
            step = len(present) / sample_size
            chosen = [present[int(i * step)] for i in range(sample_size)]
        for p in chosen:
            if check_image(image_root / p) is not None:
                rep.unreadable += 1
                if len(rep.unreadable_examples) < 5:
                    rep.unreadable_examples.append(p)
        rep.checked = len(chosen)

    fs_dir = m.fewshot_dir(data_root)
    rep.fewshot_files = len(list(fs_dir.glob("shot_*-seed_*.json"))) if fs_dir.is_dir() else 0

    # problems and next steps
    if rep.missing:
        rep.problems.append(f"{rep.missing} of {rep.images_listed} listed images are absent from {image_root}")
        rep.next_steps.append(
            f"re-extract the {m.display_name} images into {image_root} (from {m.obtain.official or 'the official source'}); "
            f"absent e.g. {', '.join(rep.missing_examples[:3])}"
        )
    if rep.unreadable:
        rep.problems.append(f"{rep.unreadable} of {rep.checked} decoded images are unreadable")
        rep.next_steps.append(
            f"re-download the unreadable files (e.g. {', '.join(rep.unreadable_examples[:3])}); "
            "training skips them and the run record counts them"
        )
    mism = []
    if m.expected.classes is not None and rep.classes != m.expected.classes:
        mism.append(f"classes {rep.classes} (expected {m.expected.classes})")
    for split in ("train", "val", "test"):
        want = getattr(m.expected, split)
        if want is not None and rep.counts.get(split) != want:
            mism.append(f"{split} {rep.counts.get(split)} (expected {want})")
    if mism:
        rep.problems.append("counts differ from CoOp's: " + ", ".join(mism))
        if m.split.kind == "split_file":
            src = next((x for x in m.obtain.mirrors if m.split.file and m.split.file in x), m.obtain.official)
            rep.next_steps.append(f"use CoOp's {m.split.file} ({src}) in {data_root / m.folder}")
        else:
            rep.next_steps.append(f"the folders under {image_root} are incomplete; re-extract {m.display_name}")
    if rep.problems:
        rep.status = "incomplete"
    else:
        rep.status = "ok"
        if not m.test_only and rep.counts.get("train") and rep.fewshot_files == 0:
            rep.next_steps.append(f"optional: `workbench data prepare --root {data_root} --dataset {m.name}` writes the few-shot splits")
    return rep


def check_all(
    root: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    verify: str = "sample",
    sample_size: int = DEFAULT_SAMPLE,
) -> list[DatasetReport]:
    explicit = names is not None and len(names) > 0
    todo = list(names) if explicit else list_manifests()
    return [check_dataset(n, root, verify=verify, sample_size=sample_size, explicit=explicit) for n in todo]


def nothing_checked(reports: Sequence[DatasetReport]) -> bool:
    """True when no dataset was found to check (all need a root or are missing)."""
    return all(r.needs_root or r.status == "missing" for r in reports)


def format_reports(reports: Iterable[DatasetReport]) -> str:
    reports = list(reports)
    lines = []
    rootless = [r for r in reports if r.needs_root]
    for r in reports:
        if r.needs_root:
            folder = load_manifest(r.name).folder
            lines.append(f"{r.name} ({r.display_name}): NOT CHECKED, needs a data root (holding {folder}/)")
            continue
        lines.append(f"{r.name} ({r.display_name}): {r.status.upper()}")
        if r.dataset_dir:
            lines.append(f"  folder: {r.dataset_dir}")
        if r.classes is not None:
            exp = r.expected
            parts = [f"classes {r.classes}" + _vs(exp.get("classes"))]
            for split in ("train", "val", "test"):
                parts.append(f"{split} {r.counts.get(split, 0)}" + _vs(exp.get(split)))
            lines.append("  " + ", ".join(parts))
            lines.append(
                f"  images: {r.present} present, {r.missing} missing, {r.unreadable} unreadable"
                f" ({r.checked} of {r.present} decoded); few-shot files: {r.fewshot_files}"
            )
        for k in r.knowledge:  # needed only by methods that read class knowledge (HPT, DAM)
            first, *rest = k["detail"].splitlines()
            label = "ok" if k["status"] == "ok" else k["status"].upper() + " (needed by HPT, DAM)"
            lines.append(f"  {k['kind']}: {label}: {first}")
            lines.extend(f"        {x}" for x in rest)
        for p in r.problems:
            lines.append(f"  problem: {p}")
        for s in r.next_steps:
            first, *rest = s.splitlines()
            lines.append(f"  next: {first}")
            lines.extend(f"        {x}" for x in rest)
    if rootless:
        lines.append(f"{len(rootless)} dataset(s) not checked: give the data root with --root DIR or set "
                     "WORKBENCH_DATA=DIR (DIR holds the dataset folders in the CoOp layout)")
    counts = {}
    for r in reports:
        status = "not checked" if r.needs_root else r.status
        counts[status] = counts.get(status, 0) + 1
    if counts:
        lines.append("summary: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


def _vs(expected: int | None) -> str:
    return "" if expected is None else f"/{expected}"


# ----------------------------------------------------------------------------------------- prepare
@dataclass
class PrepareResult:
    name: str
    status: str  # written | reused | skipped | missing | error
    detail: str = ""
    files: list[str] = field(default_factory=list)


def prepare(
    root: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
) -> list[PrepareResult]:
    explicit = names is not None and len(names) > 0
    todo = list(names) if explicit else list_manifests()
    results = []
    for name in todo:
        m = load_manifest(name)
        if m.test_only:
            results.append(PrepareResult(name, "skipped", f"test-only variant of {m.variant_of}"))
            continue
        try:
            data_root = _root_for(m, root, explicit)
            ds = load_from_manifest(m, data_root)
        except (DataRootError, DatasetMissingError) as e:
            results.append(PrepareResult(name, "missing", str(e).splitlines()[0]))
            continue
        except (DatasetFormatError, OSError, ValueError) as e:
            results.append(PrepareResult(name, "error", f"{type(e).__name__}: {e}"))
            continue
        if not ds.train:
            results.append(PrepareResult(name, "skipped", "no train split (test-only)"))
            continue
        cache = m.fewshot_dir(data_root)
        written = reused = 0
        files = []
        try:
            for k in shots:
                for s in seeds:
                    path = cache / fewshot_filename(k, s)
                    before = path.stat().st_mtime_ns if path.is_file() else None
                    few_shot_splits(ds, k, s, cache_dir=cache, sample_val=m.split.kind != "imagenet")
                    kept = before is not None and path.stat().st_mtime_ns == before  # a stale file is rewritten
                    reused += kept
                    written += not kept
                    files.append(str(path))
        except FewShotCacheError as e:
            results.append(PrepareResult(name, "error", str(e), files))
            continue
        status = "written" if written else "reused"
        results.append(PrepareResult(name, status, f"{written} written, {reused} reused in {cache}", files))
    return results


def format_prepare(results: Iterable[PrepareResult]) -> str:
    return "\n".join(f"{r.name}: {r.status}" + (f" ({r.detail})" if r.detail else "") for r in results)
