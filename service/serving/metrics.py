"""Prometheus metrics of the prediction server and of the daemon.

The server's (``ServeMetrics``) live in a registry of its own per app: requests by route
and status, latency, rows predicted, the model version in use and the time its load took.
With several server processes (``serve.workers``) each process writes its values to files
under ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds them up, whichever process answers.

The daemon's (``DaemonCollector``) are read at scrape time from the ledger (read-only) and
the registry, so they cost nothing between scrapes and can never disagree with
``retrain status``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from core.errors import RetrainError
from flows.models.registry import ModelRegistry
from service.intake.inbox import Home
from service.intake.ledger import FileState, Ledger

log = logging.getLogger("retrain.metrics")
# No `*_created` series beside each counter: Prometheus tracks resets itself, and they would
# double what a scrape returns.
disable_created_metrics()

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Seconds; a one-row prediction takes a few milliseconds, a 100,000-row one seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Requests and rows per model call of the micro-batcher (service.serving.batching).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
# Label of requests that matched no route: the raw path would let any client create series.
UNMATCHED = "unmatched"


class ServeMetrics:
    """The prediction server's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("retrain_serve_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("retrain_serve_request_seconds", "Time from request to response, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.rows = Counter("retrain_serve_rows_predicted", "Rows predicted, by the model version that answered",
                            ["version"], registry=self.registry)
        # 1 for the version answering now, 0 for versions this process served before.
        self.model = Gauge("retrain_serve_model_version", "Model version in use (1) or served before (0)",
                           ["version"], registry=self.registry, multiprocess_mode="liveall")
        self.load_seconds = Gauge("retrain_serve_model_load_seconds",
                                  "Seconds the last swap took to load its model (hash check included)",
                                  registry=self.registry, multiprocess_mode="livemostrecent")
        self.batch_requests = Histogram("retrain_serve_batch_requests", "Requests answered by one model call",
                                        buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("retrain_serve_batch_rows", "Rows predicted by one model call",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.swaps = Counter("retrain_serve_model_swaps", "Models loaded and swapped in", registry=self.registry)
        self.load_failures = Counter("retrain_serve_model_load_failures",
                                     "Deployed versions that could not be loaded (the previous one kept serving)",
                                     registry=self.registry)

    def swapped(self, old: str | None, new: str, seconds: float) -> None:
        if old is not None:
            self.model.labels(version=old).set(0)
        self.model.labels(version=new).set(1)
        self.load_seconds.set(seconds)
        self.swaps.inc()

    def announce(self, version: str, seconds: float) -> None:
        """The model this process answers with, without counting a swap (a forked server
        process starts with the model its parent loaded)."""
        self.model.labels(version=version).set(1)
        self.load_seconds.set(seconds)

    def batched(self, version: str, requests: int, rows: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_rows.observe(rows)
        self.rows.labels(version=version).inc(rows)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The metrics in the format the scraper asked for (Prometheus text or OpenMetrics)."""
        encode, content_type = choose_encoder(accept)
        if os.environ.get(MULTIPROCESS_VARIABLE):
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return encode(merged), content_type
        return encode(self.registry), content_type


class MetricsMiddleware:
    """Counts and times every HTTP request (a plain ASGI middleware: no per-request task)."""

    def __init__(self, app: Any, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_noting_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            # The router puts the matched route into the scope: its template, never the raw path.
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            self.metrics.observe(route, scope["method"], status, time.perf_counter() - started)


def forget_process(pid: int) -> None:
    """A server process ends: its "live" gauges leave the added-up metrics."""
    if os.environ.get(MULTIPROCESS_VARIABLE):
        multiprocess.mark_process_dead(pid)


# -- the daemon ------------------------------------------------------------------------------

class DaemonCollector(Collector):
    """The daemon's state as Prometheus metrics, read from the home at each scrape."""

    def __init__(self, home: Home):
        self.home = home

    def collect(self) -> Iterator[Metric]:
        try:
            ledger = Ledger(self.home.ledger_path, readonly=True)
        except RetrainError:
            return  # no ledger yet: nothing to report
        try:
            counts, outcomes, runs = ledger.counts(), ledger.run_counts(), ledger.runs(limit=50)
        finally:
            ledger.close()
        now = time.time()
        files = GaugeMetricFamily("retrain_files", "Files in the ledger, by state", labels=["state"])
        for state, n in counts.items():
            files.add_metric([state], n)
        yield files
        yield GaugeMetricFamily("retrain_queue_files", "Files waiting for a run", value=counts[FileState.QUEUED])
        by_decision = CounterMetricFamily("retrain_runs", "Runs, by decision (or state: running, failed, "
                                          "interrupted)", labels=["decision"])
        for outcome, n in outcomes.items():
            by_decision.add_metric([outcome], n)
        yield by_decision
        yield GaugeMetricFamily("retrain_run_in_progress", "1 while a run is in progress",
                                value=float(bool(runs) and runs[0].state == "running"))
        if runs:
            yield GaugeMetricFamily("retrain_seconds_since_last_run", "Seconds since the newest run started",
                                    value=now - runs[0].started_at)
        yield from self._model_metrics(now)
        yield from _monitoring_metrics(runs)

    def _model_metrics(self, now: float) -> Iterator[Metric]:
        registry = ModelRegistry(self.home.registry)
        version, switched = registry.current_version(), registry.switched_at()
        if version is not None:
            current = GaugeMetricFamily("retrain_current_model", "The version `current` points at",
                                        labels=["version"])
            current.add_metric([version], 1)
            yield current
        if switched is not None:
            yield GaugeMetricFamily("retrain_seconds_since_last_deployment",
                                    "Seconds since `current` last changed (a deployment or a rollback)",
                                    value=now - switched)


def _monitoring_metrics(runs: list) -> Iterator[Metric]:
    """The deployed model's live metric and the drift of the newest rows, as the last run
    that measured them recorded them (``live`` and ``drift`` in its ledger metrics)."""
    live = next((r.metrics["live"] for r in runs
                 if isinstance(r.metrics.get("live"), Mapping) and r.metrics["live"].get("value") is not None), None)
    if live is not None:
        family = GaugeMetricFamily("retrain_live_metric", "The deployed model's metric on the newest rows "
                                   "it never saw, as the last run that measured it found it",
                                   labels=["metric", "version"])
        family.add_metric([str(live.get("metric")), str(live.get("version"))], float(live["value"]))
        yield family
    drift = next((r.metrics["drift"].get("scores") for r in runs
                  if isinstance(r.metrics.get("drift"), Mapping)), None)
    if drift:
        yield from _measurement("retrain_drift", "Drift of the newest rows per feature (population "
                                "stability index), as the last run that measured it found it", drift)


def _measurement(name: str, doc: str, value: Any) -> Iterator[Metric]:
    """A number as one sample; a table of numbers as one sample per entry (label ``name``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        yield GaugeMetricFamily(name, doc, value=float(value))
    elif isinstance(value, Mapping):
        family = GaugeMetricFamily(name, doc, labels=["name"])
        for key, number in value.items():
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                family.add_metric([str(key)], float(number))
        if family.samples:
            yield family


@contextmanager
def serve_daemon_metrics(home: Home, host: str, port: int) -> Iterator[int]:
    """The daemon's metrics at http://host:port/metrics while the context lasts (a thread
    of prometheus_client's own HTTP server). Yields the port (useful when 0 picked one)."""
    registry = CollectorRegistry()
    registry.register(DaemonCollector(home))
    try:
        server, thread = start_http_server(port, host, registry)
    except OSError as exc:
        raise RetrainError(f"cannot serve daemon metrics on {host}:{port} ({exc.strerror}); "
                           "choose another daemon.metrics_port") from None
    bound = server.server_port
    log.info("daemon metrics on http://%s:%d/metrics", host, bound)
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
