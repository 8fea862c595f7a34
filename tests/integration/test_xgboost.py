"""`estimator = "xgboost"` on the session's real 2-worker Dask cluster: trained across the
workers, deployed as XGBoost's own UBJSON, predicted with by `retrain predict` (a new
process) and by `retrain serve`, loaded again when `current` moves; a forged model file is
refused without being run. And a model search through the flow, recorded with the version."""

from __future__ import annotations

import pickle
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import httpx
import numpy as np
import pandas as pd
import pytest
from flow_fixtures import call_flow, request_for
from harness import cli, daemon_env

from core.files import sha256_file
from flows.models.registry import ModelRegistry
from service.sample import sample_frame, write_samples

pytestmark = pytest.mark.integration


def predict_cli(home: Path, csv: Path, out: Path):
    """`retrain predict` as an operator runs it: a new process."""
    return cli("predict", str(csv), "--output", str(out), env=daemon_env(home), cwd=home.parent)


def predict_in_process(home: Path, csv: Path, out: Path, capsys) -> tuple[int, str]:
    """The same command through its entry point in this process (a new process per case
    would only add start-up time)."""
    from service.cli import main

    code = main(["predict", str(csv), "--output", str(out), "--home", str(home)])
    return code, capsys.readouterr().err


@contextmanager
def serve_app(registry: ModelRegistry) -> Iterator[Callable[[Path], tuple[int, dict]]]:
    """A running `retrain serve` app; yields a function that POSTs a CSV file to it."""
    from service.config import ServeSpec
    from service.serving.app import create_app, running_server

    with running_server(create_app(registry, [], ServeSpec())) as base, httpx.Client(base_url=base) as client:
        def post(csv: Path) -> tuple[int, dict]:
            # The file's name as the request's id: the same rows get the same ids in every answer.
            answer = client.post("/predict", content=csv.read_bytes(),
                                 headers={"Content-Type": "text/csv", "X-Request-ID": csv.name}, timeout=60)
            return answer.status_code, answer.json()

        yield post


def served(registry: ModelRegistry, csv: Path) -> tuple[int, dict]:
    """One CSV request to a freshly started app (as after a restart)."""
    with serve_app(registry) as post:
        return post(csv)


def test_xgboost_across_workers_is_deployed_predicted_served_and_forgeries_refused(tmp_path: Path, dask_address: str,
                                                                                    capsys) -> None:
    home = tmp_path / "home"
    (home / "state").mkdir(parents=True)
    paths = write_samples(tmp_path / "data", files=2, rows=3000, seed=61)
    outcome = call_flow(request_for(home, paths, model={"estimator": "xgboost"}), dask_address).outcome
    assert outcome.decision == "deployed", outcome
    assert outcome.candidate_metrics["roc_auc"] > 0.8
    registry = ModelRegistry(home / "registry")
    version = registry.get("v0001")
    assert version.model_file == "model.ubj" and (home / "registry" / "v0001" / "model.ubj").is_file()
    assert version.lineage["training"]["estimator"] == "xgboost:train"
    assert version.lineage["training"]["params"]["tree_method"] == "hist"

    # Odd rows: an unseen category, missing values, inf; as an operator's CSV.
    rows = sample_frame(40, 99).drop(columns=["churned"]).astype(str)
    rows.loc[0, "plan"], rows.loc[1, "region"], rows.loc[2, "income"] = "unseen-plan", "", "inf"
    csv = tmp_path / "new.csv"
    rows.to_csv(csv, index=False)
    result = predict_cli(home, csv, tmp_path / "p1.csv")
    assert result.returncode == 0, result.stderr
    predicted = pd.read_csv(tmp_path / "p1.csv")
    with serve_app(registry) as post:
        code, answer = post(csv)
        assert code == 200 and answer["version"] == "v0001"
        from_serve = pd.DataFrame(answer["predictions"])
        assert from_serve["prediction"].astype(str).tolist() == predicted["prediction"].astype(str).tolist()
        np.testing.assert_allclose(from_serve["probability_1"], predicted["probability_1"], rtol=1e-6)
        # A new deploy is picked up by the running app without a restart: the model is
        # loaded again from disk (the same content as v0001 here, so the same answers).
        registry.register(home / "registry" / "v0001" / "model.ubj",
                          {"model_sha256": version.model_sha256, "lineage": version.lineage})
        registry.promote("v0002")
        deadline = time.monotonic() + 60  # the app loads the new version in the background
        while (answer := post(csv)[1]).get("version") != "v0002" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert answer["version"] == "v0002", answer
        assert pd.DataFrame(answer["predictions"]).equals(from_serve)

    # A forged file in place of the deployed one: refused on its hash, by predict and serve.
    model_path = home / "registry" / "v0002" / "model.ubj"
    model_path.write_bytes(model_path.read_bytes()[:-1] + b"\x00")
    code, err = predict_in_process(home, csv, tmp_path / "p3.csv", capsys)
    assert code != 0 and "does not match its recorded sha256" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "p3.csv").exists()
    assert served(registry, csv)[0] == 503

    # A file that is not a model at all, even with its hash recorded: refused, never run.
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    model_path.write_bytes(pickle.dumps(Payload()))
    registry.update("v0002", model_sha256=sha256_file(model_path))
    code, err = predict_in_process(home, csv, tmp_path / "p4.csv", capsys)
    assert code != 0 and "is not a readable XGBoost model file" in err
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
    training = ModelRegistry(home / "registry").get("v0001").lineage["training"]
    recorded = training["candidates"]
    assert [c["estimator"] for c in recorded] == ["hist_gradient_boosting", "xgboost", "random_forest"]
    assert [c["params"] for c in recorded] == [c["params"] for c in candidates]
    scores = [c["validation"]["roc_auc"] for c in recorded]
    assert [c["chosen"] for c in recorded] == [s == max(scores) for s in scores]
    assert scores[2] < min(scores[:2])  # a one-split stump is clearly worse
    assert training["validation_rows"] > 0 and outcome.holdout_rows > 0
    # The chosen configuration is trained again on every row outside the holdout.
    assert training["train_rows"] + outcome.holdout_rows == 3000
