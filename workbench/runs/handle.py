"""One run: its state in the index (status, progress, metrics, history) and its artifacts in its folder."""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from workbench.fileio import DiskFullError, is_disk_full
from workbench.runs.files import (CheckpointError, RegistryError, RunBusyError, RunFiles, check_plain_state,
                                  jsonable, load_embeddings)
from workbench.runs.spec import RunSpec

if TYPE_CHECKING:
    from workbench.runs.index import Registry

STATUSES = ("pending", "running", "done", "failed", "interrupted")
OWNER_WAIT_S = 60.0  # how long `owned()` waits by default for another process executing the run
RESUME_HINT = "free space and re-run; the run resumes from its last checkpoint"

__all__ = ["CheckpointError", "OWNER_WAIT_S", "RegistryError", "RunBusyError", "RunHandle", "STATUSES",
           "Terminated"]


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while a run was running (treated like Ctrl-C: the run becomes interrupted)."""


def _raise_terminated(signum, frame):
    raise Terminated("stopped by SIGTERM")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class RunHandle:
    """One run: its folder, spec, status, history, metrics, predictions, embeddings, log and checkpoints."""

    def __init__(self, registry: "Registry", hash: str, spec: RunSpec | None = None):
        self.registry = registry
        self.hash = hash
        self.short_hash = hash[:12]
        self.dir = registry.root / self.short_hash
        self.files = RunFiles(self.dir)
        self._spec = spec

    def __repr__(self) -> str:
        return f"RunHandle({self.short_hash}, {self.spec.display_name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunHandle) and other.hash == self.hash and other.registry.root == self.registry.root

    def __hash__(self) -> int:
        return hash((self.hash, str(self.registry.root)))

    # -- identity / state -----------------------------------------------------------------------
    @property
    def spec(self) -> RunSpec:
        if self._spec is None:
            rows = self.registry._read("SELECT spec_json FROM runs WHERE hash = ?", (self.hash,))
            if not rows:
                raise KeyError(f"run {self.short_hash} is not in the index")
            self._spec = RunSpec.from_dict(json.loads(rows[0]["spec_json"]))
        return self._spec

    @property
    def name(self) -> str:
        return self.info()["name"] or self.spec.display_name

    def info(self) -> dict:
        """The index row as a dict (status, progress, message, error, times, metrics...)."""
        rows = self.registry._read("SELECT * FROM runs WHERE hash = ?", (self.hash,))
        if not rows:
            raise KeyError(f"run {self.short_hash} is not in the index")
        d = dict(rows[0])
        d["datasets"] = json.loads(d["datasets"])
        d["metrics"] = json.loads(d.pop("metrics_json")) if d.get("metrics_json") else {}
        d.pop("spec_json")
        return d

    @property
    def status(self) -> str:
        return self.info()["status"]

    @property
    def is_done(self) -> bool:
        return self.status == "done"

    @property
    def progress(self) -> float:
        return float(self.info()["progress"])

    @property
    def metrics(self) -> dict:
        return self.info()["metrics"]

    def history(self):
        """This run's history DataFrame (see `Registry.history`)."""
        return self.registry.history(self)

    @property
    def checkpoint_dir(self) -> Path:
        return self.files.checkpoint_dir

    # -- index plumbing -------------------------------------------------------------------------
    def _file_lock(self):
        return self.files.lock()

    def _write_status_file(self, row: dict | None = None) -> None:
        self.files.write_status(row if row is not None else self.info())

    def _read_history_file(self) -> list[dict]:
        return self.files.read_history()

    def _update(self, **fields: Any) -> dict:
        """Update index columns (plus updated_at) in one transaction; returns the new row."""
        fields["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)

        def tx(conn: sqlite3.Connection) -> dict:
            cur = conn.execute(f"UPDATE runs SET {sets} WHERE hash = ?", (*fields.values(), self.hash))
            if cur.rowcount != 1:
                raise KeyError(f"run {self.short_hash} is not in the index")
            return dict(conn.execute("SELECT * FROM runs WHERE hash = ?", (self.hash,)).fetchone())

        return self.registry._write(tx)

    # -- status / progress ----------------------------------------------------------------------
    def set_status(self, status: str, error: str | BaseException | None = None) -> None:
        """pending | running | done | failed | interrupted. `error` (text or exception) is kept for failed runs."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {STATUSES}")
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        now = time.time()
        fields: dict[str, Any] = {"status": status, "error": error, "pid": os.getpid(), "host": socket.gethostname()}
        if status == "running":
            fields["started_at"] = now
            fields["finished_at"] = None
        elif status == "done":
            fields["finished_at"] = now
            fields["progress"] = 1.0
        elif status in ("failed", "interrupted"):
            fields["finished_at"] = now
        elif status == "pending":
            fields["started_at"] = None
            fields["finished_at"] = None
        row = self._update(**fields)
        self._write_status_file(row)
        self.log(f"status -> {status}" + (f" ({error})" if error else ""))

    def set_progress(self, fraction: float, message: str = "") -> None:
        """Live progress (0..1) and a short message, for the app; cheap enough to call per epoch or step."""
        fraction = float(fraction)
        if math.isnan(fraction):
            raise ValueError("progress must be a number in [0, 1]")
        row = self._update(progress=min(max(fraction, 0.0), 1.0), message=str(message))
        self._write_status_file(row)

    def owned(self, wait: float | None = OWNER_WAIT_S, echo: Callable[[str], Any] | None = _stderr):
        """`with run.owned():` this process alone executes the run (flock on the folder's `.owner`).

        Another owner is waited for up to `wait` seconds (None: as long as it takes; 0: not at all),
        saying once through `echo` who it is; then `RunBusyError` says who holds the run. A dead
        owner's lock is gone with its process. Temp files of dead writers are removed on entry."""
        return self.files.own(wait=wait, echo=echo)

    def owner(self) -> dict | None:
        """pid / host / since of the process that owns the run now, or owned it last."""
        return self.files.owner()

    @contextlib.contextmanager
    def running(self) -> Iterator["RunHandle"]:
        """`with run.running():` marks the run running, then done on success, interrupted on
        KeyboardInterrupt or SIGTERM (main thread only; `Terminated` is raised), failed (traceback
        in log.txt) on any other exception, which is re-raised. A full disk fails the run (when the
        index can still be written) and raises `DiskFullError` saying what to do."""
        self.set_status("running")
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
        try:
            yield self
        except KeyboardInterrupt as exc:
            if isinstance(exc, Terminated):
                self.set_status("interrupted", "stopped by SIGTERM; run the same command again to resume from "
                                               "the last checkpoint")
            else:
                self.set_status("interrupted")
            raise
        except BaseException as exc:
            if not is_disk_full(exc):
                self.log(traceback.format_exc())
                self.set_status("failed", error=exc)
                raise
            where = exc.where if isinstance(exc, DiskFullError) else self.dir
            full = DiskFullError(where, RESUME_HINT)
            with contextlib.suppress(Exception):  # best effort: the index may sit on the full disk too
                self.log(traceback.format_exc())
            with contextlib.suppress(Exception):
                self.set_status("failed", error=full)
            raise full from exc
        else:
            self.set_status("done")
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    # -- history / metrics ----------------------------------------------------------------------
    def log_epoch(self, epoch: int, values: Mapping[str, Any]) -> None:
        """Record one epoch (loss, accuracies, any learned scalars...). Re-logging an epoch replaces it."""
        epoch = int(epoch)
        values = {str(k): v for k, v in jsonable(dict(values)).items() if k != "epoch"}

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO history (hash, epoch, values_json, logged_at) VALUES (?,?,?,?)"
                " ON CONFLICT(hash, epoch) DO UPDATE SET values_json = excluded.values_json,"
                " logged_at = excluded.logged_at",
                (self.hash, epoch, json.dumps(values), time.time()),
            )
            conn.execute("UPDATE runs SET updated_at = ? WHERE hash = ?", (time.time(), self.hash))

        self.registry._write(tx)
        self.files.write_history_entry({"epoch": epoch, **values})

    def write_metrics(self, metrics: Mapping[str, Any], merge: bool = False) -> None:
        """Final metrics (nested dicts allowed). `merge=True` updates the existing top-level keys."""
        metrics = jsonable(dict(metrics))
        if merge:
            metrics = {**self.metrics, **metrics}
        self._update(metrics_json=json.dumps(metrics))
        self.files.write_metrics(metrics)

    # -- artifacts: predictions, embeddings, log ----------------------------------------------------
    def save_predictions(self, split: str, labels: Any, preds: Any, logits: Any = None) -> None:
        """Store labels/predictions (and optional logits) of one split in predictions.npz (other splits kept)."""
        self.files.save_predictions(split, labels, preds, logits)

    def load_predictions(self, split: str | None = None) -> dict:
        """{split: {"labels", "preds"[, "logits"]}} for all splits, or the inner dict for one split."""
        out = self.files.load_predictions()
        if split is not None:
            if split not in out:
                raise KeyError(f"run {self.short_hash} has no predictions for split {split!r}")
            return out[split]
        return out

    def save_embeddings(self, key: str, image: Any, labels: Any, classnames: Any, classes: Any = None) -> None:
        """Store plot embeddings of one evaluated split in embeddings.npz (other keys kept): image
        embeddings [n, D] (float16), their labels (cut to n), the class names and optional class
        embeddings [C, D] (float16)."""
        self.files.save_embeddings(key, image, labels, classnames, classes)

    def load_embeddings(self, key: str) -> dict:
        """{"image", "labels", "classnames"[, "classes"]} stored for `key`; empty when nothing was."""
        return load_embeddings(self.dir, key)

    def log(self, msg: str) -> None:
        """Append a timestamped line (or lines) to log.txt."""
        self.files.append_log(msg)

    def read_log(self) -> str:
        return self.files.read_log()

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, state: dict, epoch: int, keep: int = 2) -> Path:
        """torch.save `state` as checkpoints/epoch_<epoch>.pt atomically (temp file, fsync, os.replace);
        keeps the newest `keep` checkpoints. A killed writer leaves at most a stray temp file, never a
        partial checkpoint. `state` holds tensors and plain values only (TypeError otherwise: numpy
        arrays too), as `load_checkpoint` reads them back with weights_only=True."""
        epoch = int(epoch)
        check_plain_state(state)
        payload = {"epoch": epoch, "run_hash": self.hash, "saved_at": time.time(), "state": state}
        return self.files.save_checkpoint(payload, epoch, keep)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        """(epoch, path) of the newest complete checkpoint, or None."""
        found = self.files.checkpoints()
        return found[-1] if found else None

    def load_checkpoint(self, map_location: Any = "cpu", epoch: int | None = None) -> tuple[int, dict] | None:
        """(epoch, state) of the newest checkpoint (or of `epoch`), or None when there is none.

        Loaded with torch.load(weights_only=True): tensors and plain values only, so a file planted in
        checkpoints/ cannot run code; anything else raises `CheckpointError` (delete the file).
        """
        if epoch is None:
            latest = self.latest_checkpoint()
            if latest is None:
                return None
            path = latest[1]
        else:
            path = self.files.checkpoint_path(epoch)
            if not path.exists():
                return None
        payload = self.files.load_checkpoint(path, map_location)
        return int(payload["epoch"]), payload["state"]

    def clear_checkpoints(self) -> None:
        self.files.clear_checkpoints()

    # -- reset ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to pending, forgetting the old run: metrics, history, predictions, embeddings,
        checkpoints, log and any other file it wrote are removed; folder and spec kept."""

        def tx(conn: sqlite3.Connection) -> dict:
            conn.execute("DELETE FROM history WHERE hash = ?", (self.hash,))
            conn.execute(
                "UPDATE runs SET status='pending', progress=0, message='', error=NULL, metrics_json=NULL,"
                " started_at=NULL, finished_at=NULL, updated_at=? WHERE hash = ?",
                (time.time(), self.hash),
            )
            return dict(conn.execute("SELECT * FROM runs WHERE hash = ?", (self.hash,)).fetchone())

        row = self.registry._write(tx)
        self.files.clear()
        self._write_status_file(row)
        self.log("reset (force): metrics, history, predictions, embeddings, checkpoints and log of the previous "
                 "run removed")
