"""One run folder: its file layout and formats, written atomically under the folder's lock.

    spec.json          the RunSpec (+ its full hash)
    status.json        status, progress, message, error, times, pid, host
    history.jsonl      one JSON object per epoch (epoch, loss, accuracies, learned scalars...)
    metrics.json       final metrics
    predictions.npz    "<split>/labels", "<split>/preds", optional "<split>/logits"
    embeddings.npz     "<key>/image" float16 [n, D], "<key>/labels" [n], "<key>/classnames" [C],
                       optional "<key>/classes" float16 [C, D] (for the app's plots)
    log.txt            free-text log
    checkpoints/epoch_0003.pt   the newest `keep` checkpoints
    .lock              flock held while writing the folder's files (briefly)
    .owner             flock held by the one process executing the run (`RunFiles.own`), pid/host inside

Everything but spec.json is the run's output: `RunFiles.clear` removes it all (status.json is left
for the caller to rewrite).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from workbench.fileio import atomic_write, atomic_write_text, remove_temp_files

try:  # POSIX advisory locks for the per-run files; a no-op elsewhere
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

SPEC, STATUS, HISTORY, METRICS = "spec.json", "status.json", "history.jsonl", "metrics.json"
PREDICTIONS, EMBEDDINGS, LOG, CHECKPOINTS, LOCK = "predictions.npz", "embeddings.npz", "log.txt", "checkpoints", ".lock"
INSPECTION = "inspection.npz"  # arrays a method produces for inspection (Method.inspection_arrays)
OWNER = ".owner"
STATUS_KEYS = ("status", "progress", "message", "error", "created_at", "updated_at", "started_at", "finished_at",
               "pid", "host")
_CKPT_RE = re.compile(r"^epoch_(\d+)\.pt$")


class RegistryError(RuntimeError):
    """A run registry problem with a message that says what to do (no traceback needed)."""


class RunBusyError(RegistryError):
    """Another process owns (is executing) the run."""


class CheckpointError(RegistryError):
    """A checkpoint file that is not a plain state file, or cannot be read."""


# plain types a checkpoint may hold: exactly what torch.load(weights_only=True) reads back
_PLAIN = (dict, list, tuple, set, int, float, bool, str, bytes, complex, type(None))


def check_plain_state(obj: Any, where: str = "state") -> None:
    """TypeError naming the first value `torch.load(weights_only=True)` would refuse (numpy arrays and
    scalars, arbitrary objects): checkpoints hold tensors, dicts, lists, tuples, numbers and strings."""
    import collections

    import torch

    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN + (collections.OrderedDict, torch.Size, torch.dtype,
                                                                 torch.device):
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                check_plain_state(k, f"{where} key")
                check_plain_state(v, f"{where}[{k!r}]")
        elif isinstance(obj, (list, tuple, set)) and not isinstance(obj, torch.Size):
            for i, v in enumerate(obj):
                check_plain_state(v, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint {where} is a {type(obj).__module__}.{type(obj).__name__}: checkpoints hold only "
                    "tensors, dicts, lists, tuples, numbers and strings (store a tensor or a list instead)")


# runs this process owns: lock file path -> [thread id, depth, open file]
_owned: dict[str, list] = {}
_owned_guard = threading.Lock()


def describe_owner(info: Mapping[str, Any] | None) -> str:
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"])) if info.get("since") else "?"
    return f"process {info.get('pid', '?')} on host {info.get('host', '?')} (since {since})"


# -- formats -------------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """Plain-JSON version of values callers hand us (numpy/torch scalars, tuples, paths...).

    Unlike `canonicalize` (used for hashing) this keeps floats as floats and NaN as NaN.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy / torch (scalars and arrays)
        return jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return jsonable(obj.item())
    raise TypeError(f"value of type {type(obj).__name__} is not JSON-serializable: {obj!r}")


def dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(jsonable(obj), **kw)


def parse_history(text: str) -> list[dict]:
    """history.jsonl entries, last one winning per epoch, sorted; torn lines (crash) are skipped."""
    entries: dict[int, dict] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and "epoch" in entry:
            entries[int(entry["epoch"])] = entry
    return [entries[e] for e in sorted(entries)]


def to_numpy(x: Any):
    import numpy as np

    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _read_npz(path: Path) -> dict:
    import numpy as np

    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _grouped(arrays: Mapping[str, Any]) -> dict[str, dict]:
    """{"a/b/labels": x} -> {"a/b": {"labels": x}} (the group is all but the last path part)."""
    out: dict[str, dict] = {}
    for name, value in arrays.items():
        group, _, kind = name.rpartition("/")
        out.setdefault(group, {})[kind] = value
    return out


def load_embeddings(run_dir: str | os.PathLike, key: str) -> dict:
    """What `RunHandle.save_embeddings` stored for one key ({"image", "labels", "classnames"[, "classes"]});
    an empty dict when nothing was."""
    return _grouped(_read_npz(Path(run_dir) / EMBEDDINGS)).get(str(key), {})


def load_inspection(run_dir: str | os.PathLike) -> dict[str, dict]:
    """{key: {array name: array}} stored by `RunFiles.save_inspection`; empty when nothing was."""
    return _grouped(_read_npz(Path(run_dir) / INSPECTION))


def embedding_keys(run_dir: str | os.PathLike) -> list[str]:
    """Keys with stored image embeddings in a run folder (file order)."""
    return [k for k, v in _grouped(_read_npz(Path(run_dir) / EMBEDDINGS)).items() if "image" in v]


# -- the folder ----------------------------------------------------------------------------------
class RunFiles:
    """The files of the run folder `dir`. Writers hold the folder's lock, so a temp file seen under
    the lock is a dead writer's leftover."""

    def __init__(self, dir: str | os.PathLike):
        self.dir = Path(dir)

    def __repr__(self) -> str:
        return f"RunFiles({str(self.dir)!r})"

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / CHECKPOINTS

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock on the folder's files (flock; not re-entrant)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.dir / LOCK, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def owner(self) -> dict | None:
        """pid/host/since written by the process that owns the run now or owned it last (None if unknown)."""
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(self.path(OWNER).read_text(encoding="utf-8") or "null")
            return info if isinstance(info, dict) else None
        return None

    @contextlib.contextmanager
    def own(self, wait: float | None = 0.0, echo: Callable[[str], Any] | None = None,
            poll: float = 0.2) -> Iterator[None]:
        """Hold the run for this process: an exclusive flock on `.owner`, kept for the whole block.

        `wait` seconds (None: as long as it takes) for another owner to finish, saying once through
        `echo` who holds it; then `RunBusyError`. The lock dies with its process, so a killed owner
        leaves nothing to clean up. Re-entrant in one thread; other threads wait like other processes.
        """
        path = self.path(OWNER)
        key, me = os.path.abspath(path), threading.get_ident()
        with _owned_guard:
            held = _owned.get(key)
            if held is not None and held[0] == me:
                held[1] += 1
                reentered = True
            else:
                reentered = False
        if reentered:
            try:
                yield
            finally:
                with _owned_guard:
                    _owned[key][1] -= 1
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8")
        try:
            if fcntl is not None:
                deadline = None if wait is None else time.monotonic() + max(float(wait), 0.0)
                told = False
                while True:
                    try:
                        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        holder = describe_owner(self.owner())
                        if deadline is not None and time.monotonic() >= deadline:
                            waited = f" after waiting {wait:g} s" if wait else ""
                            raise RunBusyError(f"run {self.dir.name} is being run by {holder}{waited}; wait for it "
                                               "to finish (the same command then reuses its result) or stop that "
                                               "process (the same command then resumes it)") from None
                        if echo is not None and not told:
                            limit = "" if deadline is None else f" up to {wait:g} s"
                            echo(f"run {self.dir.name} is being run by {holder}; waiting{limit} for it")
                            told = True
                        time.sleep(poll)
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
            f.flush()
            with _owned_guard:
                _owned[key] = [me, 0, f]
            try:
                self.remove_temp_files()  # we own the run: any temp file is a dead writer's
                yield
            finally:
                with _owned_guard:
                    _owned.pop(key, None)
        finally:
            f.close()  # releases the flock

    def remove_temp_files(self) -> None:
        """Delete temp files of dead writers in the folder and in checkpoints/ (call as the run's owner)."""
        with self.lock():
            remove_temp_files(self.dir)
        remove_temp_files(self.checkpoint_dir)

    def create(self, spec_dict: dict, rename: bool = False) -> None:
        """The folder, its checkpoints/ and spec.json when missing; with `rename`, spec.json is also
        rewritten when its "name" differs from a non-None name in `spec_dict`."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.path(SPEC)
        with self.lock():
            if path.exists():
                name = spec_dict.get("name")
                if not rename or name is None or json.loads(path.read_text(encoding="utf-8")).get("name") == name:
                    return
            atomic_write_text(path, dumps(spec_dict, indent=2, sort_keys=True))

    def read_json(self, name: str) -> Any:
        """A JSON file of the folder, or None when it is missing or unreadable."""
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            return json.loads(self.path(name).read_text(encoding="utf-8"))
        return None

    # -- status / metrics / history ---------------------------------------------------------------
    def write_status(self, row: Mapping[str, Any]) -> None:
        with self.lock():
            atomic_write_text(self.path(STATUS), json.dumps({k: row.get(k) for k in STATUS_KEYS}, indent=2))

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        with self.lock():
            atomic_write_text(self.path(METRICS), json.dumps(metrics, indent=2, sort_keys=True))

    def read_history(self) -> list[dict]:
        """Entries of history.jsonl; for a repeated epoch the last entry wins; sorted by epoch."""
        try:
            return parse_history(self.path(HISTORY).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []

    def write_history_entry(self, entry: Mapping[str, Any]) -> None:
        """Append `entry` (a dict with "epoch"); a re-logged epoch or a torn line rewrites the file."""
        epoch = int(entry["epoch"])
        path = self.path(HISTORY)
        with self.lock():
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                text = ""
            existing = parse_history(text)
            lines = [ln for ln in text.splitlines() if ln.strip()]
            clean = (not text or text.endswith("\n")) and len(lines) == len(existing)
            if clean and all(e["epoch"] != epoch for e in existing):
                with open(path, "a", encoding="utf-8") as f:  # common case: a new epoch, append
                    f.write(json.dumps(entry) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            else:  # re-logged epoch (resume) or a torn line from a crash: rewrite atomically
                merged = {e["epoch"]: e for e in existing}
                merged[epoch] = dict(entry)
                atomic_write_text(path, "".join(json.dumps(merged[e]) + "\n" for e in sorted(merged)))

    # -- arrays: predictions, embeddings ------------------------------------------------------------
    def _merge_npz(self, name: str, group: str, arrays: Mapping[str, Any], compressed: bool) -> None:
        """Replace the arrays of `group` in npz file `name`, keeping the other groups."""
        import numpy as np

        path = self.path(name)
        with self.lock():
            merged = {k: v for k, v in _read_npz(path).items() if k.rpartition("/")[0] != group}
            merged.update({f"{group}/{k}": v for k, v in arrays.items()})
            save = np.savez_compressed if compressed else np.savez
            atomic_write(path, lambda f: save(f, **merged))

    def save_predictions(self, split: str, labels: Any, preds: Any, logits: Any = None) -> None:
        split = str(split)
        if not split:
            raise ValueError("split name must be non-empty")
        arrays = {"labels": to_numpy(labels), "preds": to_numpy(preds)}
        if logits is not None:
            arrays["logits"] = to_numpy(logits)
        if arrays["labels"].shape[0] != arrays["preds"].shape[0]:
            raise ValueError("labels and preds differ in length")
        self._merge_npz(PREDICTIONS, split, arrays, compressed=True)

    def load_predictions(self) -> dict[str, dict]:
        return _grouped(_read_npz(self.path(PREDICTIONS)))

    def save_embeddings(self, key: str, image: Any, labels: Any, classnames: Any, classes: Any = None) -> None:
        import numpy as np

        key = str(key)
        if not key:
            raise ValueError("embedding key must be non-empty")
        image = to_numpy(image).astype(np.float16)
        arrays = {"image": image, "labels": to_numpy(labels)[: len(image)],
                  "classnames": np.array([str(c) for c in classnames])}
        if classes is not None:
            arrays["classes"] = to_numpy(classes).astype(np.float16)
        self._merge_npz(EMBEDDINGS, key, arrays, compressed=False)

    def save_inspection(self, key: str, arrays: Mapping[str, Any]) -> None:
        """Arrays a method produced for inspection on some images of split `key` (float16)."""
        import numpy as np

        if not str(key) or not arrays:
            raise ValueError("inspection arrays need a non-empty key and at least one array")
        self._merge_npz(INSPECTION, str(key), {k: to_numpy(v).astype(np.float16) for k, v in arrays.items()},
                        compressed=True)

    # -- log --------------------------------------------------------------------------------------
    def append_log(self, msg: str) -> None:
        """Append timestamped line(s) to log.txt."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = "".join(f"[{stamp}] {line}\n" for line in str(msg).rstrip("\n").splitlines() or [""])
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.path(LOG), "a", encoding="utf-8") as f:
            f.write(text)

    def read_log(self) -> str:
        try:
            return self.path(LOG).read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    # -- checkpoints (one writer per run, so no lock) ----------------------------------------------
    def checkpoint_path(self, epoch: int) -> Path:
        return self.checkpoint_dir / f"epoch_{int(epoch):04d}.pt"

    def load_checkpoint(self, path: Path, map_location: Any = "cpu") -> dict:
        """A checkpoint's payload ({"epoch", "state", ...}), read with torch.load(weights_only=True):
        tensors and plain values only, never code. Anything else raises `CheckpointError`."""
        import pickle

        import torch

        hint = "delete it to restart the run from scratch (or from an older checkpoint, if any)"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch's note on foreign pickle protocols
                payload = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            boiler = ("Weights only load failed", "Please file an issue", "Check the documentation")
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith(boiler)]
            detail = lines[-1] if lines else "refused by the weights-only unpickler"
            raise CheckpointError(f"checkpoint {path} is not a plain state file ({detail[:200]}); {hint}") from exc
        except (EOFError, RuntimeError, ValueError, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); "
                                  f"{hint}") from exc
        if not isinstance(payload, dict) or "epoch" not in payload or "state" not in payload:
            raise CheckpointError(f"checkpoint {path} is not a plain state file (no epoch/state); {hint}")
        return payload

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(epoch, path) of the complete checkpoints, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = []
        for p in self.checkpoint_dir.iterdir():
            m = _CKPT_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save_checkpoint(self, payload: Any, epoch: int, keep: int) -> Path:
        """torch.save `payload` atomically as epoch_<epoch>.pt; keeps the newest `keep` (all if keep <= 0)."""
        import torch

        check_plain_state(payload, "payload")
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        remove_temp_files(self.checkpoint_dir)  # leftovers of killed writers
        final = atomic_write(self.checkpoint_path(epoch), lambda f: torch.save(payload, f))
        if keep > 0:
            for _, old in self.checkpoints()[:-keep]:
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()
        return final

    def clear_checkpoints(self) -> None:
        if self.checkpoint_dir.is_dir():
            for p in self.checkpoint_dir.iterdir():
                _remove(p)

    # -- reset ------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Remove everything the run wrote but spec.json and status.json (the caller rewrites it),
        stray temp files included; checkpoints/ is emptied."""
        with self.lock():
            if self.dir.is_dir():
                for p in self.dir.iterdir():
                    if p.name not in (SPEC, STATUS, LOCK, OWNER, CHECKPOINTS):
                        _remove(p)
        self.clear_checkpoints()


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
