"""Prometheus metrics of the daemon (``[daemon] metrics_port``).

They are read at scrape time from the ledger (read-only) and the registry, so they cost
nothing between scrapes and can never disagree with ``retrain status``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.errors import RetrainError
from core.records import ProductionMetric
from flows.models.registry import ModelRegistry
from service.intake.home import Home
from service.intake.ledger import FileState, Ledger
from service.status import production_metrics

log = logging.getLogger("retrain.metrics")
# No `*_created` series beside each counter: Prometheus tracks resets itself.
disable_created_metrics()


class DaemonCollector(Collector):
    """The daemon's state as Prometheus metrics, read from the home at each scrape."""

    def __init__(self, home: Home):
        self.home = home

    def collect(self) -> Iterator[Metric]:
        try:
            ledger = Ledger(self.home.ledger_path, readonly=True)
        except RetrainError:
            return  # no ledger yet: nothing to report
        with ledger:
            counts, outcomes, runs = ledger.counts(), ledger.run_counts(), ledger.runs(limit=50)
            production = production_metrics(ledger)
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
        yield from _production_metrics(production)

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


def _production_metrics(production: list[ProductionMetric]) -> Iterator[Metric]:
    """Each version's metric on what it served, from the labels that came later."""
    if not production:
        return
    value = GaugeMetricFamily("retrain_production_metric", "A version's metric on its predictions whose labels "
                              "arrived (the gate's metric)", labels=["version", "metric"])
    rows = GaugeMetricFamily("retrain_production_rows", "A version's predictions whose labels arrived",
                             labels=["version"])
    for m in production:
        if m.value is not None:
            value.add_metric([m.version, m.metric], m.value)
        rows.add_metric([m.version], m.rows)
    yield value
    yield rows


def _monitoring_metrics(runs: list) -> Iterator[Metric]:
    """The deployed model's live metric and the drift of the newest rows, as the last run
    that measured them recorded them (``live`` and ``drift`` in its ledger metrics)."""
    live = next((r.details["live"] for r in runs
                 if isinstance(r.details.get("live"), Mapping) and r.details["live"].get("value") is not None), None)
    if live is not None:
        family = GaugeMetricFamily("retrain_live_metric", "The deployed model's metric on the newest rows "
                                   "it never saw, as the last run that measured it found it",
                                   labels=["metric", "version"])
        family.add_metric([str(live.get("metric")), str(live.get("version"))], float(live["value"]))
        yield family
    drift = next((r.details["drift"].get("scores") for r in runs
                  if isinstance(r.details.get("drift"), Mapping)), None)
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
