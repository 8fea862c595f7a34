"""What a run takes from earlier runs (small batches not scored yet, rows since the champion)
and what it leaves in the ledger for the next: plain functions on a real ledger and home."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from core.records import FileOutcome, LiveMetric, PolicyDecision, RunOutcome
from flows.models.registry import ModelRegistry
from service.config import load_settings
from service.intake.home import Home
from service.intake.inbox import claim_file
from service.intake.ledger import FileState, Ledger
from service.intake.requests import ask_for_run, take_run_request, withdraw_run_request
from service.runner.runs import FlowResult, build_request, record_result
from service.sample import sample_frame, write_samples


def batch(home: Home, ledger: Ledger, name: str) -> int:
    path = home.inbox / name
    path.write_text(f"a,b\n1,{name}\n")
    return claim_file(ledger, home, path, 1.0, 10_000).id


def finish(ledger: Ledger, home: Home, file_id: int, decision: str, rows: int, live: LiveMetric | None,
           unscored: list[int]) -> None:
    run = ledger.start_run([file_id])
    outcome = RunOutcome(flow_run_id=None, decision=decision, reason="r", live=live,
                         files=[FileOutcome(file_id=file_id, name="x", accepted=True, rows=rows)],
                         policy=PolicyDecision(retrain=decision != "kept", reason="r"),
                         unscored_file_ids=unscored)
    record_result(ledger, home, run, FlowResult(None, outcome), load_settings(home=home.root, environ={}))


def test_small_kept_batches_are_carried_until_a_run_judges_them(home: Home, ledger: Ledger) -> None:
    settings = load_settings(home=home.root, environ={})
    few = LiveMetric(version="v0001", metric="roc_auc", value=0.8, rows=120, metrics={}, file_ids=[1],
                     enough=False)
    first = batch(home, ledger, "one.csv")
    finish(ledger, home, first, "kept", 120, few, [first])
    record = ledger.get_run(1)
    assert record.details["live"]["enough"] is False and record.details["unscored_file_ids"] == [first]
    assert record.details["policy"]["retrain"] is False and record.decision == "kept"
    assert ledger.get(first).state == FileState.ARCHIVED  # kept files join the window

    second = batch(home, ledger, "two.csv")
    run = ledger.start_run([second])
    request = build_request(settings, home, ledger, run)
    assert [r.file_id for r in request.unscored_files] == [first]
    assert request.unscored_files[0].path == ledger.get(first).path
    ledger.fail_run(run.id, "crash", 3, {})  # a failed run does not lose what was carried
    again = build_request(settings, home, ledger, ledger.start_run([second]))
    assert [r.file_id for r in again.unscored_files] == [first]


def test_rows_since_the_champion_count_the_runs_after_it(home: Home, ledger: Ledger, tmp_path: Path) -> None:
    settings = load_settings(home=home.root, environ={})
    finish(ledger, home, batch(home, ledger, "old.csv"), "deployed", 1000, None, [])
    model = tmp_path / "model.skops"
    model.write_bytes(b"m")
    registry = ModelRegistry(home.registry)
    created = datetime.now(timezone.utc) + timedelta(seconds=1)
    registry.register(model, {"created_at": created.isoformat(timespec="seconds")})
    registry.promote("v0001")
    assert build_request(settings, home, ledger, ledger.start_run([])).rows_since_champion == 0

    time.sleep(max(0.0, created.timestamp() - time.time()) + 0.05)
    for name, rows in (("a.csv", 300), ("b.csv", 700)):
        finish(ledger, home, batch(home, ledger, name), "kept", rows, None, [])
    request = build_request(settings, home, ledger, ledger.start_run([]), requested_by="an operator")
    assert request.rows_since_champion == 1000 and request.requested_by == "an operator"


def test_operator_requests_are_taken_once_oldest_first(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert take_run_request(state) is None
    first, second = ask_for_run(state), ask_for_run(state)
    assert withdraw_run_request(state, second)
    third = ask_for_run(state)
    assert take_run_request(state).id == first
    assert not withdraw_run_request(state, first)  # already taken
    assert take_run_request(state).id == third and take_run_request(state) is None


def test_sample_shifts_move_a_feature_or_the_relation(tmp_path: Path) -> None:
    plain, moved, concept = sample_frame(4000, 1), sample_frame(4000, 1, covariate_shift=2.0), \
        sample_frame(4000, 1, concept_shift=1.0)
    assert moved["income"].median() > 2 * plain["income"].median()
    assert moved["tenure_months"].equals(plain["tenure_months"])
    assert concept.drop(columns="churned").equals(plain.drop(columns="churned"))
    calls = lambda f: f["support_calls"].corr(f["churned"])  # noqa: E731
    assert calls(plain) > 0.2 and calls(concept) < -0.2
    names = [p.name for p in write_samples(tmp_path, seed=3, covariate_shift=1.0)]
    assert names == ["batch-0003-000-covariate.csv"]
    assert pd.read_csv(tmp_path / names[0]).shape[0] == 1000

    usage = subprocess.run([sys.executable, "-m", "service.cli", "sample", "--help"], capture_output=True,
                           text=True, check=True).stdout
    assert "--covariate-shift S" in usage and "--concept-shift C" in usage and "relation" in usage
