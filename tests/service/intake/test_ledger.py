from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from core.errors import RetrainError
from service.intake.ledger import SCHEMA_VERSION, FileState, Ledger


@pytest.fixture
def ledger(tmp_path: Path):
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
    yield ledger
    ledger.close()


def _queued(ledger: Ledger, name: str, sha: str) -> int:
    record = ledger.begin_claim(name, f"/p/{{id}}-{name}", 1.0)
    assert record.path == f"/p/{record.id}-{name}" and record.state == FileState.CLAIMING
    return ledger.finish_claim(record.id, sha, 10).id


def test_wal_mode_and_schema_version(ledger: Ledger) -> None:
    assert ledger._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def _set_user_version(path: Path, version: int) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version={version}")


def test_a_ledger_of_a_newer_retrain_is_refused_an_older_one_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    _set_user_version(path, SCHEMA_VERSION + 1)
    for readonly in (False, True):
        with pytest.raises(RetrainError, match=rf"written by a newer retrain \(schema {SCHEMA_VERSION + 1}"
                                               r".*; upgrade retrain$"):
            Ledger(path, readonly=readonly)
    _set_user_version(path, 0)  # older (or never set): opened and brought up to date
    ledger = Ledger(path)
    try:
        assert ledger._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert ledger.counts()["queued"] == 0
    finally:
        ledger.close()


def test_claim_run_complete_cycle(ledger: Ledger) -> None:
    a, b, c = (_queued(ledger, n, s) for n, s in [("a.csv", "s1"), ("b.csv", "s2"), ("c.csv", "s3")])
    run = ledger.start_run([a, b, c])
    assert {ledger.get(i).state for i in (a, b, c)} == {FileState.RUNNING}
    ledger.set_flow_run_id(run.id, "fr-1")
    done = ledger.complete_run(run.id, decision="deployed", reason="ok", flow_run_id=None,
                               model_version="v0001", metric="roc_auc", details={"candidate": {"roc_auc": 0.9}},
                               archived={a: "/arch/a.csv", b: "/arch/b.csv"},
                               quarantined={c: ("/q/c.csv", {"reason": "bad"})})
    assert done.state == "completed" and done.flow_run_id == "fr-1" and done.model_version == "v0001"
    assert done.details["candidate"]["roc_auc"] == 0.9
    assert ledger.get(a).state == FileState.ARCHIVED and ledger.get(a).run_id == run.id
    assert ledger.get(c).error == {"reason": "bad"}
    assert [f.id for f in ledger.window(0)] == [a, b]
    assert [f.id for f in ledger.window(1)] == [b]
    counts = ledger.counts()
    assert counts["archived"] == 2 and counts["quarantined"] == 1 and sum(counts.values()) == 3


def test_duplicates_are_found_only_among_used_files(ledger: Ledger) -> None:
    first = _queued(ledger, "a.csv", "same")
    second = _queued(ledger, "a2.csv", "same")
    assert ledger.find_used("same", exclude_id=second).id == first
    assert ledger.find_used("same", exclude_id=first).id == second
    assert ledger.find_used("other") is None
    ledger.move(first, FileState.QUARANTINED, "/q/a.csv", error={"reason": "x"})
    ledger.move(second, FileState.QUARANTINED, "/q/a2.csv", error={"reason": "x"})
    assert ledger.find_used("same") is None  # rejected content may come back fixed


def test_failed_runs_requeue_then_quarantine(ledger: Ledger) -> None:
    fid = _queued(ledger, "a.csv", "s")
    for attempt in (1, 2):
        run = ledger.start_run([fid])
        ledger.fail_run(run.id, "boom", max_attempts=3, quarantine_path={fid: "/q/a.csv"})
        record = ledger.get(fid)
        assert record.state == FileState.QUEUED and record.attempts == attempt and record.run_id is None
    run = ledger.start_run([fid])
    handed_back = ledger.fail_run(run.id, "stopping", 3, {fid: "/q/a.csv"}, count_attempt=False,
                                  run_state="interrupted")
    assert handed_back.state == "interrupted" and ledger.get(fid).attempts == 2
    run = ledger.start_run([fid])
    ledger.fail_run(run.id, "boom again", 3, {fid: "/q/a.csv"})
    record = ledger.get(fid)
    assert record.state == FileState.QUARANTINED and record.path == "/q/a.csv"
    assert "3 runs with this file failed" in record.error["reason"] and "boom again" in record.error["reason"]


def test_vanished_claim_and_events(ledger: Ledger) -> None:
    record = ledger.begin_claim("gone.csv", "/p/{id}-gone.csv", 1.0)
    ledger.forget_claim(record.id)
    assert ledger.get(record.id).state == FileState.VANISHED
    ledger.record_event("rollback", {"from": "v2", "to": "v1"})
    assert ledger.events("rollback")[0]["to"] == "v1"
    assert ledger.interrupted_runs() == []


def test_readonly_reader_sees_writes_and_cannot_write(tmp_path: Path, ledger: Ledger) -> None:
    _queued(ledger, "a.csv", "s")
    reader = Ledger(ledger.path, readonly=True)
    try:
        assert reader.counts()["queued"] == 1
        _queued(ledger, "b.csv", "t")
        assert reader.counts()["queued"] == 2
        with pytest.raises(Exception):
            reader.begin_claim("c.csv", "/p/c", 1.0)
    finally:
        reader.close()
    with pytest.raises(RetrainError, match="no ledger"):
        Ledger(tmp_path / "nowhere.sqlite", readonly=True)


def test_concurrent_writers_from_threads(ledger: Ledger) -> None:
    errors: list[BaseException] = []

    def claim_many(prefix: str) -> None:
        try:
            for i in range(100):
                _queued(ledger, f"{prefix}{i}.csv", f"{prefix}{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claim_many, args=(p,)) for p in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert ledger.counts()["queued"] == 400
