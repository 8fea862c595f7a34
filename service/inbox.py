"""The folders of a home and every move of a file between them.

A file is always in exactly one folder. Each move is: ledger records the destination,
then one ``os.rename`` (atomic on one filesystem). ``reconcile`` (run at start) finishes
whatever a crash interrupted, using the ledger as the record of intent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.ledger import FileRecord, Ledger


@dataclass(frozen=True)
class Home:
    """The home folder's layout."""

    root: Path

    @property
    def inbox(self) -> Path: return self.root / "inbox"
    @property
    def processing(self) -> Path: return self.root / "processing"
    @property
    def archive(self) -> Path: return self.root / "archive"
    @property
    def quarantine(self) -> Path: return self.root / "quarantine"
    @property
    def duplicates(self) -> Path: return self.root / "duplicates"
    @property
    def registry(self) -> Path: return self.root / "registry"
    @property
    def cache(self) -> Path: return self.root / "cache"
    @property
    def state(self) -> Path: return self.root / "state"
    @property
    def ledger_path(self) -> Path: return self.state / "ledger.sqlite"

    def ensure(self) -> "Home":
        """Create every folder (parents included); returns self."""
        raise NotImplementedError


def claim_file(ledger: Ledger, home: Home, path: Path, first_seen: float,
               max_file_bytes: int) -> FileRecord | None:
    """Take one inbox entry in: ledger row (claiming) -> os.rename into processing/
    (as "<id>-<name>") -> sha256 -> queued. Returns None (logged, ledger row vanished)
    if the entry disappeared before the rename.

    Entries that must never be read are quarantined unread with a reason (the entry itself,
    not its target, is moved): symbolic links (lstat, never followed), directories, FIFOs,
    sockets, devices, files over ``max_file_bytes``. A file whose sha256 was already used
    (ledger.find_used) is moved to duplicates/ and recorded as DUPLICATE.
    """
    raise NotImplementedError


def destination(folder: Path, name: str, file_id: int) -> Path:
    """``folder/name`` if free, else ``folder/<stem>.<file_id><suffix>`` so nothing is overwritten."""
    raise NotImplementedError


def archive_files(ledger: Ledger, home: Home, run_id: int, *, decision: str, reason: str,
                  flow_run_id: str | None, model_version: str | None, metric: str | None,
                  metrics: dict[str, Any], accepted: list[int],
                  rejected: dict[int, dict[str, Any]]) -> None:
    """Finish a completed run: one ledger transaction (ledger.complete_run) recording the
    archive/ or quarantine/ destination of every file, then the moves, then the
    ``<name>.error.json`` of each quarantined file (written to a temporary name then
    os.replace'd)."""
    raise NotImplementedError


def quarantine_file(ledger: Ledger, home: Home, file_id: int, error: dict[str, Any]) -> FileRecord:
    """Move one file (from wherever the ledger says it is) to quarantine/ with its reason."""
    raise NotImplementedError


def fail_run_files(ledger: Ledger, home: Home, run_id: int, reason: str, max_attempts: int,
                   count_attempt: bool = True) -> None:
    """A run failed or was handed back: its files return to the queue (they stay in
    processing/) or, after max_attempts, are quarantined with the run's reason."""
    raise NotImplementedError


def reconcile(ledger: Ledger, home: Home, max_attempts: int) -> dict[str, int]:
    """At start, make folders and ledger agree again after any crash:
    - CLAIMING rows: file in processing/ -> hash it, queued (or duplicate); still in
      inbox/ -> forget the row (the scan will claim it); nowhere -> vanished;
    - files in processing/ with no ledger row -> adopt them as queued;
    - runs left 'running' -> interrupted, their files queued again (attempt counted;
      quarantined past max_attempts);
    - rows whose recorded path differs from where the file is (a move was interrupted)
      -> finish the move (and write a missing error.json).
    Returns counts of what was repaired, for the start-up log line."""
    raise NotImplementedError


def requeue(ledger: Ledger, home: Home, name: str) -> Path:
    """Put a quarantined file back into the inbox (the operator fixed it): removes its
    error.json, marks the old row REQUEUED, moves the file to inbox/<name>. Raises
    RetrainError (one line, listing quarantined names) when there is no such file."""
    raise NotImplementedError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    raise NotImplementedError
