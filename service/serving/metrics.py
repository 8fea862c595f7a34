"""Prometheus metrics of the prediction server (the daemon's are ``service.runner.metrics``).

``ServeMetrics`` live in a registry of its own per app: requests by route
and status, latency, rows predicted, the model version in use and the time its load took.
With several server processes (``serve.workers``) each process writes its values to files
under ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds them up, whichever process answers.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder

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




