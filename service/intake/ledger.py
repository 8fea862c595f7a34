"""The ledger: one SQLite database (WAL) that is the record of every file and every run.

Every state change of a file is one transaction. Filesystem moves follow the ledger:
the ledger first records where a file is going (its new ``path``), then the file is
moved; ``service.intake.inbox.reconcile`` finishes any move a crash interrupted.

File states::

    claiming     the ledger knows the file is being renamed inbox/ -> processing/
    queued       in processing/, waiting for a run
    running      in processing/, part of the run in ``run_id``
    archived     in archive/, used by exactly one completed run (``run_id``)
    quarantined  in quarantine/ with <name>.error.json (``error``)
    duplicate    in duplicates/, same sha256 as a file already used (``duplicate_of``)
    requeued     taken out of quarantine by ``retrain requeue`` (it re-enters as a new file)
    vanished     deleted by someone between its event and its claim
    expired      was archived; deleted by retention (``[archive] keep_days``), record kept

Run states: running, completed, failed, interrupted, cancelled (by an operator, in Prefect).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

from core.errors import RetrainError


class FileState(StrEnum):
    CLAIMING = "claiming"
    QUEUED = "queued"
    RUNNING = "running"
    ARCHIVED = "archived"
    QUARANTINED = "quarantined"
    DUPLICATE = "duplicate"
    REQUEUED = "requeued"
    VANISHED = "vanished"
    EXPIRED = "expired"


# States whose content counts as "already used or about to be": a new file with the same
# sha256 is a duplicate.
USED_STATES = (FileState.QUEUED, FileState.RUNNING, FileState.ARCHIVED)


@dataclass(frozen=True)
class FileRecord:
    id: int
    name: str  # name in the inbox
    path: str  # where the file is (or is being moved to)
    state: FileState
    sha256: str | None
    size: int | None
    first_seen: float
    updated_at: float
    run_id: int | None = None
    error: dict[str, Any] | None = None  # Rejection as a dict, for quarantined files
    attempts: int = 0
    duplicate_of: int | None = None
    # What the file is for, by the folder it came in through: "train" (inbox/, labelled
    # rows), "score" (score/, rows to predict), "labels" (labels/, late labels).
    kind: str = "train"
    # The files its rows came from, when the service made it (scored rows joined with their
    # late labels): their names.
    origin: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunRecord:
    id: int
    state: str
    started_at: float
    finished_at: float | None
    file_ids: list[int]
    flow_run_id: str | None = None
    decision: str | None = None
    reason: str | None = None
    model_version: str | None = None
    metric: str | None = None
    # The run's record beyond its decision: what started it and who asked, what the monitor
    # and the policy found, the candidate's and champion's metrics, rows, stage times. (Its
    # column keeps the name `metrics` it had, so that existing ledgers read as before.)
    details: dict[str, Any] = field(default_factory=dict)


# The ledger's layout, stored as SQLite's user_version. Opening adds what is missing
# (CREATE ... IF NOT EXISTS), so an older ledger is brought up to date; a newer one was
# written by a newer retrain and is refused rather than misread. Raise it when a change
# would be misread by an older retrain (a column's meaning); a table it never reads is not.
# 2: files.kind (score/ and labels/ files beside training files) and files.origin.
SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    sha256 TEXT,
    size INTEGER,
    first_seen REAL NOT NULL,
    updated_at REAL NOT NULL,
    run_id INTEGER,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    duplicate_of INTEGER,
    archived_seq INTEGER,
    kind TEXT NOT NULL DEFAULT 'train',
    origin TEXT
);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
CREATE INDEX IF NOT EXISTS files_sha ON files(sha256);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    file_ids TEXT NOT NULL,
    flow_run_id TEXT,
    decision TEXT,
    reason TEXT,
    model_version TEXT,
    metric TEXT,
    metrics TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS removed_versions (
    version TEXT PRIMARY KEY,
    removed_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""


class Ledger:
    """Thread-safe (one connection guarded by a lock); every public method is one transaction."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise RetrainError(f"no ledger at {self.path}; is this a retrain home? (--home)")
            uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30,
                                         isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed state change survives a power cut, not only a process
            # crash; the ledger is written a few times per file, so the cost is small.
            self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._lock = threading.RLock()
        self._check_schema_version()
        if not readonly:
            with self._lock:
                self._conn.executescript(_SCHEMA)
                self._add_missing_columns()
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _add_missing_columns(self) -> None:
        """Columns added since a table was created (an older ledger): their defaults say
        what every earlier row was (a training file, made by no one)."""
        columns = {row["name"] for row in self._conn.execute("PRAGMA table_info(files)")}
        for name, definition in (("kind", "TEXT NOT NULL DEFAULT 'train'"), ("origin", "TEXT")):
            if name not in columns:
                self._conn.execute(f"ALTER TABLE files ADD COLUMN {name} {definition}")

    def _check_schema_version(self) -> None:
        found = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            self._conn.close()
            raise RetrainError(f"the ledger {self.path} was written by a newer retrain (schema {found}, "
                               f"this one reads up to {SCHEMA_VERSION}); upgrade retrain")

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: it takes the write lock up front, so two writers never
        deadlock on an upgrade from read to write."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -- files ---------------------------------------------------------------------------
    def begin_claim(self, name: str, dest_path: str, first_seen: float, kind: str = "train") -> FileRecord:
        now = time.time()
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO files(name, path, state, first_seen, updated_at, kind) VALUES (?,?,?,?,?,?)",
                (name, dest_path, FileState.CLAIMING, first_seen, now, kind))
            file_id = cur.lastrowid
            if "{id}" in dest_path:
                c.execute("UPDATE files SET path=? WHERE id=?", (dest_path.replace("{id}", str(file_id)), file_id))
        return self.get(file_id)

    def finish_claim(self, file_id: int, sha256: str | None, size: int) -> FileRecord:
        with self._tx() as c:
            c.execute("UPDATE files SET state=?, sha256=?, size=?, updated_at=? WHERE id=?",
                      (FileState.QUEUED, sha256, size, time.time(), file_id))
        return self.get(file_id)

    def find_used(self, sha256: str, exclude_id: int | None = None, kind: str = "train") -> FileRecord | None:
        """A file of the same content and kind used or about to be (the same rows scored
        twice are a duplicate; the same bytes as labels and as training data are not)."""
        rows = self._read(
            f"SELECT * FROM files WHERE sha256=? AND id!=? AND kind=? AND state IN ({','.join('?' * len(USED_STATES))})"
            " ORDER BY id LIMIT 1", (sha256, exclude_id or -1, kind, *USED_STATES))
        return _file(rows[0]) if rows else None

    def move(self, file_id: int, state: FileState, path: str, *, error: dict | None = None,
             duplicate_of: int | None = None) -> FileRecord:
        with self._tx() as c:
            c.execute("UPDATE files SET state=?, path=?, error=COALESCE(?, error), "
                      "duplicate_of=COALESCE(?, duplicate_of), updated_at=? WHERE id=?",
                      (state, path, _json(error), duplicate_of, time.time(), file_id))
        return self.get(file_id)

    def forget_claim(self, file_id: int) -> None:
        with self._tx() as c:
            c.execute("UPDATE files SET state=?, updated_at=? WHERE id=? AND state=?",
                      (FileState.VANISHED, time.time(), file_id, FileState.CLAIMING))

    def get(self, file_id: int) -> FileRecord:
        rows = self._read("SELECT * FROM files WHERE id=?", (file_id,))
        if not rows:
            raise KeyError(f"no file {file_id} in the ledger")
        return _file(rows[0])

    def files(self, *states: FileState) -> list[FileRecord]:
        if not states:
            return [_file(r) for r in self._read("SELECT * FROM files ORDER BY id")]
        rows = self._read(f"SELECT * FROM files WHERE state IN ({','.join('?' * len(states))}) ORDER BY id",
                          tuple(states))
        return [_file(r) for r in rows]

    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in FileState}
        for row in self._read("SELECT state, COUNT(*) AS n FROM files GROUP BY state"):
            counts[row["state"]] = row["n"]
        return counts

    def files_with_sha256(self, sha256: str) -> list[FileRecord]:
        return [_file(r) for r in self._read("SELECT * FROM files WHERE sha256=? ORDER BY id", (sha256,))]

    def archived_before(self, cutoff: float) -> list[FileRecord]:
        """Archived files whose last move (their archiving) was before ``cutoff``."""
        rows = self._read("SELECT * FROM files WHERE state=? AND updated_at<? ORDER BY id",
                          (FileState.ARCHIVED, cutoff))
        return [_file(r) for r in rows]

    def set_origin(self, file_id: int, origin: list[str]) -> None:
        with self._tx() as c:
            c.execute("UPDATE files SET origin=? WHERE id=?", (json.dumps(origin), file_id))

    def window(self, last_files: int) -> list[FileRecord]:
        """The archived training files, oldest first (the newest ``last_files``; 0: all)."""
        rows = self._read("SELECT * FROM files WHERE state=? AND kind='train' ORDER BY archived_seq, id",
                          (FileState.ARCHIVED,))
        records = [_file(r) for r in rows]
        return records[-last_files:] if last_files > 0 else records

    # -- runs ----------------------------------------------------------------------------
    def start_run(self, file_ids: list[int], details: dict[str, Any] | None = None) -> RunRecord:
        """``details``: what is known at the start (what started the run, who asked)."""
        with self._tx() as c:
            cur = c.execute("INSERT INTO runs(state, started_at, file_ids, metrics) VALUES ('running', ?, ?, ?)",
                            (time.time(), json.dumps(file_ids), json.dumps(details or {}, default=str)))
            run_id = cur.lastrowid
            for fid in file_ids:
                c.execute("UPDATE files SET state=?, run_id=?, updated_at=? WHERE id=? AND state=?",
                          (FileState.RUNNING, run_id, time.time(), fid, FileState.QUEUED))
        return self.get_run(run_id)

    def set_flow_run_id(self, run_id: int, flow_run_id: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE runs SET flow_run_id=? WHERE id=?", (flow_run_id, run_id))

    def complete_run(self, run_id: int, *, decision: str, reason: str, flow_run_id: str | None,
                     model_version: str | None, metric: str | None, details: dict[str, Any],
                     archived: dict[int, str], quarantined: dict[int, tuple[str, dict]]) -> RunRecord:
        now = time.time()
        with self._tx() as c:
            c.execute("UPDATE runs SET state='completed', finished_at=?, decision=?, reason=?, "
                      "flow_run_id=COALESCE(?, flow_run_id), model_version=?, metric=?, metrics=? "
                      "WHERE id=?", (now, decision, reason, flow_run_id, model_version, metric,
                                     json.dumps(details, default=str), run_id))
            seq = c.execute("SELECT COALESCE(MAX(archived_seq), 0) FROM files").fetchone()[0]
            for fid, path in archived.items():
                seq += 1
                c.execute("UPDATE files SET state=?, path=?, run_id=?, archived_seq=?, updated_at=? "
                          "WHERE id=?", (FileState.ARCHIVED, path, run_id, seq, now, fid))
            for fid, (path, error) in quarantined.items():
                c.execute("UPDATE files SET state=?, path=?, run_id=?, error=?, updated_at=? WHERE id=?",
                          (FileState.QUARANTINED, path, run_id, _json(error), now, fid))
        return self.get_run(run_id)

    def fail_run(self, run_id: int, reason: str, max_attempts: int,
                 quarantine_path: dict[int, str], count_attempt: bool = True,
                 run_state: str = "failed") -> RunRecord:
        now = time.time()
        with self._tx() as c:
            c.execute("UPDATE runs SET state=?, finished_at=?, reason=? WHERE id=?",
                      (run_state, now, reason, run_id))
            rows = c.execute("SELECT id, attempts FROM files WHERE run_id=? AND state=?",
                             (run_id, FileState.RUNNING)).fetchall()
            for row in rows:
                attempts = row["attempts"] + (1 if count_attempt else 0)
                if attempts >= max_attempts and row["id"] in quarantine_path:
                    error = {"reason": f"{attempts} runs with this file failed; last: {reason}",
                             "hint": "check the daemon's log for that run, fix the cause, then "
                                     "`retrain requeue` the file", "details": {"run_id": run_id}}
                    c.execute("UPDATE files SET state=?, path=?, attempts=?, error=?, updated_at=? WHERE id=?",
                              (FileState.QUARANTINED, quarantine_path[row["id"]], attempts,
                               _json(error), now, row["id"]))
                else:
                    c.execute("UPDATE files SET state=?, attempts=?, run_id=NULL, updated_at=? WHERE id=?",
                              (FileState.QUEUED, attempts, now, row["id"]))
        return self.get_run(run_id)

    def interrupted_runs(self) -> list[RunRecord]:
        return [_run(r) for r in self._read("SELECT * FROM runs WHERE state='running' ORDER BY id")]

    def cancel_run(self, run_id: int, reason: str, model_version: str | None,
                   quarantined: dict[int, tuple[str, dict]]) -> RunRecord:
        """An operator cancelled the run: it ends ``cancelled`` and each of its files goes
        to quarantine (``quarantined``: file id -> destination, error), in one transaction."""
        now = time.time()
        with self._tx() as c:
            c.execute("UPDATE runs SET state='cancelled', finished_at=?, decision='cancelled', reason=?, "
                      "model_version=? WHERE id=?", (now, reason, model_version, run_id))
            for fid, (path, error) in quarantined.items():
                c.execute("UPDATE files SET state=?, path=?, error=?, updated_at=? WHERE id=? AND run_id=?",
                          (FileState.QUARANTINED, path, _json(error), now, fid, run_id))
        return self.get_run(run_id)

    def mark_interrupted(self, run_id: int) -> None:
        with self._tx() as c:
            c.execute("UPDATE runs SET state='interrupted', finished_at=? WHERE id=?", (time.time(), run_id))

    def get_run(self, run_id: int) -> RunRecord:
        rows = self._read("SELECT * FROM runs WHERE id=?", (run_id,))
        if not rows:
            raise KeyError(f"no run {run_id} in the ledger")
        return _run(rows[0])

    def run_counts(self) -> dict[str, int]:
        """Runs by decision (completed runs) or by state (running, failed, interrupted)."""
        rows = self._read("SELECT COALESCE(decision, state) AS outcome, COUNT(*) AS n FROM runs GROUP BY outcome")
        return {row["outcome"]: row["n"] for row in rows}

    def last_completed_run(self, kind: str = "train") -> RunRecord | None:
        """The last completed run of a kind ("train", "score", "labels": its details' kind)."""
        rows = self._read("SELECT * FROM runs WHERE state='completed' AND COALESCE(json_extract(metrics, '$.kind'), 'train')=? "
                          "ORDER BY id DESC LIMIT 1", (kind,))
        return _run(rows[0]) if rows else None

    def rows_since(self, started_after: float) -> int:
        """New rows of the completed runs that started after a moment (their ``rows`` metric)."""
        rows = self._read("SELECT COALESCE(SUM(json_extract(metrics, '$.rows')), 0) AS n FROM runs "
                          "WHERE state='completed' AND started_at>? AND COALESCE(json_extract(metrics, '$.kind'), 'train')='train'", (started_after,))
        return int(rows[0]["n"])

    def run_of_flow_run(self, flow_run_id: str) -> RunRecord | None:
        rows = self._read("SELECT * FROM runs WHERE flow_run_id=? ORDER BY id DESC LIMIT 1", (flow_run_id,))
        return _run(rows[0]) if rows else None

    def last_deployed_run(self, other_than: str | None = None) -> RunRecord | None:
        """The newest completed run that recorded a deploy (of a version other than ``other_than``)."""
        rows = self._read("SELECT * FROM runs WHERE state='completed' AND decision='deployed' "
                          "AND model_version IS NOT ? ORDER BY finished_at DESC LIMIT 1", (other_than,))
        return _run(rows[0]) if rows else None

    def runs(self, limit: int = 20) -> list[RunRecord]:
        return [_run(r) for r in self._read("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,))]

    # -- model versions removed by retention ------------------------------------------------
    def record_removed_versions(self, records: list[dict[str, Any]]) -> None:
        """Keep a line (metrics, decision, lineage) of each version retention removed, so
        that the history stays complete after the files are gone."""
        now = time.time()
        with self._tx() as c:
            c.executemany("INSERT OR REPLACE INTO removed_versions(version, removed_at, record) VALUES (?,?,?)",
                          [(r["version"], now, json.dumps(r, default=str)) for r in records])

    def removed_versions(self) -> list[dict[str, Any]]:
        """The records of removed versions, oldest version first, each with ``removed_at``."""
        rows = self._read("SELECT * FROM removed_versions")
        records = [{**json.loads(r["record"]), "removed_at": r["removed_at"]} for r in rows]
        return sorted(records, key=lambda r: int(r["version"][1:]))

    # -- events: what operators did (rollbacks, requeues), shown by `retrain status` -----
    def record_event(self, kind: str, detail: dict[str, Any]) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO events(at, kind, detail) VALUES (?,?,?)",
                      (time.time(), kind, json.dumps(detail, default=str)))

    def events(self, kind: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        if kind is None:
            rows = self._read("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._read("SELECT * FROM events WHERE kind=? ORDER BY id DESC LIMIT ?", (kind, limit))
        return [{"id": r["id"], "at": r["at"], "kind": r["kind"], **json.loads(r["detail"])} for r in rows]


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


def _file(row: sqlite3.Row) -> FileRecord:
    return FileRecord(
        id=row["id"], name=row["name"], path=row["path"], state=FileState(row["state"]),
        sha256=row["sha256"], size=row["size"], first_seen=row["first_seen"],
        updated_at=row["updated_at"], run_id=row["run_id"],
        error=json.loads(row["error"]) if row["error"] else None, attempts=row["attempts"],
        duplicate_of=row["duplicate_of"],
        # A ledger of before these columns, opened read-only (no writer has added them yet).
        kind=row["kind"] if "kind" in row.keys() else "train",
        origin=json.loads(row["origin"] or "[]") if "origin" in row.keys() else [],
    )


def _run(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"], state=row["state"], started_at=row["started_at"], finished_at=row["finished_at"],
        file_ids=json.loads(row["file_ids"]), flow_run_id=row["flow_run_id"], decision=row["decision"],
        reason=row["reason"], model_version=row["model_version"], metric=row["metric"],
        details=json.loads(row["metrics"] or "{}"),
    )
