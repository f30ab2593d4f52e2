"""The run index: one SQLite database (WAL) over the run folders of a registry root.

Layout under the registry root (`workbench.paths.runs_dir()` unless given)::

    registry.sqlite   index: one row per run, one row per (run, epoch) of history
    <short_hash>/     one folder per run (see `workbench.runs.files`)

Everything a notebook or the app needs is in the index (`Registry.list`, `Registry.history`); the
folders mirror it so a run folder is self-describing and `Registry.rebuild_index()` can recreate the
index from the folders. Many processes may use one registry at once: every write is one short
`BEGIN IMMEDIATE` transaction on its own connection, retried with backoff while the database is busy.
One run is executed by one process at a time (`RunHandle.owned`).

A damaged index raises `IndexDamagedError` (`workbench runs reindex` moves it aside and rebuilds it
from the folders); an empty or missing index beside run folders is rebuilt at once. A registry that
cannot be written is opened read-only (`Registry.read_only`; writes raise `RegistryReadOnlyError`).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from workbench.fileio import DiskFullError, atomic_write
from workbench.paths import runs_dir
from workbench.runs.files import METRICS, SPEC, STATUS, RegistryError, RunFiles, dumps
from workbench.runs.handle import STATUSES, RunHandle
from workbench.runs.spec import RunSpec

_sysrand = random.SystemRandom()  # never touch the global RNG: training code checkpoints its state

DB_NAME = "registry.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0  # sqlite's own busy handler, per statement
RETRY_DEADLINE_S = 120.0  # our retry loop on top of it, per transaction

RUN_COLUMNS = [
    "hash", "short_hash", "name", "method", "protocol", "datasets", "source", "shots", "seed",
    "backbone", "pretrained", "status", "progress", "message", "error", "epochs",
    "created_at", "updated_at", "started_at", "finished_at", "preset", "method_config", "train_config",
    "protocol_settings", "versions", "stale", "dir",
]
# columns `Registry.list` accepts as filters (value, or a list/tuple/set of values, or None)
FILTER_COLUMNS = {
    "hash", "short_hash", "name", "method", "protocol", "source", "shots", "seed", "backbone",
    "pretrained", "status",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    hash        TEXT PRIMARY KEY,
    short_hash  TEXT NOT NULL UNIQUE,
    name        TEXT,
    method      TEXT NOT NULL,
    protocol    TEXT NOT NULL,
    datasets    TEXT NOT NULL,       -- JSON list, source first
    source      TEXT NOT NULL,
    shots       INTEGER,
    seed        INTEGER NOT NULL,
    backbone    TEXT NOT NULL,
    pretrained  TEXT,
    spec_json   TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending',
    progress    REAL NOT NULL DEFAULT 0,
    message     TEXT NOT NULL DEFAULT '',
    error       TEXT,
    metrics_json TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    pid         INTEGER,
    host        TEXT
);
CREATE INDEX IF NOT EXISTS runs_method ON runs(method);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE TABLE IF NOT EXISTS history (
    hash        TEXT NOT NULL REFERENCES runs(hash) ON DELETE CASCADE,
    epoch       INTEGER NOT NULL,
    values_json TEXT NOT NULL,
    logged_at   REAL NOT NULL,
    PRIMARY KEY (hash, epoch)
);
"""

T = TypeVar("T")
EXPORT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
LOW_SPACE_BYTES = 16 << 20  # "disk I/O error" with less free space than this is a full disk


class IndexDamagedError(RegistryError):
    """registry.sqlite cannot be read (truncated, overwritten, not a database)."""

    def __init__(self, db_path: Path, detail: str):
        self.db_path = db_path
        super().__init__(f"the run index at {db_path} is damaged ({detail}): run `workbench runs reindex "
                         f"--registry {db_path.parent}` to rebuild it from the run folders")


class RegistryReadOnlyError(RegistryError):
    """A write to a registry that could only be opened read-only."""


class RegistryNotFoundError(RegistryError):
    """No registry (index or run folders) at the given root."""


def _damage(exc: sqlite3.DatabaseError) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    msg = str(exc).lower()
    return (name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
            or any(m in msg for m in ("malformed", "not a database", "file is encrypted")))


def _readonly(exc: sqlite3.DatabaseError) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    msg = str(exc).lower()
    return name.startswith("SQLITE_READONLY") or "readonly" in msg or "read-only" in msg


def _now() -> float:
    return time.time()


def _flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key, sep))
        else:
            out[key] = v
    return out


def _preset_of(spec: dict) -> str | None:
    preset = spec.get("preset", (spec.get("method_config") or {}).get("preset"))
    return preset if isinstance(preset, str) else None


def _method_config_of(spec: dict) -> dict:
    return {k: v for k, v in (spec.get("method_config") or {}).items() if not ("overrides" in spec and k == "preset")}


def _train_config_of(spec: dict) -> dict:
    if "overrides" in spec:  # legacy spec: only the training settings given over the preset
        return {k.removeprefix("train."): v for k, v in (spec.get("overrides") or {}).items()}
    return spec.get("train_config", {})


def _stale(spec: dict) -> str:
    """Why a stored run would not be reused today ("" when it would): `protocols.builder.stale_reason`."""
    from workbench.protocols.builder import stale_reason

    try:
        return stale_reason(RunSpec.from_dict(spec)) or ""
    except (KeyError, ValueError, TypeError) as exc:
        return f"unreadable spec ({exc})"


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Registry:
    """Index of runs under `root` (default `workbench.paths.runs_dir()`)."""

    def __init__(self, root: str | os.PathLike | None = None, *, create: bool = True):
        """`create=False` (read commands): `RegistryNotFoundError` instead of making a new registry
        where there is neither an index nor a run folder."""
        self.root = Path(root).expanduser() if root is not None else runs_dir()
        self.db_path = self.root / DB_NAME
        self.read_only, self._ro_uri = False, None
        self.rebuilt: int | None = None  # runs re-indexed on opening (the index was empty or missing)
        if not create and not (self.db_path.exists() or self._has_run_folders()):
            raise RegistryNotFoundError(f"no registry at {self.root}" + ("" if self.root.is_dir() else
                                        " (no such folder)") + ": check --registry (or $WORKBENCH_RUNS)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if not self.root.is_dir():
                raise RegistryReadOnlyError(f"cannot create the run registry at {self.root}: {exc}") from exc
        self._init_db()

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # -- database plumbing ----------------------------------------------------------------------
    def _has_run_folders(self) -> bool:
        return self.root.is_dir() and any(self.root.glob("*/spec.json"))

    def _connect(self, uri: str | None = None) -> sqlite3.Connection:
        uri = uri or self._ro_uri
        if uri:
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        else:
            conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if not uri:
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _translate(self, exc: sqlite3.Error) -> BaseException:
        """The error to raise for a sqlite error: damaged index, read-only registry, full disk, or itself."""
        if isinstance(exc, sqlite3.DatabaseError) and _damage(exc):
            return IndexDamagedError(self.db_path, str(exc))
        if isinstance(exc, sqlite3.DatabaseError) and _readonly(exc):
            return self._readonly_error(str(exc))
        msg = str(exc).lower()
        if "database or disk is full" in msg:
            return DiskFullError(self.root, "free space and re-run; a run resumes from its last checkpoint")
        if "disk i/o error" in msg:
            with contextlib.suppress(OSError):
                if shutil.disk_usage(self.root).free < LOW_SPACE_BYTES:
                    return DiskFullError(self.root, "free space and re-run; a run resumes from its last checkpoint")
        return exc

    def _readonly_error(self, detail: str = "") -> RegistryReadOnlyError:
        detail = f" ({detail})" if detail else ""
        return RegistryReadOnlyError(f"the run registry at {self.root} is read-only{detail}: writing is disabled "
                                     "(list, show and export work; run where it can be written)")

    def _retry(self, fn: Callable[[], T]) -> T:
        deadline = _now() + RETRY_DEADLINE_S
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.Error as exc:
                if not (isinstance(exc, sqlite3.OperationalError) and _is_lock_error(exc)) or _now() > deadline:
                    translated = self._translate(exc)
                    if translated is exc:
                        raise
                    raise translated from exc
            time.sleep(delay * (0.5 + _sysrand.random()))
            delay = min(delay * 2, 0.5)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` inside one `BEGIN IMMEDIATE` transaction, retrying while locked."""
        if self.read_only:
            raise self._readonly_error()

        def attempt() -> T:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                    return result
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
            finally:
                conn.close()

        return self._retry(attempt)

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        def attempt() -> list[sqlite3.Row]:
            conn = self._connect()
            try:
                return conn.execute(sql, tuple(params)).fetchall()
            finally:
                conn.close()

        return self._retry(attempt)

    def _init_db(self) -> None:
        empty = not self.db_path.exists() or self.db_path.stat().st_size == 0
        try:
            created = self._init_rw()
        except RegistryReadOnlyError:
            self._open_read_only()
            return
        except sqlite3.OperationalError as exc:  # "unable to open database file": e.g. a read-only folder
            if "unable to open" not in str(exc).lower():
                raise
            self._open_read_only(exc)
            return
        if created and empty and self._has_run_folders():  # index lost or 0 bytes beside run folders
            self.rebuilt = self.rebuild_index()

    def _open_read_only(self, cause: BaseException | None = None) -> None:
        """Switch to a read-only connection (`mode=ro`; `immutable=1` when WAL files cannot be made)."""
        if not self.db_path.exists() or self.db_path.stat().st_size == 0:
            hint = ("; run `workbench runs reindex` where it can be written" if self._has_run_folders() else "")
            raise RegistryReadOnlyError(f"the run registry at {self.root} is read-only and has no index{hint}") \
                from cause
        path = urllib.parse.quote(str(self.db_path.resolve()))
        last: sqlite3.Error | None = None
        for uri in (f"file:{path}?mode=ro", f"file:{path}?mode=ro&immutable=1"):
            try:
                conn = self._connect(uri)
                try:
                    version = conn.execute("PRAGMA user_version").fetchone()[0]
                    conn.execute("SELECT COUNT(*) FROM runs").fetchone()
                finally:
                    conn.close()
            except sqlite3.DatabaseError as exc:
                if _damage(exc):
                    raise IndexDamagedError(self.db_path, str(exc)) from exc
                last = exc
                continue
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.db_path} has schema v{version}, newer than this workbench (v{SCHEMA_VERSION})")
            self._ro_uri, self.read_only = uri, True
            return
        raise self._readonly_error(f"cannot open it read-only either: {last}") from last

    def _init_rw(self) -> bool:
        """WAL mode and schema; True when the schema was created just now."""
        def set_wal() -> None:
            conn = self._connect()
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.OperationalError(f"database is locked (journal_mode={mode})")
            finally:
                conn.close()

        self._retry(set_wal)

        def create(conn: sqlite3.Connection) -> bool:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.db_path} has schema v{version}, newer than this workbench (v{SCHEMA_VERSION})")
            if version < SCHEMA_VERSION:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return version == 0

        return self._write(create)

    def integrity_check(self) -> str:
        """`PRAGMA integrity_check` result ("ok" when healthy)."""
        return "; ".join(str(r[0]) for r in self._read("PRAGMA integrity_check"))

    # -- creating / finding runs ----------------------------------------------------------------
    def run_dir(self, spec_or_hash: RunSpec | str) -> Path:
        h = spec_or_hash.hash if isinstance(spec_or_hash, RunSpec) else spec_or_hash
        return self.root / h[:12]

    def create_or_get(self, spec: RunSpec) -> "RunHandle":
        """The run for `spec`, created (status pending) if new. Idempotent and safe to race.

        If `spec.name` is set and differs from the stored name, the stored name is updated.
        """
        if self.read_only:
            raise self._readonly_error()
        h, short = spec.hash, spec.short_hash
        files, spec_dict = RunFiles(self.root / short), {**spec.to_dict(), "hash": h}
        files.create(spec_dict)
        now = _now()

        def tx(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT hash, name FROM runs WHERE short_hash = ?", (short,)).fetchone()
            if row is not None:
                if row["hash"] != h:
                    raise RuntimeError(f"short hash collision: {short} is {row['hash']}, not {h}")
                if spec.name is not None and row["name"] != spec.name:
                    conn.execute("UPDATE runs SET name = ?, updated_at = ? WHERE hash = ?", (spec.name, now, h))
                return False
            conn.execute(
                "INSERT INTO runs (hash, short_hash, name, method, protocol, datasets, source, shots, seed,"
                " backbone, pretrained, spec_json, status, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,'pending',?,?)",
                (h, short, spec.name, spec.method, spec.protocol, json.dumps(list(spec.datasets)), spec.source,
                 spec.shots, spec.seed, spec.backbone, spec.pretrained, dumps(spec.to_dict(), sort_keys=True),
                 now, now),
            )
            return True

        created = self._write(tx)
        handle = RunHandle(self, h, spec)
        if created:
            handle._write_status_file()
        if spec.name is not None:  # keep spec.json's display name in step with the index
            files.create(spec_dict, rename=True)
        return handle

    def _resolve(self, hash_or_prefix: str) -> str:
        key = str(hash_or_prefix).strip().lower()
        if not key or not re.fullmatch(r"[0-9a-f]+", key):
            raise KeyError(f"not a run hash: {hash_or_prefix!r}")
        rows = self._read("SELECT hash FROM runs WHERE hash LIKE ? ORDER BY hash", (key + "%",))
        if not rows:
            raise KeyError(f"no run with hash {hash_or_prefix!r} in {self.root}")
        if len(rows) > 1:
            shown = ", ".join(r["hash"][:12] for r in rows[:5])
            raise KeyError(f"hash prefix {hash_or_prefix!r} is ambiguous ({len(rows)} runs: {shown}...)")
        return rows[0]["hash"]

    def get(self, hash_or_prefix: "str | RunHandle | RunSpec") -> "RunHandle":
        """The run with this full hash or unique hash prefix (KeyError if none or ambiguous)."""
        if isinstance(hash_or_prefix, RunHandle):
            return hash_or_prefix
        if isinstance(hash_or_prefix, RunSpec):
            run = self.find(hash_or_prefix)
            if run is None:
                raise KeyError(f"no run for spec {hash_or_prefix.short_hash} in {self.root}")
            return run
        h = self._resolve(hash_or_prefix)
        return RunHandle(self, h)

    def find(self, spec: RunSpec) -> "RunHandle | None":
        rows = self._read("SELECT hash FROM runs WHERE hash = ?", (spec.hash,))
        return RunHandle(self, spec.hash, spec) if rows else None

    def should_run(self, spec: RunSpec, force: bool = False) -> bool:
        """False when a run with this spec is already done (unless `force`).

        With `force`, an existing run is reset (`RunHandle.reset`: back to pending, everything it
        wrote removed but its spec) and True is returned.
        """
        run = self.find(spec)
        if run is None:
            return True
        if force:
            run.reset()
            return True
        return run.status != "done"

    # -- querying -------------------------------------------------------------------------------
    def _rows(self, filters: Mapping[str, Any]) -> list[sqlite3.Row]:
        clauses, params = [], []
        for key, value in filters.items():
            if key not in FILTER_COLUMNS:
                raise TypeError(f"unknown filter {key!r}; expected one of {sorted(FILTER_COLUMNS)}")
            if value is None:
                clauses.append(f"r.{key} IS NULL")
            elif isinstance(value, (list, tuple, set, frozenset)):
                values = list(value)
                if not values:
                    clauses.append("0")
                else:
                    clauses.append(f"r.{key} IN ({','.join('?' * len(values))})")
                    params.extend(values)
            else:
                clauses.append(f"r.{key} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._read(
            "SELECT r.*, (SELECT COUNT(*) FROM history h WHERE h.hash = r.hash) AS epochs"
            f" FROM runs r {where} ORDER BY r.created_at, r.hash",
            params,
        )

    def list(self, **filters: Any):
        """One row per run as a pandas DataFrame, oldest first.

        Filters (exact match; a list/tuple/set means "any of"): method, protocol, status, source,
        backbone, pretrained, shots, seed, name, hash, short_hash. Columns: see `RUN_COLUMNS`, then
        the final metrics flattened with "." (`{"test": {"acc": 0.9}}` → column "test.acc"; a metric
        whose name clashes with a run column is prefixed "metrics.").
        """
        import pandas as pd

        records = []
        metric_keys: dict[str, None] = {}
        for row in self._rows(filters):
            spec = json.loads(row["spec_json"])
            rec = {
                "hash": row["hash"], "short_hash": row["short_hash"], "name": row["name"],
                "method": row["method"], "protocol": row["protocol"],
                "datasets": ",".join(json.loads(row["datasets"])), "source": row["source"],
                "shots": row["shots"], "seed": row["seed"], "backbone": row["backbone"],
                "pretrained": row["pretrained"], "status": row["status"], "progress": row["progress"],
                "message": row["message"], "error": row["error"], "epochs": row["epochs"],
                "created_at": row["created_at"], "updated_at": row["updated_at"],
                "started_at": row["started_at"], "finished_at": row["finished_at"],
                "preset": _preset_of(spec),
                "method_config": json.dumps(_method_config_of(spec), sort_keys=True),
                "train_config": json.dumps(_train_config_of(spec), sort_keys=True),
                "protocol_settings": json.dumps(spec.get("protocol_settings", {}), sort_keys=True),
                "versions": json.dumps(spec.get("versions", {}), sort_keys=True),
                "stale": _stale(spec),
                "dir": str(self.root / row["short_hash"]),
            }
            metrics = json.loads(row["metrics_json"]) if row["metrics_json"] else {}
            for key, value in _flatten(metrics).items():
                col = f"metrics.{key}" if key in RUN_COLUMNS else key
                metric_keys[col] = None
                rec[col] = value
            records.append(rec)
        df = pd.DataFrame.from_records(records, columns=RUN_COLUMNS + list(metric_keys))
        df["shots"] = df["shots"].astype("Int64")
        df["seed"] = df["seed"].astype("Int64")
        df["epochs"] = df["epochs"].astype("Int64")
        df["progress"] = df["progress"].astype(float)
        for col in ("created_at", "updated_at", "started_at", "finished_at"):
            df[col] = pd.to_datetime(df[col].astype(float), unit="s", utc=True)
        return df

    def history(self, run: "str | RunHandle | RunSpec | Iterable") -> Any:
        """Per-epoch history as a DataFrame sorted by epoch (columns: epoch, then the logged values).

        `run` is a hash / prefix / RunHandle / RunSpec, or a list of them; for a list a "hash"
        column is added and rows are sorted by (hash, epoch).
        """
        import pandas as pd

        single = isinstance(run, (str, RunHandle, RunSpec))
        runs = [run] if single else list(run)
        hashes = [self.get(r).hash for r in runs]
        records = []
        for h in hashes:
            for row in self._read("SELECT epoch, values_json FROM history WHERE hash = ? ORDER BY epoch", (h,)):
                rec = {"hash": h, "epoch": row["epoch"]}
                rec.update({k: v for k, v in json.loads(row["values_json"]).items() if k not in ("hash", "epoch")})
                records.append(rec)
        df = pd.DataFrame.from_records(records)
        if df.empty:
            df = pd.DataFrame({"hash": pd.Series(dtype=str), "epoch": pd.Series(dtype="int64")})
        if single:
            df = df.drop(columns=["hash"])
        return df.reset_index(drop=True)

    def export(self, path: str | os.PathLike, fmt: str | None = None, **filters: Any) -> Path:
        """Write `list(**filters)` to `path` as "csv" or "parquet" (default: from the suffix, else csv)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if fmt is None:
            if suffix and suffix not in EXPORT_FORMATS:
                raise ValueError(f"cannot export to {path.name}: {suffix} is not a format the run table is written "
                                 "in; use .csv, .parquet or .pq (or give the format: --format csv|parquet)")
            fmt = EXPORT_FORMATS.get(suffix, "csv")
        fmt = fmt.lower()
        if fmt not in ("csv", "parquet"):
            raise ValueError(f"unknown export format {fmt!r}; expected csv or parquet")
        if suffix in EXPORT_FORMATS and EXPORT_FORMATS[suffix] != fmt:
            raise ValueError(f"cannot export {fmt} to {path.name}: its suffix says {EXPORT_FORMATS[suffix]}")
        df = self.list(**filters)
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":  # atomic: a killed export leaves the previous file as it was
            atomic_write(path, lambda f: df.to_csv(f, index=False, encoding="utf-8"))
        else:
            atomic_write(path, lambda f: df.to_parquet(f, index=False))
        return path

    # -- maintenance ----------------------------------------------------------------------------
    def mark_orphans_interrupted(self) -> list[str]:
        """Runs left "running" by a process of this host that no longer exists (killed outright,
        machine slept) become "interrupted". Returns their short hashes. Re-running the same spec
        resumes them from their last checkpoint."""
        if self.read_only:
            return []
        host = socket.gethostname()
        rows = self._read("SELECT hash, pid FROM runs WHERE status = 'running' AND host = ?", (host,))
        orphans = []
        for row in rows:
            if row["pid"] is None or _process_alive(int(row["pid"])):
                continue
            run = RunHandle(self, row["hash"])
            run.set_status("interrupted", f"process {row['pid']} ended while the run was running; "
                                          "run the same command again to resume from the last checkpoint")
            orphans.append(run.short_hash)
        return orphans

    @classmethod
    def reindex(cls, root: str | os.PathLike | None = None) -> tuple["Registry", int, Path | None]:
        """Rebuild the index of `root` from its run folders: (registry, runs indexed, where a damaged
        index was moved, or None). A damaged registry.sqlite (and its -wal/-shm) is moved aside as
        registry.sqlite.damaged-<stamp> first; stop other workbench processes on it before."""
        moved = None
        try:
            reg = cls(root, create=False)
            check = reg.integrity_check()
            if check != "ok":
                raise IndexDamagedError(reg.db_path, check[:200])
        except IndexDamagedError as exc:
            moved = cls._move_aside(exc.db_path)
            reg = cls(root, create=False)
        if reg.read_only:
            raise reg._readonly_error()
        count = reg.rebuilt if reg.rebuilt is not None else reg.rebuild_index()
        return reg, count, moved

    @staticmethod
    def _move_aside(db_path: Path) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = db_path.with_name(f"{db_path.name}.damaged-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = db_path.with_name(f"{db_path.name}.damaged-{stamp}-{n}")
        for extra in ("-wal", "-shm"):  # a stale WAL would be replayed into the new index
            side = db_path.with_name(db_path.name + extra)
            if side.exists():
                os.replace(side, target.with_name(target.name + extra))
        os.replace(db_path, target)
        return target

    def rebuild_index(self, hashes: Iterable[str] | None = None, *, write_folders: bool = True) -> int:
        """Re-create index rows from the run folders (spec/status/metrics/history files).

        Use after losing or damaging registry.sqlite. Existing rows are overwritten; metrics the index
        has but whose metrics.json is gone are kept (and, with `write_folders`, metrics.json rewritten). A
        run recorded done with no metrics anywhere becomes interrupted, so the same command runs it again
        (resuming from its last checkpoint). `hashes` limits it to those runs (full hashes); with
        `write_folders=False` only the SQLite index is written, never a run folder (safe while jobs on
        other nodes write there: `workbench sweep status` merges so). Returns the number of runs indexed.
        """
        if hashes is None:
            folders = [p.parent for p in sorted(self.root.glob("*/spec.json"))]
        else:
            folders = [self.run_dir(h) for h in hashes if (self.run_dir(h) / SPEC).exists()]
        return sum(self._index_folder(folder, write_folders) for folder in folders)

    def _index_folder(self, run_dir: Path, write_folders: bool) -> int:
        """Write the index row of one run folder (1), or skip a folder that is not a run's (0)."""
        try:
            spec = RunSpec.from_dict(json.loads((run_dir / SPEC).read_text()))
        except (OSError, ValueError, TypeError, json.JSONDecodeError):
            return 0
        if spec.short_hash != run_dir.name:
            return 0
        files = RunFiles(run_dir)  # read them first: create_or_get writes a fresh status.json for a new row
        status = files.read_json(STATUS)
        status = status if isinstance(status, dict) else {}
        metrics = files.read_json(METRICS)
        history = files.read_history()
        if write_folders:
            handle = self.create_or_get(spec)
        else:
            self._write(lambda conn: conn.execute(
                "INSERT OR IGNORE INTO runs (hash, short_hash, name, method, protocol, datasets, source, shots, seed,"
                " backbone, pretrained, spec_json, status, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,'pending',?,?)",
                (spec.hash, spec.short_hash, spec.name, spec.method, spec.protocol, json.dumps(list(spec.datasets)),
                 spec.source, spec.shots, spec.seed, spec.backbone, spec.pretrained,
                 dumps(spec.to_dict(), sort_keys=True), _now(), _now())))
            handle = None

        def tx(conn: sqlite3.Connection, h=spec.hash, status=status, metrics=metrics, history=history) -> dict:
            now = _now()
            state = status.get("status") if status.get("status") in STATUSES else "pending"
            error = status.get("error")
            kept = None
            if not isinstance(metrics, dict):
                old = conn.execute("SELECT metrics_json FROM runs WHERE hash = ?", (h,)).fetchone()
                kept = json.loads(old["metrics_json"]) if old and old["metrics_json"] else None
                metrics = kept
            if state == "done" and metrics is None:
                state, error = "interrupted", (f"{METRICS} is missing: run the same command again to finish "
                                               "it (it resumes from its last checkpoint)")
            conn.execute(
                "UPDATE runs SET status=?, progress=?, message=?, error=?, metrics_json=?, created_at=?,"
                " updated_at=?, started_at=?, finished_at=?, pid=?, host=? WHERE hash=?",
                (state, float(status.get("progress") or 0.0), status.get("message") or "", error,
                 json.dumps(metrics) if metrics is not None else None,
                 status.get("created_at") or now, status.get("updated_at") or now,
                 status.get("started_at"), status.get("finished_at"), status.get("pid"), status.get("host"), h),
            )
            conn.execute("DELETE FROM history WHERE hash = ?", (h,))
            conn.executemany(
                "INSERT INTO history (hash, epoch, values_json, logged_at) VALUES (?,?,?,?)",
                [(h, int(e["epoch"]), json.dumps({k: v for k, v in e.items() if k != "epoch"}), now)
                 for e in history],
            )
            return dict(conn.execute("SELECT * FROM runs WHERE hash = ?", (h,)).fetchone()), kept

        row, kept = self._write(tx)
        if handle is not None:
            if kept is not None:
                files.write_metrics(kept)
            handle._write_status_file(row)
        return 1


