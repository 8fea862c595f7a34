"""The run session's first step (lock, ledger, start-up repair), without Prefect or Dask;
``start_runtime`` runs in the integration tests of ``retrain watch`` and ``retrain run``."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import pytest
from invariants import check_invariant

from core.errors import RetrainError
from flows.models.registry import ModelRegistry
from service.config import Settings
from service.intake.home import Home
from service.intake.inbox import claim_file
from service.intake.ledger import FileState, Ledger
from service.intake.lock import lock_holder
from service.runner.session import RunSession


def _unclean_stop(home: Home) -> tuple[int, int]:
    """What a process killed mid-run leaves: a running run with its file in processing/,
    a half-written model version, a deploy lease. Returns (run id, file id)."""
    home.ensure()
    (home.inbox / "a.csv").write_text("age,churned\n1,0\n")
    ledger = Ledger(home.ledger_path)
    try:
        record = claim_file(ledger, home, home.inbox / "a.csv", 1.0, 10_000)
        run = ledger.start_run([record.id])
    finally:
        ledger.close()
    registry = ModelRegistry(home.registry)
    (registry.staging / "v0001-0123abcd").mkdir(parents=True)
    (registry.staging / "v0001-0123abcd" / "model.skops").write_bytes(b"half")
    registry.take_lease("run 1")
    return run.id, record.id


def test_open_home_locks_and_repairs_what_an_unclean_stop_left(tmp_path: Path, caplog) -> None:
    home = Home(tmp_path / "home")
    run_id, file_id = _unclean_stop(home)
    registry = ModelRegistry(home.registry)
    caplog.set_level(logging.INFO, logger="retrain")
    with ExitStack() as resources:
        session = RunSession(Settings(home=home.root), "retrain run", resources)
        ledger = session.open_home()
        assert "retrain run" in (lock_holder(home.state / "daemon.lock") or "")
        assert ledger.get_run(run_id).state == "interrupted"
        assert ledger.get(file_id).state == FileState.QUEUED  # back in the queue
        assert not any(registry.staging.iterdir())  # the half-written version is gone
        assert registry.lease_holder() is None  # the killed run may not deploy any more
        with pytest.raises(RetrainError, match="retrain run"):
            RunSession(Settings(home=home.root), "retrain watch", ExitStack()).open_home()
    assert lock_holder(home.state / "daemon.lock") is None
    assert "recovered after an unclean stop: runs_interrupted=1; removed 1 half-written model(s)" \
        in caplog.text
    check_invariant(home.root)


def test_a_clean_home_opens_without_a_repair_line(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="retrain")
    with ExitStack() as resources:
        ledger = RunSession(Settings(home=tmp_path / "home"), "retrain watch", resources).open_home()
        assert ledger.counts()["queued"] == 0
    assert "recovered" not in caplog.text
