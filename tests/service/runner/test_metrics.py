"""The daemon's Prometheus metrics, read from a real ledger and registry at scrape time and
served over HTTP by prometheus_client's own server."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from flows.models.registry import ModelRegistry
from service.intake.home import Home
from service.intake.ledger import FileState, Ledger
from service.runner.metrics import serve_daemon_metrics


def scrape(home: Home) -> dict[str, dict[tuple, float]]:
    with serve_daemon_metrics(home, "127.0.0.1", 0) as port:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def queued_file(ledger: Ledger, name: str) -> int:
    record = ledger.begin_claim(name, f"processing/{{id}}-{name}", time.time())
    return ledger.finish_claim(record.id, name * 8, 10).id


def test_daemon_metrics_from_the_ledger_and_the_registry(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    ledger = Ledger(home.ledger_path)
    try:
        first, second, waiting = (queued_file(ledger, n) for n in ("a", "b", "c"))
        run = ledger.start_run([first])
        ledger.complete_run(run.id, decision="deployed", reason="better", flow_run_id=None, model_version="v0001",
                            metric="roc_auc", details={"candidate": {"roc_auc": 0.9}}, archived={first: "archive/a"},
                            quarantined={})
        run = ledger.start_run([second])
        ledger.complete_run(run.id, decision="rejected", reason="worse", flow_run_id=None, model_version="v0002",
                            metric="roc_auc", details={"live": {"metric": "roc_auc", "version": "v0001", "value": 0.81},
                                                       "drift": {"statistic": "psi", "scores": {"age": 0.2, "plan": 0.05}}},
                            archived={second: "archive/b"}, quarantined={})
        ledger.fail_run(ledger.start_run([waiting]).id, "crashed", max_attempts=3, quarantine_path={})
    finally:
        ledger.close()
    model = tmp_path / "model.skops"
    model.write_bytes(b"model")
    registry = ModelRegistry(home.registry)
    registry.promote(registry.register(model, {"decision": "deployed"}).version)

    found = scrape(home)
    assert found["retrain_files"][(("state", FileState.ARCHIVED.value),)] == 2
    assert found["retrain_files"][(("state", FileState.QUEUED.value),)] == 1
    assert found["retrain_queue_files"][()] == 1
    assert found["retrain_runs_total"] == {(("decision", "deployed"),): 1, (("decision", "rejected"),): 1,
                                           (("decision", "failed"),): 1}
    assert found["retrain_run_in_progress"][()] == 0
    assert 0 <= found["retrain_seconds_since_last_run"][()] < 600
    assert 0 <= found["retrain_seconds_since_last_deployment"][()] < 600
    assert found["retrain_current_model"] == {(("version", "v0001"),): 1}
    assert found["retrain_live_metric"] == {(("metric", "roc_auc"), ("version", "v0001")): 0.81}
    assert found["retrain_drift"] == {(("name", "age"),): 0.2, (("name", "plan"),): 0.05}


def test_a_new_home_shows_what_it_knows_and_nothing_it_does_not(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    Ledger(home.ledger_path).close()
    found = scrape(home)
    assert found["retrain_queue_files"][()] == 0
    assert found["retrain_run_in_progress"][()] == 0
    for absent in ("retrain_seconds_since_last_run", "retrain_seconds_since_last_deployment",
                   "retrain_current_model", "retrain_live_metric", "retrain_drift"):
        assert absent not in found
