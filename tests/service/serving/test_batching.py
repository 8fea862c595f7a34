"""Micro-batching of `retrain serve`: the batcher on real models, then over loopback with
concurrent clients, and several forked server processes sharing the warm model."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest
from test_serve import ROW, _ready, home, metric_samples, trained, wait_until  # noqa: F401 - fixtures

from flows.models.predict import predict_frame
from flows.models.registry import ModelRegistry
from service.config import ServeSpec
from service.sample import sample_frame
from service.serving.app import create_app, running_server
from service.serving.batching import MicroBatcher
from service.serving.holder import LoadedModel, ModelHolder


def loaded_version(home: Path, version: str) -> LoadedModel:
    registry = ModelRegistry(home / "registry")
    registry.promote(version)
    loaded = ModelHolder(registry, []).get()
    assert loaded is not None and loaded.version == version
    return loaded


def rows(count: int, seed: int) -> pd.DataFrame:
    return sample_frame(count, seed).drop(columns=["churned"])


def alone(loaded: LoadedModel, frame: pd.DataFrame) -> list[dict]:
    """What the model answers for these rows without any batching."""
    from flows.data.features import prepare_features

    features = prepare_features(frame, loaded.schema, "request").features
    return json.loads(json.dumps(predict_frame(loaded.model, features, loaded.schema.task).to_dict("records")))


def same(answered: list[dict], expected: list[dict]) -> bool:
    """The same predictions; probabilities equal up to the last bits, which a linear model's
    matrix product may round differently in a larger batch (trees give identical values)."""
    assert [a["prediction"] for a in answered] == [e["prediction"] for e in expected]
    for a, e in zip(answered, expected):
        assert a.keys() == {"id", *e.keys()} and a["id"]  # every answered row has its id
        assert [a[k] for k in e if k != "prediction"] == pytest.approx([e[k] for k in e if k != "prediction"],
                                                                       rel=1e-12, abs=1e-15)
    return True


def run_batcher(batcher: MicroBatcher, requests: list[tuple[LoadedModel, pd.DataFrame]]) -> list:
    async def main() -> list:
        return await asyncio.gather(*(batcher.predict(m, f) for m, f in requests), return_exceptions=True)

    try:
        return asyncio.run(main())
    finally:
        batcher.close()


def test_requests_queued_together_go_through_one_model_call_and_keep_their_rows(home: Path) -> None:
    loaded = loaded_version(home, "v0001")
    frames = [rows(1 + i % 3, seed) for i, seed in enumerate(range(20, 32))]
    batches: list[tuple[str, int, int]] = []
    answers = run_batcher(MicroBatcher(1024, 0.05, on_batch=lambda *b: batches.append(b)),
                          [(loaded, f) for f in frames])
    assert batches == [("v0001", 12, sum(len(f) for f in frames))]
    for frame, answer in zip(frames, answers):
        body = json.loads(answer.payload)
        assert answer.version == body["version"] == "v0001"
        assert same(body["predictions"], alone(loaded, frame))


def test_a_batch_never_mixes_two_versions_and_stays_within_its_rows(home: Path) -> None:
    first, second = loaded_version(home, "v0001"), loaded_version(home, "v0002")
    # As across a hot swap: requests of v0002 arrive while some of v0001 are still queued.
    requests = [(first, rows(3, 1)), (first, rows(3, 2)), (second, rows(3, 3)), (first, rows(3, 4)),
                (second, rows(3, 5)), (first, rows(10, 6)), (second, rows(2, 7))]
    batches: list[tuple[str, int, int]] = []
    answers = run_batcher(MicroBatcher(7, 0.05, on_batch=lambda *b: batches.append(b)), requests)
    assert all(rows_ <= 7 or count == 1 for _, count, rows_ in batches)
    assert sum(count for _, count, _ in batches) == len(requests)
    assert ("v0001", 1, 10) in batches  # a request over the bound goes alone, never split
    for (model, frame), answer in zip(requests, answers):
        assert answer.version == model.version == json.loads(answer.payload)["version"]
        assert same(json.loads(answer.payload)["predictions"], alone(model, frame))


def test_bad_rows_refuse_only_their_own_request(home: Path) -> None:
    loaded = loaded_version(home, "v0001")
    bad = rows(2, 8).astype(str)
    bad.loc[1, "age"] = "forty"
    requests = [(loaded, rows(2, 9)), (loaded, bad), (loaded, rows(1, 10))]
    batches: list[tuple[str, int, int]] = []
    answers = run_batcher(MicroBatcher(1024, 0.05, on_batch=lambda *b: batches.append(b)), requests)
    assert answers[1].error is not None and answers[1].error.status == 422
    assert "column 'age' expects numbers" in str(answers[1].error)
    for index in (0, 2):
        assert same(json.loads(answers[index].payload)["predictions"], alone(loaded, requests[index][1]))
    assert batches == [("v0001", 2, 3)]  # the refused request's rows are not counted as predicted


def test_concurrent_clients_are_batched_and_every_answer_is_its_own(home: Path) -> None:
    registry = ModelRegistry(home / "registry")
    loaded = loaded_version(home, "v0001")
    app = create_app(registry, [], ServeSpec(max_batch_rows=64, max_batch_wait_ms=20))
    frames = [rows(1 + i % 2, 100 + i) for i in range(48)]
    answers: dict[int, httpx.Response] = {}
    with running_server(app) as base:
        def send(indexes: range) -> None:
            with httpx.Client(base_url=base, timeout=60) as client:
                for i in indexes:
                    answers[i] = client.post("/predict", json=frames[i].to_dict("records"))

        threads = [threading.Thread(target=send, args=(range(k, 48, 8),)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        samples = metric_samples(httpx.get(f"{base}/metrics", timeout=30).text)
        bad = httpx.post(f"{base}/predict", json=[{**ROW, "age": "forty"}], timeout=30)
    for i, frame in enumerate(frames):
        assert answers[i].status_code == 200, answers[i].text
        assert answers[i].headers["x-model-version"] == answers[i].json()["version"] == "v0001"
        assert same(answers[i].json()["predictions"], alone(loaded, frame))
    calls = samples[("retrain_serve_batch_requests_count", frozenset())]
    assert samples[("retrain_serve_batch_requests_sum", frozenset())] == 48
    assert calls < 48  # some model calls answered several requests
    assert samples[("retrain_serve_batch_rows_sum", frozenset())] == sum(len(f) for f in frames)
    assert bad.status_code == 422 and set(bad.json()) == {"error", "version"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked server processes are Linux only")
def test_forked_server_processes_share_the_warm_model_and_end_with_their_parent(home: Path, tmp_path: Path) -> None:
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--home", str(home), "--port", "0",
                             "--workers", "2"], stderr=log, cwd=tmp_path)
    parent = psutil.Process(proc.pid)
    try:
        def port() -> int | None:
            found = re.search(r"http://127\.0\.0\.1:(\d+) with 2 processes", (tmp_path / "serve.log").read_text())
            return int(found.group(1)) if found else None

        base = f"http://127.0.0.1:{wait_until(port, 'the server to listen', 60)}"
        children = wait_until(lambda: len(parent.children()) == 2 and parent.children(), "two server processes", 60)
        with httpx.Client(base_url=base, timeout=30) as client:
            wait_until(lambda: _ready(client), "the servers to answer", 60)
            # The model was loaded once, by the parent: no server process loaded it again.
            assert (tmp_path / "serve.log").read_text().count("serving model v0001") == 1
            os.kill(children[0].pid, signal.SIGKILL)  # a server process dies: another is forked
            wait_until(lambda: children[0].pid not in [c.pid for c in parent.children()]
                       and len(parent.children()) == 2, "a replacement server process", 60)
            for _ in range(10):
                assert client.post("/predict", json=[ROW]).json()["version"] == "v0001"
            samples = metric_samples(client.get("/metrics").text)
            # Connections are spread over the processes (each listens with a socket of its own).
            kept = [httpx.Client(base_url=base, timeout=30) for _ in range(16)]
            try:
                for other in kept:
                    assert other.post("/predict", json=[ROW]).status_code == 200
                per_process = [len([c for c in child.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED])
                               for child in parent.children()]
            finally:
                for other in kept:
                    other.close()
            assert sum(per_process) >= 16 and min(per_process) > 0, per_process
        # Each live server process reports the model it inherited (the gauge has one series per pid).
        in_use = [value for (name, labels), value in samples.items()
                  if name == "retrain_serve_model_version" and ("version", "v0001") in labels]
        assert in_use == [1.0, 1.0]
        survivors = parent.children()
        proc.kill()  # the parent killed outright: its servers do not outlive it
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(survivors, timeout=30)
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in parent.children() if proc.poll() is None else []:
            child.kill()
    log.close()


def test_a_bad_request_in_a_busy_server_is_one_line_and_others_are_answered(home: Path) -> None:
    registry = ModelRegistry(home / "registry")
    loaded_version(home, "v0001")
    app = create_app(registry, [], ServeSpec(max_batch_wait_ms=50))
    statuses: list[int] = []
    with running_server(app) as base:
        def good() -> None:
            with httpx.Client(base_url=base, timeout=60) as client:
                statuses.extend(client.post("/predict", json=[ROW]).status_code for _ in range(10))

        threads = [threading.Thread(target=good) for _ in range(4)]
        for thread in threads:
            thread.start()
        with httpx.Client(base_url=base, timeout=60) as client:
            refused = [client.post("/predict", json=[{**ROW, "income": True}]) for _ in range(5)]
        for thread in threads:
            thread.join()
    assert statuses == [200] * 40
    for answer in refused:
        assert answer.status_code == 422 and "income" in answer.json()["error"]
        assert "\n" not in answer.json()["error"]


def test_values_keep_their_type_when_requests_are_stacked(home: Path) -> None:
    loaded = loaded_version(home, "v0001")
    as_numbers = pd.DataFrame([ROW, {**ROW, "income": 61000.5}])
    as_boolean = pd.DataFrame([{**ROW, "income": True}])  # JSON true is not a number
    as_text = pd.DataFrame([{**ROW, "age": " 41 "}])  # as CSV sends it
    answers = run_batcher(MicroBatcher(1024, 0.05), [(loaded, as_numbers), (loaded, as_boolean), (loaded, as_text)])
    assert answers[1].error is not None and "column 'income' expects numbers" in str(answers[1].error)
    assert same(json.loads(answers[0].payload)["predictions"], alone(loaded, as_numbers))
    assert same(json.loads(answers[2].payload)["predictions"], alone(loaded, as_text))
