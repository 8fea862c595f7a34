"""`estimator = "xgboost"` on the session's real 2-worker Dask cluster: trained across the
workers, deployed as XGBoost's own UBJSON, predicted with by `retrain predict` (a new
process) and by `retrain serve`, picked up again after a new deploy; a forged model file is
refused without being run. And a model search through the flow, recorded with the version."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from flows.files import sha256_file
from flows.records import FileRef
from flows.registry import ModelRegistry
from flows.retrain import RetrainRequest
from flows.specs import PipelineSpec
from harness import cli, daemon_env
from service.runs import call_flow
from service.sample import sample_frame, write_samples

pytestmark = pytest.mark.integration


def request_for(home: Path, paths: list[Path], window: list[Path] = (), **pipeline) -> RetrainRequest:
    refs = [FileRef(file_id=i + 1, name=p.name, path=str(p), sha256=sha256_file(p), size=p.stat().st_size)
            for i, p in enumerate([*window, *paths])]
    spec = PipelineSpec.model_validate({"schema": {"drop": ["customer_id"]}, **pipeline})
    return RetrainRequest(new_files=refs[len(window):], window_files=refs[: len(window)], pipeline=spec,
                          registry_dir=str(home / "registry"), cache_dir=str(home / "cache"))


def predict_cli(home: Path, csv: Path, out: Path):
    return cli("predict", str(csv), "--output", str(out), env=daemon_env(home), cwd=home.parent)


def served(registry: ModelRegistry, csv: Path) -> tuple[int, dict]:
    """One CSV request to a freshly started `retrain serve` app."""
    from service.serve import make_server

    server = make_server(registry, [], "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        answer = httpx.post(f"http://127.0.0.1:{server.server_address[1]}/predict", content=csv.read_bytes(),
                            headers={"Content-Type": "text/csv"}, timeout=60)
        return answer.status_code, answer.json()
    finally:
        server.shutdown()


def test_xgboost_across_workers_is_deployed_predicted_served_and_forgeries_refused(tmp_path: Path,
                                                                                    dask_address: str) -> None:
    home = tmp_path / "home"
    (home / "state").mkdir(parents=True)
    paths = write_samples(tmp_path / "data", files=2, rows=3000, seed=61)
    outcome = call_flow(request_for(home, paths, model={"estimator": "xgboost"}), dask_address).outcome
    assert outcome.decision == "deployed", outcome
    assert outcome.candidate_metrics["roc_auc"] > 0.8
    registry = ModelRegistry(home / "registry")
    version = registry.get("v0001")
    assert version.model_file == "model.ubj" and (home / "registry" / "v0001" / "model.ubj").is_file()
    assert version.metadata["training"]["estimator"] == "xgboost:train"
    assert version.metadata["training"]["params"]["tree_method"] == "hist"

    # Odd rows: an unseen category, missing values, inf; as an operator's CSV.
    rows = sample_frame(40, 99).drop(columns=["churned"]).astype(str)
    rows.loc[0, "plan"], rows.loc[1, "region"], rows.loc[2, "income"] = "unseen-plan", "", "inf"
    csv = tmp_path / "new.csv"
    rows.to_csv(csv, index=False)
    result = predict_cli(home, csv, tmp_path / "p1.csv")
    assert result.returncode == 0, result.stderr
    predicted = pd.read_csv(tmp_path / "p1.csv")
    code, answer = served(registry, csv)
    assert code == 200 and answer["version"] == "v0001"
    from_serve = pd.DataFrame(answer["predictions"])
    assert from_serve["prediction"].astype(str).tolist() == predicted["prediction"].astype(str).tolist()
    np.testing.assert_allclose(from_serve["probability_1"], predicted["probability_1"], rtol=1e-6)

    # A new deploy is picked up: by the serve app without a restart, and by predict.
    more = write_samples(tmp_path / "more", files=1, rows=3000, seed=62)
    outcome = call_flow(request_for(home, more, window=paths, model={"estimator": "xgboost"},
                                    evaluation={"tolerance": 1.0}), dask_address).outcome
    assert outcome.decision == "deployed" and registry.current_version() == "v0002", outcome
    assert predict_cli(home, csv, tmp_path / "p2.csv").returncode == 0
    assert served(registry, csv)[1]["version"] == "v0002"

    # A forged file in place of the deployed one: refused on its hash, by predict and serve.
    model_path = home / "registry" / "v0002" / "model.ubj"
    model_path.write_bytes((home / "registry" / "v0001" / "model.ubj").read_bytes())
    refused = predict_cli(home, csv, tmp_path / "p3.csv")
    assert refused.returncode != 0 and "does not match its recorded sha256" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "p3.csv").exists()
    assert served(registry, csv)[0] == 503

    # A file that is not a model at all, even with its hash recorded: refused, never run.
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    model_path.write_bytes(pickle.dumps(Payload()))
    registry.update("v0002", model_sha256=sha256_file(model_path))
    refused = predict_cli(home, csv, tmp_path / "p4.csv")
    assert refused.returncode != 0 and "is not a readable XGBoost model file" in refused.stderr
    assert served(registry, csv)[0] == 503
    assert not marker.exists()


def test_model_search_on_the_cluster_records_every_candidate(tmp_path: Path, dask_address: str) -> None:
    home = tmp_path / "home"
    paths = write_samples(tmp_path / "data", files=1, rows=3000, seed=63)
    candidates = [{"estimator": "hist_gradient_boosting", "params": {"max_iter": 30}},
                  {"estimator": "xgboost", "params": {"num_boost_round": 30}},
                  {"estimator": "random_forest", "params": {"n_estimators": 1, "max_depth": 1}}]
    outcome = call_flow(request_for(home, paths, model={"candidates": candidates}), dask_address).outcome
    assert outcome.decision == "deployed", outcome
    training = ModelRegistry(home / "registry").get("v0001").metadata["training"]
    recorded = training["candidates"]
    assert [c["estimator"] for c in recorded] == ["hist_gradient_boosting", "xgboost", "random_forest"]
    assert [c["params"] for c in recorded] == [c["params"] for c in candidates]
    scores = [c["validation"]["roc_auc"] for c in recorded]
    assert [c["chosen"] for c in recorded] == [s == max(scores) for s in scores]
    assert scores[2] < min(scores[:2])  # a one-split stump is clearly worse
    assert training["validation_rows"] > 0 and outcome.holdout_rows > 0
