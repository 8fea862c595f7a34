"""The MLflow export against real MLflow stores: a local SQLite tracking store, and a real
`mlflow server` subprocess on loopback (started late, so the export first finds it down).
Runs where MLflow is installed (`pip install '.[mlflow]'`, `make test-mlflow`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")

sys.path.insert(0, str(Path(__file__).parents[1] / "serving"))  # the serving tests' trained models
from test_serve import SCHEMA, train  # noqa: E402 - after the skip

from core.errors import RetrainError  # noqa: E402
from flows.models.registry import ModelRegistry  # noqa: E402
from service.config import load_settings  # noqa: E402
from service.intake.ledger import Ledger  # noqa: E402
from service.integrations.mlflow_export import (  # noqa: E402
    ExportState,
    export_to_mlflow,
    state_path,
    sync,
)
from service.sample import sample_frame  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


def register(registry: ModelRegistry, trained, decision: str, seed: int) -> str:
    """A version with the metadata a real run records: schema, training, the gate's evaluation
    and comparison, its data files."""
    evaluation = {"metric": "roc_auc", "greater_is_better": True, "threshold": 0.6, "tolerance": 0.01,
                  "holdout_rows": 400, "candidate": {"roc_auc": 0.8 + seed / 100}, "champion": {"roc_auc": 0.79},
                  "champion_version": None, "passed_threshold": True, "not_worse_than_champion": True,
                  "deploy": decision == "deployed", "reason": f"{decision} in a test",
                  "comparison": {"metric": "roc_auc", "difference": 0.01, "low": -0.005, "high": 0.03,
                                 "confidence": 0.95, "samples": 1000, "must_show": "not_worse"}}
    return registry.register(trained.model_path, {
        "model_sha256": trained.model_sha256, "decision": decision, "reason": f"{decision} in a test",
        "metrics": {"roc_auc": 0.8 + seed / 100, "accuracy": 0.7}, "champion_metrics": {"roc_auc": 0.79},
        "metadata": {"schema": SCHEMA.model_dump(), "training": trained.model_dump(exclude={"model_path"}),
                     "metric": "roc_auc", "evaluation": evaluation,
                     "files": [{"file_id": seed, "name": f"batch-{seed}.csv", "sha256": f"{seed:064x}", "rows": 2000,
                                "rejected_rows": 0, "holdout_rows": 400, "new": True}],
                     "libraries": {"scikit-learn": "1.9.1"}},
    }).version


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-models")
    return [train(folder, SCHEMA, seed) for seed in (1, 2, 3)]


@pytest.fixture
def home(tmp_path: Path, models) -> Path:
    """v0001 deployed, v0002 rejected, v0003 deployed and current."""
    home = tmp_path / "home"
    (home / "state").mkdir(parents=True)
    Ledger(home / "state" / "ledger.sqlite").close()  # a home as a daemon leaves it (status reads it)
    registry = ModelRegistry(home / "registry")
    for seed, (trained, decision) in enumerate(zip(models, ["deployed", "rejected", "deployed"]), start=1):
        registry.promote(version) if (version := register(registry, trained, decision, seed)) and decision == "deployed" else None
    return home


def settings_for(home: Path, tracking_uri: str, **extra: str):
    environ = {"RETRAIN_HOME": str(home), "RETRAIN_MLFLOW__TRACKING_URI": tracking_uri,
               "RETRAIN_MLFLOW__RETRY_SECONDS": "1", "RETRAIN_MLFLOW__REQUEST_TIMEOUT_SECONDS": "5", **extra}
    return load_settings(ROOT / "config" / "retrain.toml", environ=environ), environ


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **env}, timeout=300)


def champion_predicts_what_retrain_predict_does(home: Path, env: dict[str, str], tmp_path: Path, name: str) -> None:
    rows = sample_frame(60, 21).drop(columns=["churned"]).astype(str)
    rows.loc[0, "income"], rows.loc[1, "plan"], rows.loc[2, "age"] = "inf", "", " 7 "
    csv = tmp_path / "rows.csv"
    rows.to_csv(csv, index=False)
    out = tmp_path / "predictions.csv"
    result = cli("predict", str(csv), "--output", str(out), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = pd.read_csv(out, dtype={"prediction": str}, float_precision="round_trip")
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    from flows.models.predict import read_rows

    for frame in (read_rows(csv), pd.read_csv(csv)):  # as retrain reads a CSV, and as pandas does
        answered = model.predict(frame)
        assert answered["prediction"].astype(str).tolist() == expected["prediction"].tolist()
        for column in ("probability_0", "probability_1"):
            assert answered[column].tolist() == expected[column].tolist()


def test_deployed_versions_with_a_sqlite_store_and_the_alias_follows_a_rollback(home: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings, env = settings_for(home, uri)
    mlflow.set_tracking_uri(uri)
    state = sync(settings)
    assert sorted(state.exported) == ["v0001", "v0003"] and state.champion == "v0003"  # v0002 was rejected
    client = mlflow.MlflowClient(tracking_uri=uri)
    champion = client.get_model_version_by_alias("retrain", "champion")
    assert champion.tags["retrain_version"] == "v0003"
    run = client.get_run(champion.run_id)
    assert run.data.metrics["roc_auc"] == pytest.approx(0.83) and run.data.metrics["champion_roc_auc"] == 0.79
    assert run.data.metrics["gate_low"] == -0.005 and run.data.params["metric"] == "roc_auc"
    assert run.data.params["estimator"] and run.data.tags["decision"] == "deployed"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["batch-3.csv"]
    assert run.inputs.dataset_inputs[0].dataset.digest == f"{3:064x}"[:36]
    champion_predicts_what_retrain_predict_does(home, env, tmp_path, "retrain")

    result = cli("models", "rollback", env=env, cwd=tmp_path)  # the command moves the alias before it exits
    assert result.returncode == 0, result.stderr
    assert client.get_model_version_by_alias("retrain", "champion").tags["retrain_version"] == "v0001"
    champion_predicts_what_retrain_predict_does(home, env, tmp_path, "retrain")
    assert ExportState.read(state_path(settings)).champion == "v0001"
    shown = json.loads(cli("status", "--json", env=env, cwd=tmp_path).stdout)["mlflow"]
    assert shown["champion"] == "v0001" and shown["pending"] == [] and shown["last_error"] is None
    assert sync(settings).exported == state.exported  # nothing is exported twice


def test_candidates_too_when_asked_and_an_export_is_adopted_not_repeated(home: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings, _ = settings_for(home, uri, RETRAIN_MLFLOW__LOG_CANDIDATES="true", RETRAIN_MLFLOW__MODEL_NAME="churn")
    first = sync(settings)
    assert sorted(first.exported) == ["v0001", "v0002", "v0003"]
    state_path(settings).unlink()  # the record is lost: MLflow's tags tell what was exported
    again = sync(settings)
    assert {v: e["model_version"] for v, e in again.exported.items()} == \
           {v: e["model_version"] for v, e in first.exported.items()}
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert len(client.search_model_versions("name = 'churn'")) == 3
    assert client.get_model_version_by_alias("churn", "champion").tags["retrain_version"] == "v0003"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_real_mlflow_server_down_then_up_never_blocks_and_the_export_is_retried(home: Path, tmp_path: Path) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    settings, env = settings_for(home, uri)
    started = time.monotonic()
    with pytest.raises(RetrainError, match="did not take the export"):
        sync(settings)
    assert time.monotonic() - started < 60  # one bounded try, not MLflow's minutes of retries
    recorded = ExportState.read(state_path(settings))
    assert recorded.last_error and recorded.failed_attempts == 1 and recorded.exported == {}
    shown = json.loads(cli("status", "--json", env=env, cwd=tmp_path).stdout)["mlflow"]
    assert shown["pending"] == ["v0001", "v0003"] and "did not take the export" in shown["last_error"]

    thread = export_to_mlflow(settings)  # the background export keeps retrying
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--workers", "1"],
        stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        state = wait_for(lambda: (s := ExportState.read(state_path(settings))).champion == "v0003" and s,
                         "the retried export", 240)
        assert state.last_error is None and sorted(state.exported) == ["v0001", "v0003"]
        champion_predicts_what_retrain_predict_does(home, env, tmp_path, "retrain")
        result = cli("models", "rollback", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        client = mlflow.MlflowClient(tracking_uri=uri)
        assert client.get_model_version_by_alias("retrain", "champion").tags["retrain_version"] == "v0001"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        thread.join(timeout=60)
