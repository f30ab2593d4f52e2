"""The run registry: an SQLite index plus one folder per run.

Layout under the registry root (`workbench.paths.runs_dir()` unless given)::

    registry.sqlite            index: one row per run, one row per (run, epoch) of history
    <short_hash>/spec.json     the RunSpec (+ its full hash)
    <short_hash>/status.json   status, progress, message, error, times
    <short_hash>/history.jsonl one JSON object per epoch (epoch, loss, accuracies, learned scalars...)
    <short_hash>/metrics.json  final metrics
    <short_hash>/predictions.npz  "<split>/labels", "<split>/preds", optional "<split>/logits"
    <short_hash>/log.txt       free-text log
    <short_hash>/checkpoints/epoch_0003.pt  (atomic writes, last `keep` kept)

Everything a notebook or the app needs is in the index (`Registry.list`, `Registry.history`); the
files mirror it so a run folder is self-describing and `Registry.rebuild_index()` can recreate the
index from the folders. Many processes may use one registry at once: every write is one short
`BEGIN IMMEDIATE` transaction on its own connection, retried with backoff while the database is busy.
One run is expected to be driven by one process at a time.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random

_sysrand = random.SystemRandom()  # never touch the global RNG: training code checkpoints its state
import re
import socket
import sqlite3
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

from workbench.paths import runs_dir
from workbench.runs.spec import RunSpec

try:  # POSIX advisory locks for the per-run files; a no-op elsewhere
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

STATUSES = ("pending", "running", "done", "failed", "interrupted")
DB_NAME = "registry.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0  # sqlite's own busy handler, per statement
RETRY_DEADLINE_S = 120.0  # our retry loop on top of it, per transaction

RUN_COLUMNS = [
    "hash", "short_hash", "name", "method", "protocol", "datasets", "source", "shots", "seed",
    "backbone", "pretrained", "status", "progress", "message", "error", "epochs",
    "created_at", "updated_at", "started_at", "finished_at", "method_config", "overrides", "dir",
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


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def _now() -> float:
    return time.time()


def _jsonable(obj: Any) -> Any:
    """Plain-JSON version of values callers hand us (numpy/torch scalars, tuples, paths...).

    Unlike `canonicalize` (used for hashing) this keeps floats as floats and NaN as NaN.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy / torch (scalars and arrays)
        return _jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return _jsonable(obj.item())
    raise TypeError(f"value of type {type(obj).__name__} is not JSON-serializable: {obj!r}")


def _dumps(obj: Any, **kw) -> str:
    return json.dumps(_jsonable(obj), **kw)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{_sysrand.getrandbits(32):08x}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key, sep))
        else:
            out[key] = v
    return out


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def _parse_history(text: str) -> list[dict]:
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


def _to_numpy(x: Any):
    import numpy as np

    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------
class Registry:
    """Index of runs under `root` (default `workbench.paths.runs_dir()`)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else runs_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / DB_NAME
        self._init_db()

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # -- database plumbing ----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _retry(self, fn: Callable[[], T]) -> T:
        deadline = _now() + RETRY_DEADLINE_S
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc) or _now() > deadline:
                    raise
            time.sleep(delay * (0.5 + _sysrand.random()))
            delay = min(delay * 2, 0.5)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` inside one `BEGIN IMMEDIATE` transaction, retrying while locked."""

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
        def set_wal() -> None:
            conn = self._connect()
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.OperationalError(f"database is locked (journal_mode={mode})")
            finally:
                conn.close()

        self._retry(set_wal)

        def create(conn: sqlite3.Connection) -> None:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.db_path} has schema v{version}, newer than this workbench (v{SCHEMA_VERSION})")
            if version < SCHEMA_VERSION:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

        self._write(create)

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
        h, short = spec.hash, spec.short_hash
        run_dir = self.root / short
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        spec_path = run_dir / "spec.json"
        if not spec_path.exists():
            _atomic_write_text(spec_path, _dumps({**spec.to_dict(), "hash": h}, indent=2, sort_keys=True))
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
                 spec.shots, spec.seed, spec.backbone, spec.pretrained, _dumps(spec.to_dict(), sort_keys=True),
                 now, now),
            )
            return True

        created = self._write(tx)
        handle = RunHandle(self, h, spec)
        if created:
            handle._write_status_file()
        if spec.name is not None:  # keep spec.json's display name in step with the index
            stored = json.loads(spec_path.read_text())
            if stored.get("name") != spec.name:
                with handle._file_lock():
                    _atomic_write_text(spec_path, _dumps({**spec.to_dict(), "hash": h}, indent=2, sort_keys=True))
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

        With `force`, an existing run is reset (status pending, metrics, history, predictions and
        checkpoints cleared; folder and log kept) and True is returned.
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
                "method_config": json.dumps(spec.get("method_config", {}), sort_keys=True),
                "overrides": json.dumps(spec.get("overrides", {}), sort_keys=True),
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
        if fmt is None:
            fmt = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
        fmt = fmt.lower()
        if fmt not in ("csv", "parquet"):
            raise ValueError(f"unknown export format {fmt!r}; expected csv or parquet")
        df = self.list(**filters)
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            df.to_csv(path, index=False)
        else:
            df.to_parquet(path, index=False)
        return path

    # -- maintenance ----------------------------------------------------------------------------
    def mark_orphans_interrupted(self) -> list[str]:
        """Runs left "running" by a process of this host that no longer exists (killed outright,
        machine slept) become "interrupted". Returns their short hashes. Re-running the same spec
        resumes them from their last checkpoint."""
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

    def rebuild_index(self) -> int:
        """Re-create index rows from the run folders (spec/status/metrics/history files).

        Use after losing or damaging registry.sqlite. Existing rows are overwritten. Returns the
        number of runs indexed.
        """
        count = 0
        for spec_path in sorted(self.root.glob("*/spec.json")):
            run_dir = spec_path.parent
            try:
                spec = RunSpec.from_dict(json.loads(spec_path.read_text()))
            except (ValueError, TypeError, json.JSONDecodeError):
                continue
            if spec.short_hash != run_dir.name:
                continue
            status = {}  # read the files first: create_or_get writes a fresh status.json for a new row
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                status = json.loads((run_dir / "status.json").read_text())
            metrics = None
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                metrics = json.loads((run_dir / "metrics.json").read_text())
            history = RunHandle(self, spec.hash, spec)._read_history_file()
            handle = self.create_or_get(spec)

            def tx(conn: sqlite3.Connection, h=handle.hash, status=status, metrics=metrics, history=history) -> dict:
                now = _now()
                conn.execute(
                    "UPDATE runs SET status=?, progress=?, message=?, error=?, metrics_json=?, created_at=?,"
                    " updated_at=?, started_at=?, finished_at=? WHERE hash=?",
                    (status.get("status", "pending") if status.get("status") in STATUSES else "pending",
                     float(status.get("progress") or 0.0), status.get("message") or "", status.get("error"),
                     json.dumps(metrics) if metrics is not None else None,
                     status.get("created_at") or now, status.get("updated_at") or now,
                     status.get("started_at"), status.get("finished_at"), h),
                )
                conn.execute("DELETE FROM history WHERE hash = ?", (h,))
                conn.executemany(
                    "INSERT INTO history (hash, epoch, values_json, logged_at) VALUES (?,?,?,?)",
                    [(h, int(e["epoch"]), json.dumps({k: v for k, v in e.items() if k != "epoch"}), now)
                     for e in history],
                )
                return dict(conn.execute("SELECT * FROM runs WHERE hash = ?", (h,)).fetchone())

            handle._write_status_file(self._write(tx))
            count += 1
        return count


# ------------------------------------------------------------------------------------------------
# RunHandle
# ------------------------------------------------------------------------------------------------
def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunHandle:
    """One run: its folder, spec, status, history, metrics, predictions, log and checkpoints."""

    def __init__(self, registry: Registry, hash: str, spec: RunSpec | None = None):
        self.registry = registry
        self.hash = hash
        self.short_hash = hash[:12]
        self.dir = registry.root / self.short_hash
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

    # -- files ----------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.dir / ".lock", "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _write_status_file(self, row: dict | None = None) -> None:
        row = row if row is not None else self.info()
        keys = ("status", "progress", "message", "error", "created_at", "updated_at", "started_at", "finished_at",
                "pid", "host")
        with self._file_lock():
            _atomic_write_text(self.dir / "status.json", json.dumps({k: row.get(k) for k in keys}, indent=2))

    def _read_history_file(self) -> list[dict]:
        """Entries of history.jsonl; for a repeated epoch the last entry wins; sorted by epoch."""
        try:
            return _parse_history((self.dir / "history.jsonl").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []

    def _update(self, **fields: Any) -> dict:
        """Update index columns (plus updated_at) in one transaction; returns the new row."""
        fields["updated_at"] = _now()
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
        now = _now()
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

    @contextlib.contextmanager
    def running(self) -> Iterator["RunHandle"]:
        """`with run.running():` marks the run running, then done on success, interrupted on
        KeyboardInterrupt, failed (traceback in log.txt) on any other exception, which is re-raised."""
        self.set_status("running")
        try:
            yield self
        except KeyboardInterrupt:
            self.set_status("interrupted")
            raise
        except BaseException as exc:
            self.log(traceback.format_exc())
            self.set_status("failed", error=exc)
            raise
        else:
            self.set_status("done")

    # -- history / metrics / predictions / log --------------------------------------------------
    def log_epoch(self, epoch: int, values: Mapping[str, Any]) -> None:
        """Record one epoch (loss, accuracies, any learned scalars...). Re-logging an epoch replaces it."""
        epoch = int(epoch)
        values = {str(k): v for k, v in _jsonable(dict(values)).items() if k != "epoch"}
        entry = {"epoch": epoch, **values}
        line = json.dumps(entry)

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO history (hash, epoch, values_json, logged_at) VALUES (?,?,?,?)"
                " ON CONFLICT(hash, epoch) DO UPDATE SET values_json = excluded.values_json,"
                " logged_at = excluded.logged_at",
                (self.hash, epoch, json.dumps(values), _now()),
            )
            conn.execute("UPDATE runs SET updated_at = ? WHERE hash = ?", (_now(), self.hash))

        self.registry._write(tx)
        path = self.dir / "history.jsonl"
        with self._file_lock():
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                text = ""
            existing = _parse_history(text)
            lines = [ln for ln in text.splitlines() if ln.strip()]
            clean = (not text or text.endswith("\n")) and len(lines) == len(existing)
            if clean and all(e["epoch"] != epoch for e in existing):
                with open(path, "a", encoding="utf-8") as f:  # common case: a new epoch, append
                    f.write(line + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            else:  # re-logged epoch (resume) or a torn line from a crash: rewrite atomically
                merged = {e["epoch"]: e for e in existing}
                merged[epoch] = entry
                _atomic_write_text(path, "".join(json.dumps(merged[e]) + "\n" for e in sorted(merged)))

    def write_metrics(self, metrics: Mapping[str, Any], merge: bool = False) -> None:
        """Final metrics (nested dicts allowed). `merge=True` updates the existing top-level keys."""
        metrics = _jsonable(dict(metrics))
        if merge:
            metrics = {**self.metrics, **metrics}
        self._update(metrics_json=json.dumps(metrics))
        with self._file_lock():
            _atomic_write_text(self.dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))

    def save_predictions(self, split: str, labels: Any, preds: Any, logits: Any = None) -> None:
        """Store labels/predictions (and optional logits) of one split in predictions.npz (other splits kept)."""
        import numpy as np

        split = str(split)
        if not split:
            raise ValueError("split name must be non-empty")
        arrays = {}
        path = self.dir / "predictions.npz"
        with self._file_lock():
            if path.exists():
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files if not k.startswith(f"{split}/")}
            arrays[f"{split}/labels"] = _to_numpy(labels)
            arrays[f"{split}/preds"] = _to_numpy(preds)
            if logits is not None:
                arrays[f"{split}/logits"] = _to_numpy(logits)
            if arrays[f"{split}/labels"].shape[0] != arrays[f"{split}/preds"].shape[0]:
                raise ValueError("labels and preds differ in length")
            tmp = path.with_name(f".predictions.tmp-{os.getpid()}.npz")
            try:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, **arrays)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    def load_predictions(self, split: str | None = None) -> dict:
        """{split: {"labels", "preds"[, "logits"]}} for all splits, or the inner dict for one split."""
        import numpy as np

        path = self.dir / "predictions.npz"
        out: dict[str, dict] = {}
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                for key in z.files:
                    s, _, kind = key.rpartition("/")
                    out.setdefault(s, {})[kind] = z[key]
        if split is not None:
            if split not in out:
                raise KeyError(f"run {self.short_hash} has no predictions for split {split!r}")
            return out[split]
        return out

    def log(self, msg: str) -> None:
        """Append a timestamped line (or lines) to log.txt."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = "".join(f"[{stamp}] {line}\n" for line in str(msg).rstrip("\n").splitlines() or [""])
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "log.txt", "a", encoding="utf-8") as f:
            f.write(text)

    def read_log(self) -> str:
        try:
            return (self.dir / "log.txt").read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    # -- checkpoints ----------------------------------------------------------------------------
    _CKPT_RE = re.compile(r"^epoch_(\d+)\.pt$")

    def _checkpoints(self) -> list[tuple[int, Path]]:
        if not self.checkpoint_dir.is_dir():
            return []
        found = []
        for p in self.checkpoint_dir.iterdir():
            m = self._CKPT_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save_checkpoint(self, state: dict, epoch: int, keep: int = 2) -> Path:
        """torch.save `state` as checkpoints/epoch_<epoch>.pt atomically (temp file, fsync, os.replace);
        keeps the newest `keep` checkpoints. A killed writer leaves at most a stray temp file, never a
        partial checkpoint."""
        import torch

        epoch = int(epoch)
        ckpt_dir = self.checkpoint_dir
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_dir.glob(".tmp-*"):  # leftovers of killed writers (one writer per run)
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        final = ckpt_dir / f"epoch_{epoch:04d}.pt"
        tmp = ckpt_dir / f".tmp-{os.getpid()}-{_sysrand.getrandbits(32):08x}.pt"
        payload = {"epoch": epoch, "run_hash": self.hash, "saved_at": _now(), "state": state}
        try:
            with open(tmp, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _fsync_dir(ckpt_dir)
        if keep > 0:
            for _, old in self._checkpoints()[:-keep]:
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()
        return final

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        """(epoch, path) of the newest complete checkpoint, or None."""
        found = self._checkpoints()
        return found[-1] if found else None

    def load_checkpoint(self, map_location: Any = "cpu", epoch: int | None = None) -> tuple[int, dict] | None:
        """(epoch, state) of the newest checkpoint (or of `epoch`), or None when there is none.

        Checkpoints are written by this workbench, so they are loaded with weights_only=False
        (states may hold numpy/python RNG states).
        """
        import torch

        if epoch is None:
            latest = self.latest_checkpoint()
            if latest is None:
                return None
            path = latest[1]
        else:
            path = self.checkpoint_dir / f"epoch_{int(epoch):04d}.pt"
            if not path.exists():
                return None
        payload = torch.load(path, map_location=map_location, weights_only=False)
        return int(payload["epoch"]), payload["state"]

    def clear_checkpoints(self) -> None:
        if self.checkpoint_dir.is_dir():
            for p in self.checkpoint_dir.iterdir():
                if p.is_file():
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()

    # -- reset ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to pending: clear metrics, history, predictions and checkpoints; keep folder, spec, log."""

        def tx(conn: sqlite3.Connection) -> dict:
            conn.execute("DELETE FROM history WHERE hash = ?", (self.hash,))
            conn.execute(
                "UPDATE runs SET status='pending', progress=0, message='', error=NULL, metrics_json=NULL,"
                " started_at=NULL, finished_at=NULL, updated_at=? WHERE hash = ?",
                (_now(), self.hash),
            )
            return dict(conn.execute("SELECT * FROM runs WHERE hash = ?", (self.hash,)).fetchone())

        row = self.registry._write(tx)
        with self._file_lock():
            for fname in ("history.jsonl", "metrics.json", "predictions.npz"):
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / fname).unlink()
        self.clear_checkpoints()
        self._write_status_file(row)
        self.log("reset (force): status, metrics, history, predictions and checkpoints cleared")
