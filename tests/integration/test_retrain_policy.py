"""Retraining when it is needed, for real: a `retrain watch` daemon (on the session's Prefect
API and Dask cluster) keeps its model on a batch like the last, retrains on a concept shift
and on an operator's request (through the daemon, then in-process once it stopped); the
flow scores small batches together and acts on drift only when max_drift is set."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from flow_fixtures import call_flow
from harness import Daemon, cli, daemon_env, runs_ended, status_json, wait_for
from invariants import check_invariant

from core.files import sha256_file
from core.records import FileRef, RetrainRequest
from core.specs import PipelineSpec
from flows.models.registry import ModelRegistry
from service.sample import write_samples

pytestmark = pytest.mark.integration


def _finished(home: Path, env: dict, n: int):
    """`retrain status --json` once the n-th run finished (the ledger is polled, not the command)."""
    return status_json(home, env) if runs_ended(home, n) else None


def test_when_needed_deploys_keeps_retrains_on_concept_shift_and_on_request(
        tmp_path: Path, prefect_api_url: str, dask_address: str) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    # The seed pattern in settings alone: accuracy, when_needed, a bar for the live metric.
    env = daemon_env(home, prefect_api_url, dask__address=dask_address, window__last_files="1",
                     evaluation__metric="accuracy", evaluation__threshold="0.6",
                     policy__retrain="when_needed", policy__min_live_metric="0.7")
    first, same, shifted = (write_samples(data, rows=2000, seed=seed, **shift)[0] for seed, shift in
                            ((1, {}), (2, {}), (3, {"concept_shift": 1.0})))
    daemon = Daemon(home, env, cwd=tmp_path)
    try:
        daemon.wait_ready()
        first.rename(home / "inbox" / first.name)
        status = wait_for(lambda: _finished(home, env, 1), 120, "the first run")
        run = status["runs"][0]
        assert (run["decision"], run["model_version"]) == ("deployed", "v0001"), (run, daemon.log())
        assert run["policy"]["triggers"] == ["no_champion"] and run["live"] is None

        # Same distribution, another seed: kept, with its live metric and drift on record.
        same.rename(home / "inbox" / same.name)
        status = wait_for(lambda: _finished(home, env, 2), 120, "the second run")
        run = status["runs"][0]
        assert run["decision"] == "kept", (run, daemon.log())
        assert run["model_version"] is None and len(ModelRegistry(home / "registry").versions()) == 1
        live = run["live"]
        assert live["version"] == "v0001" and live["metric"] == "accuracy" and live["rows"] == 2000
        assert live["enough"] and live["value"] >= 0.7 and "roc_auc" in live["metrics"]
        assert run["reason"].startswith("kept v0001: accuracy ") and "on 2,000 new rows >= 0.7" in run["reason"]
        assert run["drift"]["top"] and all(score < 0.1 for score in run["drift"]["top"].values())
        assert status["current_model"]["live"]["value"] == live["value"]
        assert status["files"]["archived"] == 2
        artifacts = httpx.post(f"{prefect_api_url}/artifacts/filter", timeout=30,
                               json={"artifacts": {"key": {"any_": ["retrain-live"]}}}).json()
        assert any(a["flow_run_id"] == run["flow_run_id"] and "Live metric" in a["data"] for a in artifacts)

        # Labels that follow another relation: the live metric falls, the run says so, retrains.
        shifted.rename(home / "inbox" / shifted.name)
        status = wait_for(lambda: _finished(home, env, 3), 120, "the third run")
        run = status["runs"][0]
        assert (run["decision"], run["model_version"]) == ("deployed", "v0002"), (run, daemon.log())
        assert run["policy"]["triggers"] == ["live_metric"]
        assert "live accuracy of v0001" in run["policy"]["reason"] and "< 0.7" in run["policy"]["reason"]
        assert run["live"]["value"] < 0.7

        # An operator's run through the daemon: the current window, whatever the policy says.
        asked = cli("run", env=env, cwd=tmp_path, timeout=120)
        assert asked.returncode == 0, asked.stderr + daemon.log()
        assert "requested by an operator" in asked.stdout and "retrained on the current window" in asked.stdout
        run = status_json(home, env)["runs"][0]
        assert run["policy"]["triggers"] == ["operator"] and run["files"] == 0
        assert run["decision"] in ("deployed", "rejected") and run["model_version"] == "v0003"

        chart = tmp_path / "report.png"
        assert cli("report", "--out", str(chart), env=env, cwd=tmp_path).returncode == 0
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        code = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.log()

    # With no daemon, `retrain run` with no file retrains in its own process.
    asked = cli("run", env=env, cwd=tmp_path)
    assert asked.returncode == 0, asked.stderr
    assert "requested by an operator: retrained on the current window" in asked.stdout
    run = status_json(home, env)["runs"][0]
    assert run["policy"]["triggers"] == ["operator"] and run["model_version"] == "v0004"
    check_invariant(home)


def _request(tmp_path: Path, paths: list[Path], first_id: int, unscored: list[FileRef] = (),
             **pipeline) -> RetrainRequest:
    refs = [FileRef(file_id=first_id + i, name=p.name, path=str(p), sha256=sha256_file(p),
                    size=p.stat().st_size) for i, p in enumerate(paths)]
    spec = PipelineSpec.model_validate({"schema": {"drop": ["customer_id"]}, "window": {"last_files": 1},
                                        **pipeline})
    return RetrainRequest(new_files=refs, pipeline=spec, registry_dir=str(tmp_path / "registry"),
                          cache_dir=str(tmp_path / "cache"), unscored_files=list(unscored))


def test_small_batches_are_scored_together_and_drift_triggers_only_when_max_drift_is_set(
        tmp_path: Path, dask_address: str) -> None:
    policy = {"retrain": "when_needed", "min_live_rows": 500}
    data = tmp_path / "data"
    first, small = write_samples(data, rows=2000, seed=21), write_samples(data, rows=300, seed=22)
    moved = write_samples(data, rows=2000, seed=23, covariate_shift=2.0)
    assert call_flow(_request(tmp_path, first, 1, policy=policy), dask_address).outcome.decision == "deployed"

    # Too few rows to judge: kept, counted, and carried to the next run.
    kept = call_flow(_request(tmp_path, small, 2, policy=policy), dask_address).outcome
    assert kept.decision == "kept" and "fewer than policy.min_live_rows 500" in kept.reason
    assert (kept.live.rows, kept.live.enough, kept.unscored_file_ids) == (300, False, [2])

    # A covariate shift the model copes with: scored together with the small batch, and kept
    # while max_drift is not set...
    carried = _request(tmp_path, small, 2).new_files
    kept = call_flow(_request(tmp_path, moved, 3, unscored=carried, policy=policy), dask_address).outcome
    assert kept.decision == "kept", kept.reason
    assert (kept.live.rows, kept.live.file_ids, kept.live.enough) == (2300, [2, 3], True)
    assert kept.unscored_file_ids == [] and "on 2,300 new rows" in kept.reason
    assert kept.live.value >= 0.6  # the model still works on the moved rows
    assert next(iter(kept.drift.scores)) == "income" and kept.drift.scores["income"] > 0.5
    assert "largest drift" in kept.reason and "(income)" in kept.reason and "max_drift not set" in kept.reason
    assert len(ModelRegistry(tmp_path / "registry").versions()) == 1

    # ...and retrained on drift once it is.
    drifted = call_flow(_request(tmp_path, moved, 4, policy={**policy, "max_drift": 0.2}), dask_address).outcome
    assert drifted.decision in ("deployed", "rejected"), drifted.reason
    assert drifted.policy.triggers == ["drift"] and "(income) > max_drift 0.2" in drifted.policy.reason
    assert drifted.comparison is not None and drifted.comparison.low <= drifted.comparison.difference
    assert len(ModelRegistry(tmp_path / "registry").versions()) == 2


def test_the_embedded_api_runs_the_schedule_and_keeps_a_bounded_history(tmp_path: Path, dask_address: str) -> None:
    """With no Prefect server of its own, the daemon's embedded API is a whole server: its
    scheduler creates the runs of `[policy] schedule` (every minute here), which the daemon
    executes, and its database vacuum deletes ended flow runs after prefect_history_days."""
    home = tmp_path / "home"
    env = daemon_env(home, dask__address=dask_address, window__last_files="1",
                     policy__schedule="* * * * *", daemon__prefect_history_days="2")
    source = write_samples(tmp_path / "data", rows=1000, seed=5)[0]
    daemon = Daemon(home, env, cwd=tmp_path)
    try:
        daemon.wait_ready()
        source.rename(home / "inbox" / source.name)
        wait_for(lambda: _finished(home, env, 1), 120, "the file's run")

        def scheduled():
            status = _finished(home, env, 2)
            return next((r for r in status["runs"] if r["trigger"] == "schedule"), None) if status else None

        run = wait_for(scheduled, 150, "a run of the schedule")
        assert run["files"] == 0 and run["decision"] in ("deployed", "rejected"), (run, daemon.log())
        assert run["requested_by"] == "the schedule * * * * * (UTC)"
        api = status_json(home, env)["daemon"]["prefect_api_url"]
        vacuum = httpx.get(f"{api}/admin/settings", timeout=10).json()["server"]["services"]["db_vacuum"]
        assert "flow_runs" in vacuum["enabled"] and vacuum["retention_period"] == "P2D"
    finally:
        assert daemon.stop() == 0, daemon.log()
