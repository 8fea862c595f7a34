"""The whole service for real: `retrain watch` as a subprocess with its own 2-worker
LocalCluster and its own embedded Prefect API; files dropped with `retrain sample`."""

from __future__ import annotations

import json
import re
import signal
import socket
from pathlib import Path

import httpx
import pytest
from harness import Daemon, cli, daemon_env, runs_ended, status_json, wait_for
from invariants import check_invariant

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_drop_train_deploy_then_reject_noise(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # Train on the newest file only, so the noisy batch is judged on its own (threshold).
    metrics_port = free_port()
    env = daemon_env(home, window__last_files="1", daemon__metrics_port=str(metrics_port))
    daemon = Daemon(home, env, cwd=tmp_path)
    try:
        daemon.wait_ready()
        assert cli("sample", "--out", str(home / "inbox"), "--files", "2", "--rows", "3000",
                   "--seed", "1", env=env, cwd=tmp_path).returncode == 0

        wait_for(lambda: runs_ended(home, 1), 180, "the first run")
        status = status_json(home, env)
        first = status["runs"][0]
        assert first["decision"] == "deployed", (first, daemon.log())
        assert first["files"] == 2
        assert status["files"]["archived"] == 2
        assert status["current_model"]["version"] == first["model_version"]
        assert status["current_model"]["deployed_at"] is not None
        assert status["daemon"]["alive"] and status["daemon"]["pid"] == daemon.proc.pid

        models = json.loads(cli("models", "--json", env=env, cwd=tmp_path).stdout)
        assert models["current"] == first["model_version"]
        assert [v["decision"] for v in models["versions"]] == ["deployed"]

        # A batch no model can learn from: not deployed, its file set aside with the numbers.
        assert cli("sample", "--out", str(home / "inbox"), "--files", "1", "--rows", "3000",
                   "--seed", "2", "--label-noise", "0.5", env=env, cwd=tmp_path).returncode == 0
        wait_for(lambda: runs_ended(home, 2), 180, "the second run")
        status = status_json(home, env)
        second = status["runs"][0]
        assert second["decision"] == "no_signal", (second, daemon.log())
        assert "the new rows carry nothing to learn" in second["reason"]
        assert status["current_model"]["version"] == first["model_version"]
        assert status["files"]["archived"] == 2 and status["files"]["quarantined"] == 1

        # The embedded API recorded both as flow runs of the home's deployment, completed,
        # told apart by name, tag and state name, each with its summary artifact.
        api = status["daemon"]["prefect_api_url"]
        assert status["daemon"]["deployment"] == "retrain/home" and not status["daemon"]["paused"]
        deployment = httpx.get(f"{api}/deployments/name/retrain/home", timeout=30).json()
        flow_runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=30).json()
        ours = {r["id"]: r for r in flow_runs}
        for run in status["runs"][:2]:
            flow_run = ours[run["flow_run_id"]]
            assert flow_run["state_type"] == "COMPLETED" and flow_run["deployment_id"] == deployment["id"]
            assert flow_run["name"].startswith(f"run-{run['id']}-")
            assert run["decision"].replace("_", "-") in flow_run["tags"]
            assert flow_run["state_name"] == "".join(w.capitalize() for w in run["decision"].split("_"))

        # Paused through the embedded API: status shows it; resumed.
        assert cli("pause", env=env, cwd=tmp_path).returncode == 0
        wait_for(lambda: status_json(home, env)["daemon"]["paused"], 30, "the pause")
        assert cli("resume", env=env, cwd=tmp_path).returncode == 0
        wait_for(lambda: not status_json(home, env)["daemon"]["paused"], 30, "the resume")
        artifacts = httpx.post(f"{api}/artifacts/filter", json={}, timeout=30).json()
        assert {a["flow_run_id"] for a in artifacts if a["key"] == "retrain-summary"} >= {
            r["flow_run_id"] for r in status["runs"][:2]}

        text = cli("status", env=env, cwd=tmp_path).stdout
        assert "no_signal" in text and "carry nothing to learn" in text

        # The same, for Prometheus, on the daemon's opt-in metrics port.
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
        assert 'retrain_runs_total{decision="deployed"} 1.0' in metrics
        assert 'retrain_runs_total{decision="no_signal"} 1.0' in metrics
        assert 'retrain_files{state="archived"} 2.0' in metrics
        assert f'retrain_current_model{{version="{first["model_version"]}"}} 1.0' in metrics

        # `retrain run` while the daemon holds the home hands its files to the daemon and
        # answers with the run's line and exit code; the original files stay untouched.
        data = tmp_path / "more"
        cli("sample", "--out", str(data), "--files", "1", "--rows", "3000", "--seed", "3", env=env, cwd=tmp_path)
        bad = data / "bad.csv"
        bad.write_text("age,plan\n1,basic\n")
        handed = cli("run", str(data / "batch-0003-000.csv"), str(bad), env=env, cwd=tmp_path, timeout=180)
        assert handed.returncode == 3, (handed.stdout, handed.stderr, daemon.log())
        assert "handed to it" in handed.stderr and "bad.csv" in handed.stderr
        assert re.search(r"^run \d+: (deployed|rejected) v0003: ", handed.stdout, re.M), handed.stdout
        assert bad.read_text() == "age,plan\n1,basic\n"
    finally:
        code = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.log()
    counts = check_invariant(home)
    assert counts["archived"] == 3 and counts["quarantined"] == 2


def test_retrain_run_rejects_file_without_target(tmp_path: Path, prefect_api_url: str,
                                                 dask_address: str) -> None:
    home = tmp_path / "home"
    env = daemon_env(home, prefect_api_url)
    source = tmp_path / "no target.csv"
    source.write_text("age,income,plan\n31,52000,basic\n45,71000,pro\n")
    before = source.read_bytes()

    result = cli("run", str(source), "--dask-address", dask_address, env=env, cwd=tmp_path)

    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("retrain: error")]
    assert errors and "no target.csv" in errors[0] and "churned" in errors[0], result.stderr
    assert source.read_bytes() == before  # the original is untouched
    quarantined = home / "quarantine" / "no target.csv"
    assert quarantined.read_bytes() == before
    error = json.loads((home / "quarantine" / "no target.csv.error.json").read_text())
    assert "churned" in error["reason"]
    check_invariant(home)


def test_retrain_run_trains_and_predicts(tmp_path: Path, prefect_api_url: str,
                                         dask_address: str) -> None:
    home = tmp_path / "home"
    env = daemon_env(home, prefect_api_url)
    data = tmp_path / "data"
    paths = cli("sample", "--out", str(data), "--files", "2", "--rows", "2000", "--seed", "5",
                env=env, cwd=tmp_path).stdout.split()

    result = cli("run", *paths, "--dask-address", dask_address, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "deployed" in result.stdout
    assert all(Path(p).exists() for p in paths)  # originals stay where they were

    out = tmp_path / "predictions.csv"
    predicted = cli("predict", paths[0], "--output", str(out), env=env, cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    lines = out.read_text().splitlines()
    assert lines[0].endswith("prediction,probability_0,probability_1")
    assert len(lines) == 2001
    check_invariant(home)

    # The history chart, and the one-line answers of operator commands given wrong input.
    chart = tmp_path / "report.png"
    reported = cli("report", "--out", str(chart), env=env, cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for args, message in [(("models", "show", "v0042"), "no model version 'v0042'; known versions: v0001"),
                          (("models", "rollback"), "no earlier deployed version"),
                          (("status", "--home", str(tmp_path / "nowhere")), "no retrain home at"),
                          (("status", "--bogus"), "unrecognized arguments: --bogus")]:
        answer = cli(*args, env=env, cwd=tmp_path)
        lines = answer.stderr.strip().splitlines()
        assert answer.returncode != 0 and message in lines[-1] and "Traceback" not in answer.stderr, answer.stderr
