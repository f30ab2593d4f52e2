"""Start `workbench run` as a background process (used by the app's Launch page).

Only the workbench's own run command can be started: the command is always
`[sys.executable, "-m", "workbench", "run", ...]`, built as an argument list (no shell) from a
`LaunchRequest` whose every field is checked against the registries first (method in
`list_methods()`, protocol in `PROTOCOLS` with the number of datasets it declares, datasets in
`list_manifests()`, shots in 1/2/4/8/16, seeds non-negative ints, and the whole request through the one
spec builder, so every `--set` key and value is checked exactly as `workbench run` will check it).
Paths are confined to the configured roots (`allowed_roots()`: the cache's models folder,
`$WORKBENCH_DATA`, `$WORKBENCH_ALLOWED_ROOTS`): `local-dir:` backbones, pretrained weight files and
the data root, after resolving symlinks and `..`; a refusal never says whether the path exists.
`workbench run` itself (a trusted shell user) accepts any path. The process gets its own session
(`start_new_session=True`, so it outlives a restarted app), stdout/stderr go to
`<registry>/launches/<stamp>.log`, and a `<stamp>.json` record beside it says what was started.

    req = request_from_form(method="coop", protocol="base_to_novel", datasets=["eurosat"], shots=2,
                            seeds="1 2", settings="train.epochs=1", data_root="/data")
    launched = launch(req, registry_root)      # raises LaunchError with every problem listed
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

SHOTS_CHOICES = (1, 2, 4, 8, 16)
MAX_SEEDS = 20
LAUNCH_DIR = "launches"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+=-]*$")  # backbone / pretrained / preset names
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a pretrained tag (openai, laion2b_s34b_b79k)
LOCAL_DIR = "local-dir:"
ALLOWED_ROOTS_ENV = "WORKBENCH_ALLOWED_ROOTS"  # extra roots, os.pathsep-separated

POPEN = subprocess.Popen  # replaced in tests
_PROCESSES: dict[int, subprocess.Popen] = {}  # started by this process: polled to reap them and read exit codes


class LaunchError(ValueError):
    """The request is invalid; `errors` lists every problem (one sentence each)."""

    def __init__(self, errors: Sequence[str]):
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


@dataclass(frozen=True)
class LaunchRequest:
    method: str
    protocol: str
    datasets: tuple[str, ...]
    shots: int = 16
    seeds: tuple[int, ...] = (1,)
    backbone: str = "toy"
    pretrained: str | None = None
    device: str | None = None
    preset: str | None = None
    settings: tuple[str, ...] = ()  # KEY=VALUE, as for `workbench run --set`
    data_root: str | None = None
    name: str | None = None
    force: bool = False


@dataclass(frozen=True)
class Launched:
    pid: int
    args: list[str]
    log_path: Path
    record_path: Path
    started_at: float = field(default_factory=time.time)


# ------------------------------------------------------------------------------------------------
# parsing form input
# ------------------------------------------------------------------------------------------------
def parse_seeds(text: str | Sequence[int]) -> tuple[int, ...]:
    """"1 2 3" / "1,2,3" / [1, 2] -> (1, 2, 3); ValueError on anything that is not a non-negative int."""
    if isinstance(text, str):
        items = [t for t in re.split(r"[\s,;]+", text.strip()) if t]
    else:
        items = list(text)
    if not items:
        raise ValueError("give at least one seed (e.g. 1 or 1 2 3)")
    seeds = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"seed {item!r} is not an integer")
        if isinstance(item, str) and not re.fullmatch(r"\d+", item):
            raise ValueError(f"seed {item!r} is not a non-negative integer")
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"seed {item!r} is not an integer") from None
        if value < 0 or value != item and not isinstance(item, str):
            raise ValueError(f"seed {item!r} is not a non-negative integer")
        if value not in seeds:
            seeds.append(value)
    if len(seeds) > MAX_SEEDS:
        raise ValueError(f"at most {MAX_SEEDS} seeds per launch, got {len(seeds)}")
    return tuple(seeds)


def parse_setting_lines(text: str | Sequence[str]) -> tuple[str, ...]:
    """KEY=VALUE lines (blank lines and `# comments` ignored) -> tuple of "KEY=VALUE" strings."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    out = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {line!r} is not KEY=VALUE (e.g. train.epochs=5)")
        out.append(f"{key.strip()}={value.strip()}")
    return tuple(out)


def request_from_form(*, method: str, protocol: str, datasets: Sequence[str] | str, shots: int | str,
                      seeds: str | Sequence[int] = "1", backbone: str = "toy", pretrained: str | None = None,
                      device: str | None = None, preset: str | None = None, settings: str | Sequence[str] = "",
                      data_root: str | None = None, name: str | None = None, force: bool = False) -> LaunchRequest:
    """A LaunchRequest from raw form values (strings); raises LaunchError listing every parse problem."""
    errors = []
    try:
        seeds_t = parse_seeds(seeds)
    except ValueError as exc:
        errors.append(str(exc))
        seeds_t = ()
    try:
        settings_t = parse_setting_lines(settings)
    except ValueError as exc:
        errors.append(str(exc))
        settings_t = ()
    try:
        shots_i = int(shots)
    except (TypeError, ValueError):
        errors.append(f"shots must be one of {', '.join(map(str, SHOTS_CHOICES))}, got {shots!r}")
        shots_i = 0
    if errors:
        raise LaunchError(errors)

    def blank_to_none(v):
        return None if v is None or str(v).strip() in ("", "(auto)", "(default)") else str(v).strip()

    ds = (datasets,) if isinstance(datasets, str) else tuple(datasets)
    return LaunchRequest(method=method, protocol=protocol, datasets=ds, shots=shots_i, seeds=seeds_t,
                         backbone=(backbone or "").strip(), pretrained=blank_to_none(pretrained),
                         device=blank_to_none(device), preset=blank_to_none(preset), settings=settings_t,
                         data_root=blank_to_none(data_root), name=blank_to_none(name), force=bool(force))


# ------------------------------------------------------------------------------------------------
# where the app listens
# ------------------------------------------------------------------------------------------------
REMOTE_LAUNCH_ENV = "WORKBENCH_APP_REMOTE_LAUNCH"  # =1: launch from a non-loopback server (behind a proxy)


def loopback_only(address: str | None) -> bool:
    """True when streamlit's `server.address` keeps the server on this machine (unset: every interface)."""
    address = str(address or "").strip()
    if address == "localhost" or address.startswith("unix://"):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def serving_allowed(address: str | None) -> bool:
    """Whether the app may launch runs when served on `address`."""
    return loopback_only(address) or os.environ.get(REMOTE_LAUNCH_ENV) == "1"


# ------------------------------------------------------------------------------------------------
# paths
# ------------------------------------------------------------------------------------------------
def allowed_roots() -> list[Path]:
    """Folders app-launched paths must lie in: `<cache>/models`, `$WORKBENCH_DATA` and each entry of
    `$WORKBENCH_ALLOWED_ROOTS` (os.pathsep-separated), resolved."""
    from workbench.paths import models_dir

    raw = [str(models_dir()), os.environ.get("WORKBENCH_DATA", "")]
    raw += os.environ.get(ALLOWED_ROOTS_ENV, "").split(os.pathsep)
    roots: list[Path] = []
    for item in raw:
        if not item.strip():
            continue
        try:
            root = Path(item.strip()).expanduser().resolve()
        except (OSError, RuntimeError):
            continue
        if root not in roots:
            roots.append(root)
    return roots


def confined_path(value: str, roots: Sequence[Path] | None = None) -> Path | None:
    """`value` resolved (`~`, symlinks, `..`) when it lies in one of `roots`, else None. Says nothing
    about whether the path exists."""
    roots = allowed_roots() if roots is None else roots
    try:
        path = Path(value).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # ~unknownuser, a loop, a NUL byte
        return None
    return path if any(path == r or r in path.parents for r in roots) else None


def _outside(what: str, value: str, roots: Sequence[Path]) -> str:
    return (f"{what} {value!r} is not allowed: paths must be under the configured roots: "
            f"{', '.join(map(str, roots))} (add folders with {ALLOWED_ROOTS_ENV})")


def _known_tags() -> set[str]:
    import open_clip

    return {tag for _, tag in open_clip.list_pretrained()}


def path_errors(req: LaunchRequest) -> list[str]:
    """Problems with the paths of `req` (backbone `local-dir:`, pretrained file, template set, data root)."""
    roots = allowed_roots()
    errors = []
    if req.backbone.startswith(LOCAL_DIR):
        folder = confined_path(req.backbone[len(LOCAL_DIR):], roots)
        if folder is None:
            errors.append(_outside("backbone", req.backbone, roots))
        elif not (folder / "open_clip_config.json").is_file():
            errors.append(f"backbone folder {str(folder)!r} has no open_clip_config.json")
    if req.pretrained is not None:
        # `workbench run` loads an existing file of that name before trying tags: so does this check
        tag = bool(_TAG_RE.match(req.pretrained)) and not os.path.isfile(req.pretrained)
        if not tag:
            weights = confined_path(req.pretrained, roots)
            if weights is None:
                errors.append(_outside("pretrained", req.pretrained, roots))
            elif not weights.is_file():
                errors.append(f"pretrained weights file {str(weights)!r} does not exist")
        elif req.pretrained not in _known_tags():
            errors.append(f"pretrained {req.pretrained!r} is neither a known open_clip tag (e.g. openai) nor a "
                          f"weights file under the configured roots: {', '.join(map(str, roots))}")
    for setting in req.settings:  # a template set names a file in data_manifests/templates
        key, _, value = setting.partition("=")
        if key.strip().endswith("template_set") and value.strip() not in ("", "None", "null"):
            from workbench.data.templates import list_template_sets

            if value.strip() not in list_template_sets():
                errors.append(f"{key.strip()}: unknown template set {value.strip()!r}; known: "
                              f"{', '.join(list_template_sets())}")
    problem = _data_root_error(req, roots)
    return errors + ([problem] if problem else [])


def _data_root_error(req: LaunchRequest, roots: Sequence[Path]) -> str | None:
    if req.data_root is None:
        return None
    folder = confined_path(req.data_root, roots)
    if folder is None:
        return _outside("data root", req.data_root, roots)
    return None if folder.is_dir() else f"data root {req.data_root!r} is not a folder"


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------
def validate(req: LaunchRequest) -> list[str]:
    """Every problem with `req`, as sentences (empty when it can be launched)."""
    from workbench.data import list_manifests, load_manifest
    from workbench.data.manifests import DataRootError
    from workbench.methods import get_method_class, list_methods
    from workbench.protocols import PROTOCOLS
    from workbench.protocols.builder import SpecError, build_specs

    errors: list[str] = []
    methods = list_methods()
    method_ok = req.method in methods
    if not method_ok:
        errors.append(f"unknown method {req.method!r}; available: {', '.join(methods)}")
    if req.protocol not in PROTOCOLS:
        errors.append(f"unknown protocol {req.protocol!r}; available: {', '.join(sorted(PROTOCOLS))}")
    known = list_manifests()
    if not req.datasets:
        errors.append("choose at least one dataset")
    unknown = [d for d in req.datasets if d not in known]
    if unknown:
        errors.append(f"unknown dataset(s) {', '.join(map(repr, unknown))}; available: {', '.join(known)}")
    if len(set(req.datasets)) != len(req.datasets):
        errors.append("a dataset is listed twice")
    if req.protocol in PROTOCOLS and req.datasets:
        problem = PROTOCOLS[req.protocol].dataset_count_error(len(req.datasets))
        if problem:
            errors.append(problem)
    if isinstance(req.shots, bool) or req.shots not in SHOTS_CHOICES:
        errors.append(f"shots must be one of {', '.join(map(str, SHOTS_CHOICES))}, got {req.shots!r}")
    try:
        parse_seeds(list(req.seeds))
    except ValueError as exc:
        errors.append(str(exc))
    if not req.backbone or not _NAME_RE.match(req.backbone):
        errors.append(f"backbone {req.backbone!r} is not a model name ('toy', 'wb-tiny-vit', an open_clip name)")
    if req.pretrained is not None and (not req.pretrained or req.pretrained.startswith("-")
                                       or any(ord(c) < 32 for c in req.pretrained)):
        errors.append(f"pretrained {req.pretrained!r} is not a tag or file name")  # paths: path_errors
    if req.device is not None and not _DEVICE_RE.match(req.device):
        errors.append(f"device {req.device!r} is not cpu, cuda or cuda:N")
    if req.name is not None and (len(req.name) > 200 or any(ord(c) < 32 for c in req.name)):
        errors.append("name must be a single line of at most 200 characters")
    errors += path_errors(req)  # before the builder, which reads a local-dir folder's metadata
    if method_ok:
        cls = get_method_class(req.method)
        if req.preset is not None and req.preset not in cls.presets:
            errors.append(f"{req.method} has no preset {req.preset!r}; presets: {', '.join(sorted(cls.presets))}")
        if req.protocol in PROTOCOLS and not errors:
            try:  # the spec `workbench run` will build: every setting checked by name and type
                build_specs([req.method], req.protocol, [req.datasets], shots=req.shots, seeds=req.seeds or (1,),
                            backbone=req.backbone, pretrained=req.pretrained,
                            presets={req.method: req.preset} if req.preset else None, settings=list(req.settings), strict=True,
                            data_root=req.data_root)
            except (SpecError, ValueError, KeyError) as exc:
                errors.append(f"invalid setting: {exc.args[0] if exc.args else exc}")
    if _data_root_error(req, allowed_roots()) is None and not unknown:  # else reported above
        for name in req.datasets:
            manifest = load_manifest(name)
            if manifest.is_toy:
                continue  # rendered on first use
            try:
                root = manifest.resolve_root(req.data_root)
            except DataRootError:
                errors.append(f"dataset {name!r} needs a data root: fill in the data root (or set WORKBENCH_DATA)")
                continue
            folder = root / manifest.folder
            if not folder.is_dir():
                errors.append(f"dataset {name!r} not found: {folder} does not exist (see `workbench data check`)")
    return errors


# ------------------------------------------------------------------------------------------------
# launching
# ------------------------------------------------------------------------------------------------
def _all_toy(datasets: Sequence[str]) -> bool:
    from workbench.data import load_manifest

    try:
        return all(load_manifest(d).is_toy for d in datasets)
    except KeyError:
        return False


def _child_root(req: LaunchRequest) -> str | None:
    """The `--root` the run command gets: none for toy datasets (an explicit root would hide the
    rendered toy data)."""
    if req.data_root and not _all_toy(req.datasets):
        return str(Path(req.data_root).expanduser().resolve())
    return None


def existing_runs(req: LaunchRequest, registry_root: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Short hashes of the runs of `req` already in the registry, by status: what `--force` resets
    (everything a run wrote is deleted). Validate first."""
    from workbench.paths import runs_dir
    from workbench.protocols.builder import build_specs
    from workbench.runs import Registry

    specs = build_specs([req.method], req.protocol, [req.datasets], shots=req.shots, seeds=req.seeds or (1,),
                        backbone=req.backbone, pretrained=req.pretrained,
                        presets={req.method: req.preset} if req.preset else None, settings=list(req.settings),
                        strict=True, data_root=_child_root(req))
    registry = Registry(Path(registry_root).expanduser() if registry_root is not None else runs_dir())
    out: dict[str, list[str]] = {}
    for spec in specs:
        run = registry.find(spec)
        if run is not None:
            out.setdefault(run.status, []).append(spec.short_hash)
    return out


def build_command(req: LaunchRequest, registry_root: str | os.PathLike) -> list[str]:
    """The argument list of `workbench run` for `req` (validate first). Free-text values use the
    `--option=value` form so that a value can never be read as another option."""
    args = [sys.executable, "-m", "workbench", "run", f"--method={req.method}", f"--protocol={req.protocol}",
            "--dataset", *req.datasets, f"--shots={int(req.shots)}", "--seed", *[str(int(s)) for s in req.seeds],
            f"--backbone={req.backbone}"]
    if req.pretrained:
        args.append(f"--pretrained={req.pretrained}")
    if req.preset:
        args.append(f"--preset={req.preset}")
    if req.device:
        args.append(f"--device={req.device}")
    for setting in req.settings:
        args.append(f"--set={setting}")
    if _child_root(req):
        args.append(f"--root={_child_root(req)}")
    if req.name:
        args.append(f"--name={req.name}")
    if req.force:
        args.append("--force")
    args += [f"--registry={Path(registry_root).expanduser().resolve()}", "--quiet"]
    return args


def launch(req: LaunchRequest, registry_root: str | os.PathLike | None = None, *, env: dict | None = None) -> Launched:
    """Validate `req` and start `workbench run` in the background; raises LaunchError when invalid."""
    from workbench.paths import runs_dir

    errors = validate(req)
    if errors:
        raise LaunchError(errors)
    root = Path(registry_root).expanduser() if registry_root is not None else runs_dir()
    folder = root / LAUNCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{secrets.token_hex(3)}"
    log_path, record_path = folder / f"{stamp}.log", folder / f"{stamp}.json"
    args = build_command(req, root)
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(args)}\n".encode())
        log.flush()
        proc = POPEN(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                     start_new_session=True, close_fds=True, env=child_env)
    _PROCESSES[proc.pid] = proc
    launched = Launched(pid=proc.pid, args=args, log_path=log_path, record_path=record_path)
    record = {"pid": proc.pid, "args": args, "log": str(log_path), "started_at": launched.started_at,
              "request": asdict(req)}
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(record_path)
    return launched


def _pid_state(pid: int) -> tuple[str, int | None]:
    proc = _PROCESSES.get(pid)
    if proc is not None:
        code = proc.poll()
        return ("running", None) if code is None else ("exited", code)
    try:  # started by an earlier app process: is it still alive (and still a workbench run)?
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "ended", None
    return ("running", None) if b"workbench" in cmdline else ("ended", None)


def list_launches(registry_root: str | os.PathLike | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Launch records of a registry, newest first, with `state` (running / exited / ended) and
    `returncode` (known for processes started by this process)."""
    from workbench.paths import runs_dir

    root = Path(registry_root).expanduser() if registry_root is not None else runs_dir()
    out = []
    for path in sorted((root / LAUNCH_DIR).glob("*.json"), reverse=True)[:limit]:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        state, code = _pid_state(int(record.get("pid", -1)))
        record.update(state=state, returncode=code, record=str(path))
        out.append(record)
    return out


def read_log_tail(path: str | os.PathLike, max_chars: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_chars))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
