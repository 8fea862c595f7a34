"""The ledger: one SQLite database (WAL) that is the record of every file and every run.

Every state change of a file is one transaction. Filesystem moves follow the ledger:
the ledger first records where a file is going (its new ``path``), then the file is
moved; ``service.inbox.reconcile`` finishes any move a crash interrupted.

File states::

    claiming     the ledger knows the file is being renamed inbox/ -> processing/
    queued       in processing/, waiting for a run
    running      in processing/, part of the run in ``run_id``
    archived     in archive/, used by exactly one completed run (``run_id``)
    quarantined  in quarantine/ with <name>.error.json (``error``)
    duplicate    in duplicates/, same sha256 as a file already used (``duplicate_of``)
    requeued     taken out of quarantine by ``retrain requeue`` (it re-enters as a new file)
    vanished     deleted by someone between its event and its claim

Run states: running, completed, failed, interrupted.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class FileState(StrEnum):
    CLAIMING = "claiming"
    QUEUED = "queued"
    RUNNING = "running"
    ARCHIVED = "archived"
    QUARANTINED = "quarantined"
    DUPLICATE = "duplicate"
    REQUEUED = "requeued"
    VANISHED = "vanished"


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
    metrics: dict[str, Any] = field(default_factory=dict)  # candidate/champion/rows...


class Ledger:
    """Thread-safe (one connection guarded by a lock); every public method is one transaction."""

    def __init__(self, path: str | Path):
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- files ---------------------------------------------------------------------------
    def begin_claim(self, name: str, dest_path: str, first_seen: float) -> FileRecord:
        """Insert a CLAIMING row whose ``path`` is the planned processing/ path.
        ``dest_path`` may contain ``{id}``, replaced by the new row's id."""
        raise NotImplementedError

    def finish_claim(self, file_id: int, sha256: str | None, size: int) -> FileRecord:
        """CLAIMING -> QUEUED with the file's hash and size."""
        raise NotImplementedError

    def find_used(self, sha256: str, exclude_id: int | None = None) -> FileRecord | None:
        """The earliest file in a USED_STATES state with this sha256."""
        raise NotImplementedError

    def move(self, file_id: int, state: FileState, path: str, *, error: dict | None = None,
             duplicate_of: int | None = None) -> FileRecord:
        """Record a file's new state and the path it is being moved to."""
        raise NotImplementedError

    def forget_claim(self, file_id: int) -> None:
        """Mark a CLAIMING row VANISHED (the file was gone before it could be renamed)."""
        raise NotImplementedError

    def get(self, file_id: int) -> FileRecord:
        raise NotImplementedError

    def files(self, *states: FileState) -> list[FileRecord]:
        """Files in any of the states (all when none given), oldest id first."""
        raise NotImplementedError

    def find_by_name(self, name: str, *states: FileState) -> list[FileRecord]:
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        """Number of files per state (every state present, zero included)."""
        raise NotImplementedError

    def window(self, last_files: int) -> list[FileRecord]:
        """ARCHIVED files in the order their runs completed (then by id); the newest
        ``last_files`` of them when > 0."""
        raise NotImplementedError

    # -- runs ----------------------------------------------------------------------------
    def start_run(self, file_ids: list[int]) -> RunRecord:
        """Insert a running run and move its files QUEUED -> RUNNING (run_id set)."""
        raise NotImplementedError

    def set_flow_run_id(self, run_id: int, flow_run_id: str) -> None:
        raise NotImplementedError

    def complete_run(self, run_id: int, *, decision: str, reason: str, flow_run_id: str | None,
                     model_version: str | None, metric: str | None, metrics: dict[str, Any],
                     archived: dict[int, str], quarantined: dict[int, tuple[str, dict]]) -> RunRecord:
        """One transaction: the run is completed, files in ``archived`` (id -> archive path)
        become ARCHIVED, files in ``quarantined`` (id -> (path, error)) QUARANTINED."""
        raise NotImplementedError

    def fail_run(self, run_id: int, reason: str, max_attempts: int,
                 quarantine_path: dict[int, str], count_attempt: bool = True) -> RunRecord:
        """The run failed (or was interrupted when count_attempt=False it is a hand-back):
        its RUNNING files go back to QUEUED with attempts+1, or to QUARANTINED (path from
        ``quarantine_path``, error = the run's reason) once attempts reach max_attempts."""
        raise NotImplementedError

    def interrupted_runs(self) -> list[RunRecord]:
        """Runs still 'running' (a daemon died during them)."""
        raise NotImplementedError

    def mark_interrupted(self, run_id: int) -> None:
        raise NotImplementedError

    def get_run(self, run_id: int) -> RunRecord:
        raise NotImplementedError

    def runs(self, limit: int = 20) -> list[RunRecord]:
        """Newest first."""
        raise NotImplementedError

    # -- events (deploys, rollbacks, requeues) -------------------------------------------
    def record_event(self, kind: str, detail: dict[str, Any]) -> None:
        raise NotImplementedError

    def events(self, kind: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        raise NotImplementedError
