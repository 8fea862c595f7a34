"""The production loop for real: a daemon scores an unlabelled batch dropped in score/, takes
late labels dropped in labels/, measures what the model actually served, and retrains on the
labelled rows when that metric falls below the bar."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from harness import RETRAIN, Daemon, cli, daemon_env, ledger_runs, status_json, wait_for
from invariants import check_invariant
from sklearn.metrics import roc_auc_score

from service.sample import SAMPLE_ID_COLUMN, sample_frame

pytestmark = pytest.mark.integration


def _write(frame: pd.DataFrame, path: Path) -> Path:
    """Appear complete: a hidden temporary name, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False)
    tmp.rename(path)
    return path


def _run_with(home: Path, decision: str) -> bool:
    return any(run.decision == decision for run in ledger_runs(home))


def test_score_then_late_labels_then_retrain_on_what_was_served(tmp_path: Path, prefect_api_url: str,
                                                                dask_address: str) -> None:
    home = tmp_path / "home"
    # The session's Prefect API and Dask cluster: the loop is the point, not the daemon's own
    # API and cluster (tests/integration/test_daemon_end_to_end.py starts those).
    env = daemon_env(home, prefect_api_url, dask__address=dask_address, schema__id=SAMPLE_ID_COLUMN,
                     policy__retrain="when_needed", policy__min_live_metric="0.99", policy__min_live_rows="50")
    daemon = Daemon(home, env, cwd=tmp_path)
    try:
        daemon.wait_ready()
        _write(sample_frame(3000, seed=1), home / "inbox" / "train.csv")
        wait_for(lambda: _run_with(home, "deployed"), 240, "the first model")

        # Unlabelled rows: the target column removed.
        truth = sample_frame(1200, seed=2)
        unlabelled = _write(truth.drop(columns=["churned"]), tmp_path / "customers.csv")
        _write(truth.drop(columns=["churned"]), home / "score" / "customers.csv")
        wait_for(lambda: _run_with(home, "scored"), 240, f"the scoring run\n{daemon.log()}")
        predictions = pd.read_csv(home / "predictions" / "customers.csv", dtype={"id": str})
        assert len(predictions) == len(truth)
        assert list(predictions["id"]) == list(truth[SAMPLE_ID_COLUMN].astype(str))
        assert set(predictions["version"]) == {"v0001"}
        # Known before any label: the drift of the scored rows, the metric their confidence estimates.
        scored = next(r for r in status_json(home, env)["runs"] if r["decision"] == "scored")
        assert scored["drift"]["rows"] == len(truth) and len(scored["drift"]["top"]) == 5
        assert max(scored["drift"]["top"].values()) < 0.1  # the same distribution as the training rows
        assert 0.5 < scored["estimated"]["roc_auc"] < 1.0

        # The same rows through `retrain predict`: the same predictions.
        direct = cli("predict", str(unlabelled), env=env, cwd=tmp_path)
        assert direct.returncode == 0, direct.stderr
        expected = pd.read_csv(io.StringIO(direct.stdout))
        assert list(predictions["prediction"].astype(str)) == list(expected["prediction"].astype(str))
        for column in [c for c in expected if c.startswith("probability_")]:
            np.testing.assert_allclose(predictions[column], expected[column], rtol=1e-9, atol=1e-12)

        # Rows served over HTTP by `retrain serve`, logged with their ids.
        served_truth = sample_frame(300, seed=3)
        served = _serve(served_truth.drop(columns=["churned"]), env, tmp_path)
        assert [p["id"] for p in served] == list(served_truth[SAMPLE_ID_COLUMN])

        # Late labels for the scored and the served ids (and a few that name nothing): the
        # production metric of everything v0001 answered.
        labels = pd.concat([truth, served_truth])[[SAMPLE_ID_COLUMN, "churned"]]
        labels = pd.concat([labels, pd.DataFrame({SAMPLE_ID_COLUMN: ["nobody-1", "nobody-2"], "churned": [1, 0]})])
        _write(labels, home / "labels" / "churn-december.csv")
        status = wait_for(lambda: _production_of(home, env), 240, f"the production metric\n{daemon.log()}")
        production = status["current_model"]["production"]
        every_truth = pd.concat([truth, served_truth])["churned"].astype(str) == "1"
        every_score = list(predictions["probability_1"]) + [p["probability_1"] for p in served]
        assert production["version"] == "v0001" and production["rows"] == len(truth) + len(served_truth)
        assert production["value"] == pytest.approx(roc_auc_score(every_truth, every_score), abs=1e-9)
        assert set(production["batches"]) == {"customers.csv", "retrain serve"}
        assert status["production"]["labels"]["unknown_ids"] == 2

        # The bar (0.99) is above it: the labelled rows come back as training data, and the
        # run that takes them retrains with the production-metric trigger.
        retrained = wait_for(lambda: _retrained(home, env), 300, f"a retraining\n{daemon.log()}")
        assert "production_metric" in retrained["policy"]["triggers"]
        version = retrained["model_version"]
        shown = json.loads(cli("models", "show", version, env=env, cwd=tmp_path).stdout)
        origins = [name for f in shown["lineage"]["files"] for name in f.get("origin", [])]
        assert "customers.csv" in origins and "churn-december.csv" in origins
        check_invariant(home)
    finally:
        assert daemon.stop() == 0, daemon.log()


def _serve(rows: pd.DataFrame, env: dict, cwd: Path) -> list[dict]:
    """`retrain serve` with [serve] log_predictions, its answers to ``rows``; stopped after
    (it writes what it logged when it stops)."""
    port = _free_port()
    server = subprocess.Popen([RETRAIN, "serve", "--port", str(port)], cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env={**env, "RETRAIN_SERVE__LOG_PREDICTIONS": "true"})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_for(lambda: _answers(client, "/ready"), 120, "retrain serve")
            body = json.loads(rows.to_json(orient="records"))
            answer = client.post("/predict", json=body)
            assert answer.status_code == 200, answer.text
            return answer.json()["predictions"]
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, server.stderr.read()


def _answers(client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _production_of(home: Path, env: dict):
    """`retrain status --json` once the current model's production metric is in it (asked
    once the labels run ended)."""
    if not _run_with(home, "labelled"):
        return None
    status = status_json(home, env)
    model = status["current_model"] or {}
    return status if model.get("production") else None


def _retrained(home: Path, env: dict):
    """The status of the first run that trained after v0001 (asked once the ledger has it)."""
    if not any(run.model_version not in (None, "v0001") and run.state != "running" for run in ledger_runs(home)):
        return None
    runs = status_json(home, env)["runs"]
    return next((r for r in runs if r["model_version"] and r["model_version"] != "v0001" and r["policy"]), None)
