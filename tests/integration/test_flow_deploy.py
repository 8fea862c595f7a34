"""The flow itself on the session's real Prefect API and Dask cluster: the gate,
reproducibility, deploy retries and rollback, regression, serving during a switch."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from flow_fixtures import call_flow, request_for

from core.files import sha256_file
from flows.models.registry import ModelRegistry
from service.sample import write_samples

pytestmark = pytest.mark.integration


def test_same_files_and_config_give_identical_metrics(tmp_path: Path, dask_address: str) -> None:
    paths = write_samples(tmp_path / "data", files=2, rows=3000, seed=21)
    first = call_flow(request_for(tmp_path / "a", paths), dask_address).outcome
    second = call_flow(request_for(tmp_path / "b", paths), dask_address).outcome
    assert first.decision == second.decision == "deployed"
    assert first.candidate_metrics == second.candidate_metrics
    assert first.holdout_rows == second.holdout_rows > 0


def test_deploy_that_fails_twice_then_succeeds(tmp_path: Path, dask_address: str,
                                               prefect_api_url: str) -> None:
    counter = tmp_path / "attempts"
    hook = tmp_path / "hook.py"
    hook.write_text(
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        "sys.exit(0 if n >= 3 else 1)\n")
    paths = write_samples(tmp_path / "data", files=1, rows=3000, seed=22)
    request = request_for(tmp_path, paths, deploy={"retries": 3, "retry_delay_seconds": 0.1,
                                                   "hook_command": f"{sys.executable} {hook}"})
    result = call_flow(request, dask_address)
    assert result.outcome.decision == "deployed", result
    assert counter.read_text() == "3"
    registry = ModelRegistry(tmp_path / "registry")
    assert [v.version for v in registry.versions()] == ["v0001"]
    assert registry.current_version() == "v0001" and registry.get("v0001").decision == "deployed"
    # The retries are visible in Prefect: the deploy task run went through AwaitingRetry.
    body = {"flow_runs": {"id": {"any_": [result.flow_run_id]}}, "task_runs": {"name": {"like_": "deploy_model"}}}
    task_runs = httpx.post(f"{prefect_api_url}/task_runs/filter", json=body, timeout=30).json()
    assert len(task_runs) == 1 and task_runs[0]["run_count"] == 3


def test_lineage_is_recorded_as_asset_materializations(tmp_path: Path, dask_address: str,
                                                       prefect_api_url: str) -> None:
    """data files -> the version (every candidate) -> current (deployed versions only)."""
    paths = write_samples(tmp_path / "data", files=2, rows=2000, seed=29)
    result = call_flow(request_for(tmp_path, paths), dask_address)
    assert result.outcome.decision == "deployed"
    body = {"filter": {"event": {"prefix": ["prefect.asset.materialization"]},
                       "occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 50}
    models = f"retrain://models{(tmp_path / 'registry').resolve().as_posix()}"
    wait = __import__("harness").wait_for
    events = wait(lambda: (found := {e["resource"]["prefect.resource.id"]: e for e in httpx.post(
        f"{prefect_api_url}/events/filter", json=body, timeout=30).json()["events"]
        if e["resource"]["prefect.resource.id"].startswith(models)}) and len(found) == 2 and found,
        30, "the materialization events")

    def upstream(event: dict) -> set[str]:
        assert event["event"] == "prefect.asset.materialization.succeeded"
        return {r["prefect.resource.id"] for r in event["related"] if r.get("prefect.resource.role") == "asset"}

    assert {f"retrain://data/{sha256_file(p)}" for p in paths} <= upstream(events[f"{models}/v0001"])
    assert f"{models}/v0001" in upstream(events[f"{models}/current"])


def test_deploy_that_keeps_failing_leaves_the_champion_current(tmp_path: Path, dask_address: str) -> None:
    good = write_samples(tmp_path / "data", files=1, rows=3000, seed=23)
    assert call_flow(request_for(tmp_path, good), dask_address).outcome.decision == "deployed"
    more = write_samples(tmp_path / "data", files=1, rows=3000, seed=24)
    request = request_for(tmp_path, more, window=good, evaluation={"tolerance": 1.0},
                          deploy={"retries": 1, "retry_delay_seconds": 0.1, "hook_command": "false"})
    outcome = call_flow(request, dask_address).outcome
    assert outcome.decision == "deploy_failed", outcome
    assert "rolled back" in outcome.reason
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.current_version() == "v0001"
    assert registry.get("v0002").decision == "deploy_failed"


def test_regression_end_to_end(tmp_path: Path, dask_address: str) -> None:
    paths = write_samples(tmp_path / "data", files=2, rows=3000, seed=25, task="regression")
    request = request_for(tmp_path, paths, schema={"target": "monthly_spend", "task": "regression",
                                                   "drop": ["customer_id"]},
                          evaluation={"threshold": 0.5}, model={"estimator": "ridge"})
    outcome = call_flow(request, dask_address).outcome
    assert outcome.decision == "deployed", outcome
    assert outcome.metric == "r2" and outcome.candidate_metrics["r2"] > 0.5
    assert {"rmse", "mae"} <= set(outcome.candidate_metrics)
    # rmse is lower-is-better: a threshold of 1.0 cannot be met by an rmse of several units.
    strict = request_for(tmp_path, write_samples(tmp_path / "d2", files=1, rows=3000, seed=26,
                                                 task="regression"), window=paths,
                         schema={"target": "monthly_spend", "task": "regression", "drop": ["customer_id"]},
                         evaluation={"metric": "rmse", "threshold": 1.0}, model={"estimator": "ridge"})
    refused = call_flow(strict, dask_address).outcome
    assert refused.decision == "rejected", refused
    assert "rmse" in refused.reason and "> threshold 1.0000" in refused.reason


def test_serve_answers_during_switches_without_errors(tmp_path: Path, dask_address: str) -> None:
    from service.config import ServeSpec
    from service.serving.app import create_app, running_server

    paths = write_samples(tmp_path / "data", files=1, rows=2000, seed=27)
    assert call_flow(request_for(tmp_path, paths), dask_address).outcome.decision == "deployed"
    more = write_samples(tmp_path / "data", files=1, rows=2000, seed=28)
    assert call_flow(request_for(tmp_path, more, window=paths, evaluation={"tolerance": 1.0}),
                     dask_address).outcome.decision == "deployed"
    registry = ModelRegistry(tmp_path / "registry")
    rows = [{"age": 40, "income": 50000, "tenure_months": 12, "usage_hours": 20, "support_calls": 3,
             "plan": "basic", "region": "south"}]
    errors, versions = [], set()
    stop = threading.Event()

    with running_server(create_app(registry, [], ServeSpec())) as base:
        def hammer() -> None:
            with httpx.Client(base_url=base, timeout=10) as client:
                while not stop.is_set():
                    try:
                        answer = client.post("/predict", json=rows)
                        versions.add(answer.json()["version"])
                        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
                    except Exception as exc:  # any failure is a finding
                        errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for i in range(30):
                registry.promote("v0001" if i % 2 else "v0002")
                time.sleep(0.05)  # long enough for requests to be answered between switches
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert errors == []
        assert versions <= {"v0001", "v0002"} and versions

        assert httpx.get(f"{base}/health").json()["status"] == "ok"
        bad = httpx.post(f"{base}/predict", content=b"not json", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and "JSON" in bad.json()["error"]
        missing = httpx.post(f"{base}/predict", json=[{"age": 3}])
        assert missing.status_code == 422 and "lacks feature(s)" in missing.json()["error"]
        csv = httpx.post(f"{base}/predict", content=paths[0].read_bytes(), headers={"Content-Type": "text/csv"},
                         timeout=60)
        assert csv.status_code == 200 and len(csv.json()["predictions"]) == 2000


def test_a_run_preprocesses_only_what_is_new(tmp_path: Path, dask_address: str, prefect_api_url: str) -> None:
    def preprocess_line(flow_run_id: str) -> str:
        body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}}
        lines = __import__("harness").wait_for(
            lambda: [log["message"] for log in httpx.post(f"{prefect_api_url}/logs/filter", json=body,
                                                             timeout=30).json()
                     if log["message"].startswith("preprocessed")], 30, "the flow's log line")
        return lines[0]

    first = write_samples(tmp_path / "data", files=2, rows=2000, seed=30)
    assert call_flow(request_for(tmp_path, first), dask_address).outcome.decision == "deployed"
    new = write_samples(tmp_path / "data", files=1, rows=2000, seed=31)
    result = call_flow(request_for(tmp_path, new, window=first, evaluation={"tolerance": 1.0}), dask_address)
    assert result.outcome.window_files == 3 and result.outcome.decision == "deployed"
    assert preprocess_line(result.flow_run_id) == "preprocessed 3 partitions (2 from cache) of 3 files"
    # The same files under another schema are preprocessed again.
    changed = call_flow(request_for(tmp_path, new, window=first, evaluation={"tolerance": 1.0},
                                    schema={"drop": ["customer_id", "region"]}), dask_address)
    assert changed.outcome.decision == "deployed"
    assert preprocess_line(changed.flow_run_id) == "preprocessed 3 partitions (0 from cache) of 3 files"


def test_a_search_past_its_time_budget_starts_no_more_candidates(tmp_path: Path, dask_address: str) -> None:
    from distributed import Client

    with Client(dask_address) as client:
        threads = sum(client.nthreads().values())
    paths = write_samples(tmp_path / "data", files=1, rows=2000, seed=27)
    candidates = [{"estimator": "logistic_regression", "params": {"C": 0.5 + i}} for i in range(threads + 2)]
    # A budget spent at once: one candidate per thread starts, the others wait and are not tried.
    request = request_for(tmp_path, paths, model={"candidates": candidates, "search_seconds": 1e-6})
    outcome = call_flow(request, dask_address).outcome
    assert outcome.decision == "deployed", outcome
    training = ModelRegistry(tmp_path / "registry").get("v0001").lineage["training"]
    recorded = training["candidates"]
    assert [c["error"] is None for c in recorded] == [True] * threads + [False, False]
    assert all(c["error"].startswith("not tried: the search had run") for c in recorded[threads:])
    assert sum(c["chosen"] for c in recorded[:threads]) == 1
    assert training["train_rows"] + outcome.holdout_rows == 2000
