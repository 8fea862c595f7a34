"""``retrain run FILE...`` while a daemon holds the home: the files are handed to it.

They enter through the inbox, like any other file (a copy under a temporary name, then
renamed: complete when it appears), so every promise about files holds: the daemon claims
them, batches them and records them in the ledger. This process only watches the ledger
(read-only) for their outcome and prints the same result line and exit code as a run of
its own; it needs neither the Prefect API nor a cluster, so it answers in the time of
the daemon's warm run.

``retrain run`` with no file asks the daemon for a run on its current window instead
(``service.intake.requests``), and waits for that run the same way.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import RetrainError
from core.files import sha256_file
from service.intake.inbox import Home
from service.intake.ledger import FileRecord, FileState, Ledger, RunRecord
from service.intake.requests import OPERATOR_RUN, ask_for_run, withdraw_run_request
from service.status import daemon_status

FINAL = (FileState.ARCHIVED, FileState.QUARANTINED, FileState.DUPLICATE, FileState.EXPIRED)


@dataclass
class HandedFile:
    source: Path
    sha256: str
    record: FileRecord | None = None


def daemon_holds(home: Path) -> bool:
    return (home / "state").is_dir() and daemon_status(home)["alive"]


def hand_to_daemon(sources: list[Path], home: Home, poll_seconds: float = 0.05) -> int:
    """Drop the files into the daemon's inbox and wait for their outcome."""
    started = time.time()
    handed = [HandedFile(source, sha256_file(source)) for source in sources]
    for item in handed:
        drop_copy(item.source, home.inbox)
    print(f"retrain: a daemon holds {home.root}; {len(handed)} file(s) handed to it", file=sys.stderr)
    note_pause(home)
    ledger = Ledger(home.ledger_path, readonly=True)
    try:
        while not all(_settled(ledger, item, started) for item in handed):
            if not daemon_status(home.root)["alive"]:
                raise RetrainError("the daemon stopped before the files were used; they stay in its "
                                   "inbox or queue and are taken at its next start")
            time.sleep(poll_seconds)
        return report_handed(ledger, handed)
    finally:
        ledger.close()


def ask_daemon_to_retrain(home: Home, poll_seconds: float = 0.05) -> int:
    """Ask the daemon for a run on its current window and wait for its end: exit 0 when it
    completed (deployed, rejected or kept), 1 otherwise."""
    request_id = ask_for_run(home.state)
    print(f"retrain: a daemon holds {home.root}; it retrains on its current window now", file=sys.stderr)
    note_pause(home)
    ledger = Ledger(home.ledger_path, readonly=True)
    try:
        run_id, run = None, None
        while run is None or run.state == "running":
            time.sleep(poll_seconds)
            if run_id is None:
                run_id = next((e["run"] for e in ledger.events(OPERATOR_RUN, limit=50)
                               if e.get("request") == request_id), None)
            run = ledger.get_run(run_id) if run_id is not None else None
            if (run is None or run.state == "running") and not daemon_status(home.root)["alive"]:
                if run is None and withdraw_run_request(home.state, request_id):
                    raise RetrainError("the daemon stopped before it took the request; run `retrain run` again")
                raise RetrainError("the daemon stopped during the run; run `retrain run` again")
        print(_run_line(ledger, run), file=sys.stdout if run.state == "completed" else sys.stderr)
    finally:
        ledger.close()
    return 0 if run.state == "completed" and run.decision != "no_valid_data" else 1


def note_pause(home: Home) -> None:
    """A paused deployment starts no run: say so, or the wait would look like a hang."""
    status = daemon_status(home.root)
    if status.get("paused"):
        print(f"retrain: {status['deployment']} is paused: the run starts once it is resumed "
              "(`retrain resume`)", file=sys.stderr)


def drop_copy(source: Path, inbox: Path) -> Path:
    """Copy ``source`` into the inbox under a temporary name, then rename it into place
    (never over a file already waiting there)."""
    tmp = inbox / f".{source.name}.{os.getpid()}.tmp"
    shutil.copyfile(source, tmp)
    target, n = inbox / source.name, 1
    while os.path.lexists(target):
        target, n = inbox / f"{source.stem}.{n}{source.suffix}", n + 1
    os.replace(tmp, target)
    return target


def _settled(ledger: Ledger, item: HandedFile, since: float) -> bool:
    """Whether the daemon is done with this file (its run completed, or it was refused)."""
    if item.record is None:
        candidates = [r for r in ledger.files_with_sha256(item.sha256) if r.first_seen >= since - 1]
        if not candidates:
            return False
        item.record = candidates[0]
    item.record = ledger.get(item.record.id)
    return item.record.state in FINAL


def report_handed(ledger: Ledger, handed: list[HandedFile]) -> int:
    """Print what became of the files, as a run of ``retrain run`` would; the exit code:
    0 every file used, 3 a file quarantined, 1 no file used."""
    runs: dict[int, RunRecord] = {}
    code = 0
    for item in handed:
        record = item.record
        assert record is not None
        if record.state == FileState.DUPLICATE:
            print(f"retrain: {item.source.name}: same content as a file already used; not trained on again",
                  file=sys.stderr)
        elif record.state == FileState.QUARANTINED:
            print(f"retrain: error: {(record.error or {}).get('reason', 'rejected')} (quarantined as "
                  f"{record.path})", file=sys.stderr)
            code = 3
        if record.run_id is not None and record.state != FileState.DUPLICATE:
            runs[record.run_id] = ledger.get_run(record.run_id)
    for run in runs.values():
        print(_run_line(ledger, run))
    if not runs or all(r.decision == "no_valid_data" for r in runs.values()):
        return 1
    return code


def _run_line(ledger: Ledger, run: RunRecord) -> str:
    """The line ``service.runner.runs.outcome_line`` prints, from the ledger's record of the run."""
    if run.state != "completed":
        return f"retrain: error: run {run.id} {run.state}: {run.reason}"
    states = [ledger.get(fid).state for fid in run.file_ids]
    archived = sum(s == FileState.ARCHIVED for s in states)
    version = f" {run.model_version}" if run.model_version else ""
    asked = (f" (requested by {run.metrics['requested_by']}: retrained on the current window)"
             if (run.metrics or {}).get("requested_by") else "")
    return (f"run {run.id}{asked}: {run.decision}{version}: {run.reason} ({archived} file(s) archived, "
            f"{len(states) - archived} quarantined; flow run {run.flow_run_id})")
