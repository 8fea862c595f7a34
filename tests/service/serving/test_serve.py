"""`retrain serve` for real: a uvicorn server on loopback (in a thread, or the `retrain serve`
command), real models trained and registered, real HTTP requests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.files import sha256_file
from core.records import FileRef, ResolvedSchema, TrainResult
from core.specs import ModelSpec
from flows.data.preprocess import plan_partitions, preprocess_partition
from flows.data.window import Window
from flows.models.registry import ModelRegistry
from flows.training.train import train_candidate
from service.config import ServeSpec
from service.sample import sample_frame
from service.serving.app import create_app, running_server

NUMERIC = ["age", "income", "tenure_months", "usage_hours", "support_calls"]
SCHEMA = ResolvedSchema(target="churned", task="classification", numeric=NUMERIC,
                        categorical=["plan", "region"], max_bad_row_fraction=0.05)
# A later deployment changes the schema: region is no longer a feature.
SCHEMA_WITHOUT_REGION = SCHEMA.model_copy(update={"categorical": ["plan"]})
ROW = {"age": 40, "income": 52000, "tenure_months": 12, "usage_hours": 20, "support_calls": 3,
       "plan": "basic", "region": "south"}


def train(folder: Path, schema: ResolvedSchema, seed: int) -> TrainResult:
    csv = folder / f"train-{seed}.csv"
    sample_frame(2000, seed).to_csv(csv, index=False)
    ref = FileRef(file_id=seed, name=csv.name, path=str(csv), sha256=sha256_file(csv), size=csv.stat().st_size)
    summary = preprocess_partition(plan_partitions(ref, 200_000)[0], schema, folder / "cache", 0.2)
    return train_candidate(Window([summary.parquet_path], schema), ModelSpec(estimator="logistic_regression", threads=1),
                           folder / f"m{seed}.skops")


def register(registry: ModelRegistry, trained: TrainResult, schema: ResolvedSchema,
             categories: bool = True) -> str:
    training = trained.model_dump(exclude={"model_path"} if categories else {"model_path", "categories"})
    return registry.register(trained.model_path, {
        "model_sha256": trained.model_sha256, "decision": "deployed", "metrics": {"roc_auc": 0.9},
        "lineage": {"schema": schema.model_dump(), "training": training, "metric": "roc_auc"},
    }).version


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, tuple[TrainResult, ResolvedSchema]]:
    folder = tmp_path_factory.mktemp("models")
    return {"a": (train(folder, SCHEMA, 1), SCHEMA), "b": (train(folder, SCHEMA, 2), SCHEMA),
            "c": (train(folder, SCHEMA_WITHOUT_REGION, 3), SCHEMA_WITHOUT_REGION)}


@pytest.fixture
def home(tmp_path: Path, trained) -> Path:
    """A home whose registry holds v0001, v0002 (same schema) and v0003 (no region);
    v0001 is current."""
    home = tmp_path / "home"
    (home / "state").mkdir(parents=True)
    registry = ModelRegistry(home / "registry")
    for key in "abc":
        register(registry, *trained[key])
    registry.promote("v0001")
    return home


@pytest.fixture
def server(home: Path) -> Iterator[tuple[httpx.Client, ModelRegistry]]:
    registry = ModelRegistry(home / "registry")
    app = create_app(registry, [], ServeSpec(max_body_bytes=20_000, max_rows_per_request=50))
    with running_server(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client, registry


def wait_until(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_predict_names_the_version_and_openapi_describes_the_model(server) -> None:
    client, _ = server
    answer = client.post("/predict", json={"rows": [ROW, {**ROW, "age": "inf", "plan": None}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["version"] == answer.headers["x-model-version"] == "v0001"
    assert len(body["predictions"]) == 2
    assert set(body["predictions"][0]) == {"id", "prediction", "probability_0", "probability_1"}
    assert len({p["id"] for p in body["predictions"]}) == 2  # made up, one per row

    doc = client.get("/openapi.json").json()
    row = doc["components"]["schemas"]["Row"]
    assert row["required"] == [*NUMERIC, "plan", "region"]
    assert "number" in row["properties"]["age"]["type"]
    assert row["properties"]["plan"]["examples"] == ["basic", "plus", "pro"]
    assert set(row["properties"]["region"]["examples"]) == {"east", "north", "south", "west"}
    assert doc["info"]["version"] == "v0001"
    assert "text/csv" in doc["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200

    model = client.get("/model").json()
    assert model["version"] == "v0001" and model["metrics"] == {"roc_auc": 0.9}
    assert model["categories"]["plan"] == ["basic", "plus", "pro"]
    assert model["current_since"] is not None and model["classes"] == ["0", "1"]


def test_openapi_follows_a_deployment_that_changes_the_schema(server) -> None:
    client, registry = server
    assert "region" in client.get("/openapi.json").json()["components"]["schemas"]["Row"]["properties"]
    registry.promote("v0003")
    doc = wait_until(lambda: (d := client.get("/openapi.json").json())["info"]["version"] == "v0003" and d,
                     "the schema of v0003")
    row = doc["components"]["schemas"]["Row"]
    assert "region" not in row["properties"] and row["required"] == [*NUMERIC, "plan"]
    # The new model answers rows without the column it no longer needs.
    answer = client.post("/predict", json=[{k: v for k, v in ROW.items() if k != "region"}])
    assert answer.status_code == 200 and answer.json()["version"] == "v0003"


def test_metrics_count_requests_rows_and_the_model_in_use(server) -> None:
    client, registry = server
    for _ in range(3):
        assert client.post("/predict", json=[ROW, ROW]).status_code == 200
    assert client.post("/predict", json=[{"age": 1}]).status_code == 422
    assert client.get("/nowhere").status_code == 404
    samples = metric_samples(client.get("/metrics").text)
    assert samples[("retrain_serve_requests_total",
                    frozenset({"route": "/predict", "method": "POST", "status": "200"}.items()))] == 3
    assert samples[("retrain_serve_requests_total",
                    frozenset({"route": "/predict", "method": "POST", "status": "422"}.items()))] == 1
    assert samples[("retrain_serve_requests_total",
                    frozenset({"route": "unmatched", "method": "GET", "status": "404"}.items()))] == 1
    assert samples[("retrain_serve_request_seconds_count", frozenset({"route": "/predict"}.items()))] == 4
    assert samples[("retrain_serve_rows_predicted_total", frozenset({"version": "v0001"}.items()))] == 6
    assert samples[("retrain_serve_model_version", frozenset({"version": "v0001"}.items()))] == 1
    assert samples[("retrain_serve_model_load_seconds", frozenset())] > 0

    registry.promote("v0002")
    wait_until(lambda: client.post("/predict", json=[ROW]).json()["version"] == "v0002", "the swap")
    samples = metric_samples(client.get("/metrics").text)
    assert samples[("retrain_serve_model_version", frozenset({"version": "v0002"}.items()))] == 1
    assert samples[("retrain_serve_model_version", frozenset({"version": "v0001"}.items()))] == 0
    assert samples[("retrain_serve_model_swaps_total", frozenset())] == 2


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


GOOD_CSV = _csv(pd.DataFrame([ROW] * 3))
# Each kind of bad request: (what, method, path, headers, body, status, words of the reason).
BAD_REQUESTS = [
    ("unknown route", "GET", "/nowhere", {}, None, 404, "no route GET /nowhere"),
    ("wrong method", "GET", "/predict", {}, None, 405, "takes POST"),
    ("wrong method on a GET route", "DELETE", "/model", {}, None, 405, "takes GET"),
    ("wrong content type", "POST", "/predict", {"content-type": "text/plain"}, b"age=1", 415, "text/plain"),
    ("form instead of JSON", "POST", "/predict", {"content-type": "application/x-www-form-urlencoded"},
     b"age=1", 415, "not accepted"),
    ("no content type", "POST", "/predict", {}, b"[]", 415, "(none)"),
    ("another charset", "POST", "/predict", {"content-type": "application/json; charset=latin-1"},
     b"[]", 415, "charset latin-1"),
    ("empty body", "POST", "/predict", {"content-type": "application/json"}, b"", 400, "empty body"),
    ("blank body", "POST", "/predict", {"content-type": "text/csv"}, b" \n\n ", 400, "empty body"),
    ("JSON not UTF-8", "POST", "/predict", {"content-type": "application/json"},
     '[{"plan": "é"}]'.encode("latin-1"), 400, "not UTF-8"),
    ("CSV not UTF-8", "POST", "/predict", {"content-type": "text/csv"},
     "plan\nbasé\n".encode("latin-1"), 400, "not UTF-8"),
    ("malformed JSON", "POST", "/predict", {"content-type": "application/json"}, b'[{"age": 1,', 400,
     "not valid JSON"),
    ("JSON nested without end", "POST", "/predict", {"content-type": "application/json"},
     b"[" * 10_000, 400, "nested too deeply"),
    ("malformed CSV", "POST", "/predict", {"content-type": "text/csv"},
     GOOD_CSV + b"1,2,3,4,5,6,7,8,9\n", 400, "not a readable CSV"),
    ("CSV header only", "POST", "/predict", {"content-type": "text/csv"}, b"age,plan\n", 422, "no rows"),
    ("JSON scalar", "POST", "/predict", {"content-type": "application/json"}, b"42", 422,
     "expected a list of row objects, got a number"),
    ("object without rows", "POST", "/predict", {"content-type": "application/json"}, json.dumps(ROW).encode(),
     422, 'needs the key "rows"'),
    ("rows that are not a list", "POST", "/predict", {"content-type": "application/json"}, b'{"rows": "x"}',
     422, "got text"),
    ("empty list", "POST", "/predict", {"content-type": "application/json"}, b"[]", 422, "no rows"),
    ("list of non-objects", "POST", "/predict", {"content-type": "application/json"}, b"[1, 2]", 422,
     "row 1 is a number, not an object"),
    ("nested value", "POST", "/predict", {"content-type": "application/json"},
     json.dumps([{**ROW, "plan": {"name": "basic"}}]).encode(), 422, "row 1, column 'plan': an object"),
    ("a row lacking a feature", "POST", "/predict", {"content-type": "application/json"},
     json.dumps([ROW, {k: v for k, v in ROW.items() if k != "income"}]).encode(), 422, "row 2 lacks feature(s) income"),
    ("CSV lacking a feature column", "POST", "/predict", {"content-type": "text/csv"},
     _csv(pd.DataFrame([ROW]).drop(columns="region")), 422, "missing feature column(s) region"),
    ("a value that is not a number", "POST", "/predict", {"content-type": "application/json"},
     json.dumps([ROW, {**ROW, "age": "forty"}]).encode(), 422, "column 'age' expects numbers but 1 value(s) "
                                                              "are not (e.g. row 2: 'forty')"),
    ("true/false for a number", "POST", "/predict", {"content-type": "application/json"},
     json.dumps([{**ROW, "income": True}]).encode(), 422, "column 'income' expects numbers"),
    ("body over the size limit", "POST", "/predict", {"content-type": "text/csv"}, GOOD_CSV * 500, 413,
     "body over 20000 bytes"),
    ("body over the limit, sent without Content-Length", "POST", "/predict", {"content-type": "text/csv"},
     iter([GOOD_CSV] * 500), 413, "body over 20000 bytes"),
    ("too many JSON rows", "POST", "/predict", {"content-type": "application/json"},
     json.dumps([ROW] * 51).encode(), 413, "51 rows in one request, over serve.max_rows_per_request = 50"),
    ("too many CSV rows", "POST", "/predict", {"content-type": "text/csv"}, _csv(pd.DataFrame([ROW] * 60)), 413,
     "60 rows in one request"),
]


def test_bad_requests_get_a_4xx_with_a_one_line_reason(server) -> None:
    client, _ = server
    assert len({what for what, *_ in BAD_REQUESTS}) >= 20
    for what, method, path, headers, body, status, reason in BAD_REQUESTS:
        answer = client.request(method, path, headers=headers, content=body)
        assert answer.status_code == status, (what, answer.status_code, answer.text)
        error = answer.json()["error"]
        assert reason in error, (what, error)
        assert "\n" not in error and "Traceback" not in answer.text and len(error) < 1000, what
    # The server is fine afterwards and counted no server error.
    assert client.post("/predict", json=[ROW]).status_code == 200
    assert 'status="500"' not in client.get("/metrics").text


def test_ready_is_503_before_any_model_and_the_first_deployment_is_picked_up(tmp_path: Path, trained) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    app = create_app(registry, [], ServeSpec())
    with running_server(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/health").json() == {"status": "ok", "version": None}
        for path in ("/ready", "/model"):
            answer = client.get(path)
            assert answer.status_code == 503 and "no model is deployed yet" in answer.json()["error"]
        assert client.post("/predict", json=[ROW]).status_code == 503
        assert "no model is deployed" in client.get("/openapi.json").json()["components"]["schemas"]["Row"]["description"]
        registry.promote(register(registry, *trained["a"]))
        assert client.get("/ready").json() == {"status": "ready", "version": "v0001"}
        assert client.post("/predict", json=[ROW]).json()["version"] == "v0001"
        # `current` removed (rolled back to nothing): the last model keeps answering.
        registry.unset_current()
        assert client.post("/predict", json=[ROW]).json()["version"] == "v0001"


def test_a_version_that_cannot_be_loaded_leaves_the_previous_one_answering(server, home: Path) -> None:
    client, registry = server
    (home / "registry" / "v0002" / "model.skops").write_bytes(b"changed after it was written")
    registry.promote("v0002")
    wait_until(lambda: "retrain_serve_model_load_failures_total 1.0" in client.get("/metrics").text,
               "the failed load")
    answer = client.post("/predict", json=[ROW])
    assert answer.status_code == 200 and answer.json()["version"] == "v0001"
    # A server started on it has nothing to answer with, and says why.
    with running_server(create_app(registry, [], ServeSpec())) as base:
        ready = httpx.get(f"{base}/ready", timeout=30)
    assert ready.status_code == 503
    assert "v0002 cannot be served" in ready.json()["error"] and "sha256" in ready.json()["error"]


def test_versions_without_recorded_categories_take_them_from_the_encoder(tmp_path: Path, trained) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    registry.promote(register(registry, *trained["a"], categories=False))
    assert "categories" not in registry.get("v0001").lineage["training"]
    with running_server(create_app(registry, [], ServeSpec())) as base:
        model = httpx.get(f"{base}/model", timeout=30).json()
    assert model["categories"] == {"plan": ["basic", "plus", "pro"], "region": ["east", "north", "south", "west"]}


def test_hot_swaps_while_clients_send_requests(server) -> None:
    client, registry = server
    base = str(client.base_url)
    errors, versions = [], set()
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=base, timeout=30) as own:
            while not stop.is_set():
                answer = own.post("/predict", json=[ROW, ROW])
                if answer.status_code != 200 or len(answer.json()["predictions"]) != 2:
                    errors.append(answer.text)
                else:
                    versions.add(answer.json()["version"])

    threads = [threading.Thread(target=send) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for i in range(20):
            registry.promote("v0002" if i % 2 == 0 else "v0001")
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert versions == {"v0001", "v0002"}


def test_the_same_csv_gives_identical_predictions_through_predict_and_serve(server, home: Path,
                                                                           tmp_path: Path) -> None:
    client, _ = server
    rows = sample_frame(40, 11).drop(columns=["churned"]).astype(str)
    rows.loc[0, "income"], rows.loc[1, "plan"], rows.loc[2, "age"] = "inf", "", " 7 "
    csv = tmp_path / "rows.csv"
    rows.to_csv(csv, index=False)
    out = tmp_path / "predictions.csv"
    result = subprocess.run([sys.executable, "-m", "service.cli", "predict", str(csv), "--home", str(home),
                             "--output", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from_cli = pd.read_csv(out, dtype={"prediction": str}, float_precision="round_trip")

    answer = client.post("/predict", content=csv.read_bytes(), headers={"content-type": "text/csv"})
    assert answer.status_code == 200, answer.text
    from_server = pd.DataFrame(answer.json()["predictions"])
    assert from_server["prediction"].tolist() == from_cli["prediction"].tolist()
    for column in ("probability_0", "probability_1"):
        assert from_server[column].tolist() == from_cli[column].tolist()


def test_retrain_serve_command_with_flags_and_two_processes(home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "RETRAIN_SERVE__MAX_ROWS_PER_REQUEST": "10"}
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--home", str(home), "--port", "0",
                             "--workers", "2", "--max-rows", "3"], stderr=log, cwd=tmp_path, env=env)
    try:
        def port() -> int | None:
            found = re.search(r"http://127\.0\.0\.1:(\d+) with 2 processes", (tmp_path / "serve.log").read_text())
            return int(found.group(1)) if found else None

        base = f"http://127.0.0.1:{wait_until(port, 'the server to listen', 60)}"
        with httpx.Client(base_url=base, timeout=30) as client:
            wait_until(lambda: _ready(client), "both server processes", 60)
            for _ in range(6):
                assert client.post("/predict", json=[ROW] * 3).status_code == 200
            refused = client.post("/predict", json=[ROW] * 4)  # the flag beats the variable
            assert refused.status_code == 413 and "max_rows_per_request = 3" in refused.json()["error"]
            samples = metric_samples(client.get("/metrics").text)
        # The processes' counts are added up, whichever answered the scrape.
        assert samples[("retrain_serve_rows_predicted_total", frozenset({"version": "v0001"}.items()))] == 18
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    log.seek(0)
    output = log.read()
    assert code == 0, output
    assert "Traceback" not in output


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/ready").status_code == 200
    except httpx.TransportError:
        return False


def test_a_port_in_use_is_one_line(home: Path, tmp_path: Path) -> None:
    with running_server(create_app(ModelRegistry(home / "registry"), [], ServeSpec())) as base:
        port = base.rsplit(":", 1)[1]
        result = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--home", str(home), "--port", port],
                                capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"retrain: error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr


def test_answers_carry_ids_and_go_to_the_prediction_log(home: Path, tmp_path: Path) -> None:
    """[serve] log_predictions: every answer, under its id, in the prediction log that late
    labels are joined with (flows.production)."""
    from flows.production import predlog

    registry = ModelRegistry(home / "registry")
    app = create_app(registry, [], ServeSpec(), prediction_log=str(tmp_path / "log"))
    with running_server(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        two = client.post("/predict", json=[ROW, {**ROW, "age": 70}], headers={"X-Request-ID": "req-7"}).json()
        one = client.post("/predict", json=[ROW], headers={"X-Request-ID": "req-8"}).json()
        anonymous = client.post("/predict", json=[ROW]).json()
    assert [p["id"] for p in two["predictions"]] == ["req-7-1", "req-7-2"]
    assert [p["id"] for p in one["predictions"]] == ["req-8"]
    made_up = anonymous["predictions"][0]["id"]
    logged = predlog.read_predictions(tmp_path / "log")  # written when the server stopped
    assert sorted(logged["id"]) == sorted(["req-7-1", "req-7-2", "req-8", made_up])
    by_id = logged.set_index("id")
    for answer in two["predictions"] + one["predictions"]:
        assert by_id.loc[answer["id"], "prediction"] == str(answer["prediction"])
        assert by_id.loc[answer["id"], "probability_1"] == pytest.approx(answer["probability_1"])
    assert set(logged["version"]) == {"v0001"} and set(logged["source"]) == {"retrain serve"}
    assert by_id.loc["req-7-2", "age"] == 70
