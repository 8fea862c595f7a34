"""Shared, session-scoped real components for integration tests.

A real Prefect API (server subprocess with a throw-away database) and a real 2-worker
Dask LocalCluster, started once per test session; daemons started by tests are real
subprocesses of the installed ``retrain`` command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """One Prefect API server for the whole session (its own temporary database)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        # Send the last queued log lines while the API still answers.
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


@pytest.fixture(scope="session")
def dask_address(prefect_api_url: str) -> Iterator[str]:
    """A real 2-worker LocalCluster (worker processes), started after the API so the
    workers inherit its URL."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=40)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()
