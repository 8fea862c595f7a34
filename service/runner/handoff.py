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

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import RetrainError
from core.files import sha256_file
from service.intake.home import Home
from service.intake.inbox import drop_into_inbox
from service.intake.ledger import FileRecord, FileState, Ledger, RunRecord
from service.intake.requests import OPERATOR_RUN, ask_for_run, withdraw_run_request
from service.runner.runs import run_line
from service.status import daemon_status

FINAL = (FileState.ARCHIVED, FileState.QUARANTINED, FileState.DUPLICATE, FileState.EXPIRED)


@dataclass
class HandedFile:
    source: Path
    sha256: str
    record: FileRecord | None = None


def daemon_holds(home: Home) -> bool:
    return home.exists() and daemon_status(home)["alive"]


def hand_to_daemon(sources: list[Path], home: Home, poll_seconds: float = 0.05) -> int:
    """Drop the files into the daemon's inbox and wait for their outcome."""
    started = time.time()
    handed = [HandedFile(source, sha256_file(source)) for source in sources]
    for item in handed:
        drop_into_inbox(item.source, home.inbox)
    print(f"retrain: a daemon holds {home.root}; {len(handed)} file(s) handed to it", file=sys.stderr)
    note_pause(home)
    with Ledger(home.ledger_path, readonly=True) as ledger:
        while not all(_settled(ledger, item, started) for item in handed):
            if not daemon_status(home)["alive"]:
                raise RetrainError("the daemon stopped before the files were used; they stay in its "
                                   "inbox or queue and are taken at its next start")
            time.sleep(poll_seconds)
        return report_handed(ledger, handed)


def ask_daemon(home: Home, what: str = "window", since: float | None = None, poll_seconds: float = 0.05) -> int:
    """Ask the daemon for a run (``what``: "window", a retraining on its current window;
    "backfill", the archived scoring batches scored again) and wait for its end: exit 0
    when it completed (deployed, rejected, kept, scored), 1 otherwise."""
    request_id = ask_for_run(home.requests, what, since)
    doing = "retrains on its current window" if what == "window" else "scores its archived scoring batches again"
    print(f"retrain: a daemon holds {home.root}; it {doing} now", file=sys.stderr)
    note_pause(home)
    command = "retrain run" if what == "window" else "retrain backfill"
    with Ledger(home.ledger_path, readonly=True) as ledger:
        asked, run = None, None
        while run is None or run.state == "running":
            time.sleep(poll_seconds)
            if asked is None:
                asked = next((e for e in ledger.events(OPERATOR_RUN, limit=50) if e.get("request") == request_id), None)
                if asked is not None and asked["run"] is None:
                    print("retrain: no archived scoring batch to score again", file=sys.stderr)
                    return 0
            run = ledger.get_run(asked["run"]) if asked is not None else None
            if (run is None or run.state == "running") and not daemon_status(home)["alive"]:
                if run is None and withdraw_run_request(home.requests, request_id):
                    raise RetrainError(f"the daemon stopped before it took the request; run `{command}` again")
                raise RetrainError(f"the daemon stopped during the run; run `{command}` again")
        print_run(ledger, run)
    return 0 if run.state == "completed" and run.decision != "no_valid_data" else 1


def note_pause(home: Home) -> None:
    """A paused deployment starts no run: say so, or the wait would look like a hang."""
    status = daemon_status(home)
    if status.get("paused"):
        print(f"retrain: {status['deployment']} is paused: the run starts once it is resumed "
              "(`retrain resume`)", file=sys.stderr)


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
        print_run(ledger, run)
    if not runs or all(r.decision == "no_valid_data" for r in runs.values()):
        return 1
    return code


def print_run(ledger: Ledger, run: RunRecord) -> None:
    """The line a run of ``retrain run``'s own prints: on stdout when it completed, as an
    error on stderr otherwise."""
    if run.state == "completed":
        print(run_line(ledger, run))
    else:
        print(f"retrain: error: {run_line(ledger, run)}", file=sys.stderr)
