from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from invariants import check_invariant

from core.errors import RetrainError
from service.intake.inbox import (
    Home,
    archive_files,
    cancel_run_files,
    claim_file,
    destination,
    fail_run_files,
    quarantine_file,
    reconcile,
    requeue,
    sha256_file,
)
from service.intake.ledger import FileState, Ledger

MAX = 10_000


def drop(home: Home, name: str, content: str = "a,b\n1,2\n") -> Path:
    path = home.inbox / name
    path.write_text(content, encoding="utf-8")
    return path


def test_claim_moves_hashes_and_queues(home: Home, ledger: Ledger) -> None:
    path = drop(home, "sales 2026 é.csv")
    record = claim_file(ledger, home, path, 1.0, MAX)
    assert record.state == FileState.QUEUED
    assert not path.exists()
    assert Path(record.path) == home.processing / f"{record.id}-sales 2026 é.csv"
    assert record.sha256 == sha256_file(Path(record.path))
    check_invariant(home)


def test_same_content_is_a_duplicate_new_content_same_name_is_not(home: Home, ledger: Ledger) -> None:
    first = claim_file(ledger, home, drop(home, "a.csv"), 1.0, MAX)
    again = claim_file(ledger, home, drop(home, "a.csv"), 2.0, MAX)
    assert again.state == FileState.DUPLICATE and again.duplicate_of == first.id
    assert Path(again.path) == home.duplicates / "a.csv"
    changed = claim_file(ledger, home, drop(home, "a.csv", "a,b\n3,4\n"), 3.0, MAX)
    assert changed.state == FileState.QUEUED
    check_invariant(home)


def test_vanished_file_is_only_logged(home: Home, ledger: Ledger) -> None:
    assert claim_file(ledger, home, home.inbox / "never.csv", 1.0, MAX) is None
    assert sum(ledger.counts().values()) == 0


def _quarantined(home: Home, ledger: Ledger, path: Path, expected: str):
    record = claim_file(ledger, home, path, 1.0, MAX)
    assert record.state == FileState.QUARANTINED
    note = json.loads(Path(record.path + ".error.json").read_text())
    assert expected in note["reason"] and note["hint"] and note["requeue"].startswith("retrain requeue")
    check_invariant(home)
    return record


def test_symlink_is_quarantined_unfollowed(home: Home, ledger: Ledger, tmp_path: Path) -> None:
    target = tmp_path / "secret.csv"
    target.write_text("do not touch\n")
    os.symlink(target, home.inbox / "link.csv")
    record = _quarantined(home, ledger, home.inbox / "link.csv", "symbolic link")
    assert Path(record.path).is_symlink() and target.read_text() == "do not touch\n"


def test_directory_named_csv_is_quarantined(home: Home, ledger: Ledger) -> None:
    (home.inbox / "x.csv").mkdir()
    (home.inbox / "x.csv" / "inside.txt").write_text("x")
    record = _quarantined(home, ledger, home.inbox / "x.csv", "directory")
    assert (Path(record.path) / "inside.txt").exists()


def test_fifo_and_socket_are_never_opened(home: Home, ledger: Ledger) -> None:
    os.mkfifo(home.inbox / "pipe.csv")  # opening it for reading would block this test
    _quarantined(home, ledger, home.inbox / "pipe.csv", "FIFO")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(home.inbox / "s.csv"))
    try:
        _quarantined(home, ledger, home.inbox / "s.csv", "socket")
    finally:
        sock.close()


def test_oversized_and_non_csv_names(home: Home, ledger: Ledger) -> None:
    _quarantined(home, ledger, drop(home, "big.csv", "x" * (MAX + 1)), "over the limit")
    _quarantined(home, ledger, drop(home, "notes.txt"), "not a .csv file")


def test_archive_and_quarantine_after_a_run(home: Home, ledger: Ledger) -> None:
    good = claim_file(ledger, home, drop(home, "good.csv"), 1.0, MAX)
    bad = claim_file(ledger, home, drop(home, "bad.csv", "x\n"), 1.0, MAX)
    run = ledger.start_run([good.id, bad.id])
    archive_files(ledger, home, run.id, decision="deployed", reason="ok", flow_run_id="f",
                  model_version="v0001", metric="roc_auc", details={}, accepted=[good.id],
                  rejected={bad.id: {"reason": "bad.csv: missing target column 'y'", "hint": "add it"}})
    assert (home.archive / "good.csv").exists()
    note = json.loads((home.quarantine / "bad.csv.error.json").read_text())
    assert note["reason"] == "bad.csv: missing target column 'y'" and note["file_id"] == bad.id
    counts = check_invariant(home)
    assert counts["archived"] == 1 and counts["quarantined"] == 1
    # Same name again, new content: archived beside the first, nothing overwritten.
    again = claim_file(ledger, home, drop(home, "good.csv", "a,b\n9,9\n"), 2.0, MAX)
    run = ledger.start_run([again.id])
    archive_files(ledger, home, run.id, decision="rejected", reason="r", flow_run_id=None,
                  model_version=None, metric=None, details={}, accepted=[again.id], rejected={})
    assert (home.archive / f"good.{again.id}.csv").exists()
    check_invariant(home)


def test_requeue_puts_a_fixed_file_back(home: Home, ledger: Ledger) -> None:
    bad = claim_file(ledger, home, drop(home, "bad.csv"), 1.0, MAX)
    run = ledger.start_run([bad.id])
    archive_files(ledger, home, run.id, decision="no_valid_data", reason="r", flow_run_id=None,
                  model_version=None, metric=None, details={}, accepted=[],
                  rejected={bad.id: {"reason": "bad", "hint": "fix"}})
    with pytest.raises(RetrainError, match="quarantined files: bad.csv"):
        requeue(ledger, home, "nope.csv")
    target = requeue(ledger, home, "bad.csv")
    assert target == home.inbox / "bad.csv" and target.exists()
    assert not (home.quarantine / "bad.csv.error.json").exists()
    assert ledger.get(bad.id).state == FileState.REQUEUED
    again = claim_file(ledger, home, target, 2.0, MAX)
    assert again.state == FileState.QUEUED  # rejected content is not a duplicate
    check_invariant(home)


def test_failed_run_hands_files_back_then_quarantines(home: Home, ledger: Ledger) -> None:
    record = claim_file(ledger, home, drop(home, "a.csv"), 1.0, MAX)
    for _ in range(2):
        run = ledger.start_run([record.id])
        fail_run_files(ledger, home, run.id, "worker died", max_attempts=2)
    final = ledger.get(record.id)
    assert final.state == FileState.QUARANTINED and Path(final.path).exists()
    assert "worker died" in json.loads(Path(final.path + ".error.json").read_text())["reason"]
    check_invariant(home)


def test_cancelled_run_sets_its_files_aside_with_the_requeue_command(home: Home, ledger: Ledger) -> None:
    first = claim_file(ledger, home, drop(home, "a.csv"), 1.0, MAX)
    second = claim_file(ledger, home, drop(home, "b.csv", "a,b\n3,4\n"), 1.0, MAX)
    run = ledger.start_run([first.id, second.id], {"trigger": "files"})
    records = cancel_run_files(ledger, home, run.id, "v0002", "flow-run-1")
    assert [Path(r.path).parent for r in records] == [home.quarantine] * 2
    note = json.loads(Path(records[0].path + ".error.json").read_text())
    assert note["reason"] == f"run {run.id} was cancelled by an operator; `retrain requeue a.csv` to take it again"
    done = ledger.get_run(run.id)
    assert (done.state, done.decision, done.model_version) == ("cancelled", "cancelled", "v0002")
    assert done.details == {"trigger": "files"}
    check_invariant(home)
    # Taken again, the file is a new one, not a duplicate of itself.
    assert claim_file(ledger, home, requeue(ledger, home, "a.csv"), 2.0, MAX).state == FileState.QUEUED


def test_crash_between_the_cancel_and_its_moves_is_finished_at_start(home: Home, ledger: Ledger) -> None:
    record = claim_file(ledger, home, drop(home, "a.csv"), 1.0, MAX)
    run = ledger.start_run([record.id])
    target = home.quarantine / "a.csv"
    ledger.cancel_run(run.id, "cancelled", None, {record.id: (str(target), {"reason": "cancelled"})})
    reconcile(ledger, home, max_attempts=3)  # the file is still in processing/
    assert target.exists() and ledger.get(record.id).state == FileState.QUARANTINED
    check_invariant(home)


# -- crashes between any two steps --------------------------------------------------------

def test_crash_after_ledger_row_before_rename(home: Home, ledger: Ledger) -> None:
    path = drop(home, "a.csv")
    ledger.begin_claim("a.csv", str(home.processing / "{id}-a.csv"), 1.0)  # ...then killed
    repaired = reconcile(ledger, home, 3)
    assert repaired["claims_dropped"] == 1 and path.exists()  # the scan will claim it again
    record = claim_file(ledger, home, path, 2.0, MAX)
    assert record.state == FileState.QUEUED
    check_invariant(home)


def test_crash_after_rename_before_hash(home: Home, ledger: Ledger) -> None:
    path = drop(home, "a.csv")
    record = ledger.begin_claim("a.csv", str(home.processing / "{id}-a.csv"), 1.0)
    os.rename(path, record.path)  # ...then killed
    assert reconcile(ledger, home, 3)["claims_finished"] == 1
    assert ledger.get(record.id).state == FileState.QUEUED and ledger.get(record.id).sha256
    check_invariant(home)


def test_crash_between_ledger_commit_and_moves_of_a_run(home: Home, ledger: Ledger) -> None:
    good = claim_file(ledger, home, drop(home, "good.csv"), 1.0, MAX)
    bad = claim_file(ledger, home, drop(home, "bad.csv", "q\n"), 1.0, MAX)
    run = ledger.start_run([good.id, bad.id])
    ledger.complete_run(run.id, decision="deployed", reason="ok", flow_run_id=None, model_version="v1",
                        metric=None, details={}, archived={good.id: str(home.archive / "good.csv")},
                        quarantined={bad.id: (str(home.quarantine / "bad.csv"), {"reason": "bad"})})
    os.rename(good.path, home.archive / "good.csv")  # one move done, then killed
    repaired = reconcile(ledger, home, 3)
    assert repaired["moves_finished"] == 1
    assert (home.quarantine / "bad.csv.error.json").exists()
    counts = check_invariant(home)
    assert counts["archived"] == 1 and counts["quarantined"] == 1
    assert reconcile(ledger, home, 3) == {k: 0 for k in repaired}  # idempotent


def test_crash_during_a_run_requeues_its_files(home: Home, ledger: Ledger) -> None:
    record = claim_file(ledger, home, drop(home, "a.csv"), 1.0, MAX)
    run = ledger.start_run([record.id])  # ...then killed mid-run
    assert reconcile(ledger, home, 3)["runs_interrupted"] == 1
    assert ledger.get_run(run.id).state == "interrupted"
    requeued = ledger.get(record.id)
    assert requeued.state == FileState.QUEUED and requeued.attempts == 1
    check_invariant(home)


def test_unknown_file_in_processing_is_adopted_not_lost(home: Home, ledger: Ledger) -> None:
    (home.processing / "stray.csv").write_text("a\n1\n")
    assert reconcile(ledger, home, 3)["adopted"] == 1
    check_invariant(home)


def test_half_written_error_note_is_removed(home: Home, ledger: Ledger) -> None:
    record = claim_file(ledger, home, drop(home, "bad.csv"), 1.0, MAX)
    quarantine_file(ledger, home, record.id, {"reason": "bad"})
    # A write of the note cut short leaves its temporary file (write_atomically's name).
    leftover = home.quarantine / ".bad.csv.error.json.k3j2h1.tmp"
    leftover.write_text("{")
    reconcile(ledger, home, 3)
    assert not leftover.exists()
    assert json.loads((home.quarantine / "bad.csv.error.json").read_text())["reason"] == "bad"
    check_invariant(home)


def test_destination_never_overwrites(tmp_path: Path) -> None:
    assert destination(tmp_path, "a.csv", 7) == tmp_path / "a.csv"
    (tmp_path / "a.csv").write_text("x")
    assert destination(tmp_path, "a.csv", 7) == tmp_path / "a.7.csv"
