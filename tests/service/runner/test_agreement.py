"""The registry and the ledger never disagree: a version is `current` only when its run
recorded it deployed (or an operator rolled back to it). Real ledger, real registry."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

from core.records import FileOutcome, RunOutcome
from flows.models.deploy import switch_current, undo_switch
from flows.models.registry import ModelRegistry
from service.config import load_settings
from service.intake.home import Home
from service.intake.inbox import claim_file
from service.intake.ledger import FileState, Ledger
from service.runner.agreement import mend_current, recorded_current
from service.runner.runs import FlowResult, record_result
from service.runner.session import RunSession


def _version(registry: ModelRegistry, tmp_path: Path, flow_run_id: str) -> str:
    model = tmp_path / f"{flow_run_id}.skops"
    model.write_bytes(flow_run_id.encode())
    return registry.register(model, {"flow_run_id": flow_run_id}).version


def _run_with_file(home: Home, ledger: Ledger, name: str, flow_run_id: str):
    path = home.inbox / name
    path.write_text(f"a,b\n1,{name}\n")
    record = claim_file(ledger, home, path, 1.0, 10_000)
    run = ledger.start_run([record.id])
    ledger.set_flow_run_id(run.id, flow_run_id)
    return ledger.get_run(run.id)


def _deployed(home: Home, ledger: Ledger, registry: ModelRegistry, tmp_path: Path, name: str, flow_run_id: str) -> str:
    """A run that switched `current` and recorded the deploy: the two agree."""
    run = _run_with_file(home, ledger, name, flow_run_id)
    version = _version(registry, tmp_path, flow_run_id)
    registry.promote(version)
    registry.update(version, decision="deployed")
    outcome = RunOutcome(flow_run_id=flow_run_id, decision="deployed", reason="won", model_version=version,
                         files=[FileOutcome(file_id=run.file_ids[0], name=name, accepted=True, rows=1)])
    record_result(ledger, home, run, FlowResult(flow_run_id, outcome), load_settings(home=home.root, environ={}))
    return version


def test_a_first_version_switched_by_a_run_that_failed_leaves_no_current(home: Home, ledger: Ledger,
                                                                          tmp_path: Path, caplog) -> None:
    """The deploy switched `current`, then the API went away while the task reported: the
    run failed and its file goes back to the queue; `current` must not stay the new version."""
    registry = ModelRegistry(home.registry)
    run = _run_with_file(home, ledger, "a.csv", "flow-1")
    version = _version(registry, tmp_path, "flow-1")
    registry.promote(version)
    with caplog.at_level(logging.WARNING, logger="retrain"):
        record_result(ledger, home, run, FlowResult("flow-1", None, "flow run crashed: Failed to reach API"),
                      load_settings(home=home.root, environ={}))
    assert ledger.get(run.file_ids[0]).state == FileState.QUEUED
    assert registry.current_version() is None
    assert registry.get(version).decision == "deploy_failed"
    assert "no version" in registry.get(version).reason
    assert "current is now unset, as the ledger says" in caplog.text
    assert recorded_current(ledger) is None


def test_a_later_version_is_taken_back_to_the_recorded_champion(home: Home, ledger: Ledger, tmp_path: Path) -> None:
    registry = ModelRegistry(home.registry)
    champion = _deployed(home, ledger, registry, tmp_path, "a.csv", "flow-1")
    assert mend_current(ledger, registry, "test") is None  # they agree
    run = _run_with_file(home, ledger, "b.csv", "flow-2")
    version = _version(registry, tmp_path, "flow-2")
    registry.promote(version)
    ledger.fail_run(run.id, "the daemon stopped during the run", 3, {}, count_attempt=False, run_state="interrupted")
    assert mend_current(ledger, registry, "test") == version
    assert registry.current_version() == champion
    assert recorded_current(ledger) == champion
    assert mend_current(ledger, registry, "test") is None  # idempotent


def test_an_operator_rollback_is_what_the_ledger_says(home: Home, ledger: Ledger, tmp_path: Path) -> None:
    registry = ModelRegistry(home.registry)
    first = _deployed(home, ledger, registry, tmp_path, "a.csv", "flow-1")
    second = _deployed(home, ledger, registry, tmp_path, "b.csv", "flow-2")
    assert registry.current_version() == second
    registry.rollback_to(first)
    ledger.record_event("rollback", {"from": second, "to": first, "by": "retrain models rollback"})
    assert mend_current(ledger, registry, "test") is None and registry.current_version() == first
    registry.promote(second)  # back to a version its run recorded deployed
    assert mend_current(ledger, registry, "test") is None and registry.current_version() == second


def test_a_current_no_run_of_the_ledger_made_is_left_alone(home: Home, ledger: Ledger, tmp_path: Path) -> None:
    registry = ModelRegistry(home.registry)
    version = _version(registry, tmp_path, "made-elsewhere")
    registry.promote(version)
    assert mend_current(ledger, registry, "test") is None and registry.current_version() == version


def test_start_up_repair_mends_a_crash_between_the_switch_and_the_record(home: Home, tmp_path: Path,
                                                                         caplog) -> None:
    """A kill after the switch and before the ledger recorded the run: at the next start the
    run is interrupted, its file queued again, and `current` is what the ledger says."""
    ledger = Ledger(home.ledger_path)
    registry = ModelRegistry(home.registry)
    champion = _deployed(home, ledger, registry, tmp_path, "a.csv", "flow-1")
    run = _run_with_file(home, ledger, "b.csv", "flow-2")  # ...then the daemon was killed mid-deploy
    registry.promote(_version(registry, tmp_path, "flow-2"))
    ledger.close()
    with ExitStack() as resources, caplog.at_level(logging.INFO, logger="retrain"):
        session = RunSession(load_settings(home=home.root, environ={}), "test", resources)
        session.open_home()
        assert session.registry.current_version() == champion
        assert session.ledger.get_run(run.id).state == "interrupted"
        assert session.ledger.get(run.file_ids[0]).state == FileState.QUEUED
    assert "current_mended=1" in caplog.text and "start-up repair: current was v0002" in caplog.text


def test_a_retried_deploy_attempt_does_not_take_its_own_version_for_the_champion(home: Home,
                                                                                 tmp_path: Path) -> None:
    """An attempt that switched and lost its result, then a retry that finds the version
    current: the rollback goes to the champion before the deploy, not to the version."""
    registry = ModelRegistry(home.registry)
    champion, version = _version(registry, tmp_path, "f1"), _version(registry, tmp_path, "f2")
    registry.promote(champion)
    registry.take_lease("run 2")
    assert switch_current(registry, version, "run 2") == champion
    assert switch_current(registry, version, "run 2") == version  # the retry: already switched
    assert undo_switch(registry, version, champion) == f"rolled back to {champion}"
    assert registry.current_version() == champion and registry.get(version).decision == "deploy_failed"
    assert undo_switch(registry, version, champion).startswith("each attempt was rolled back")


def test_a_first_deploy_undone_leaves_no_current(home: Home, tmp_path: Path) -> None:
    registry = ModelRegistry(home.registry)
    version = _version(registry, tmp_path, "f1")
    registry.take_lease("run 1")
    switch_current(registry, version, "run 1")
    assert undo_switch(registry, version, None) == "rolled back: no version is current"
    assert registry.current_version() is None

