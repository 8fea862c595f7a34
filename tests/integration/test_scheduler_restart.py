"""The scheduler of an existing Dask cluster restarts under a running daemon: a real
`dask scheduler` stopped with a signal while a run is in flight and started again on the
same address, a `dask worker` kept running by a supervisor (it exits with its scheduler
and waits for the new one). The run is handed back without counting an attempt; the daemon
keeps taking files in, waits for the scheduler, registers its worker plugins on the new one
and runs the handed-back file with the one that came meanwhile: each archived once, one
model version, nothing quarantined."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest
from harness import Daemon, RestartableDaskCluster, cli, daemon_env, wait_for
from invariants import check_invariant, check_registry_agrees

from flows.models.registry import ModelRegistry
from service.intake.home import Home
from service.intake.ledger import Ledger

# A daemon's start, a worker started again and two runs: on a loaded 2-core machine over 200 s.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# One attempt: a hand-back counted as the file's failure would quarantine it at once.
SETTINGS = {"model__params": '{"max_iter": 20}', "daemon__max_attempts": "1"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RestartableDaskCluster]:
    cluster = RestartableDaskCluster(tmp_path, workers=1)
    try:
        yield cluster
    finally:
        cluster.close()


def _wait_for_tasks_on(address: str, timeout: float) -> None:
    """Until the scheduler holds tasks: a run is in flight on it."""
    from distributed import Client

    with Client(address, timeout="30s", set_as_default=False) as client:
        wait_for(lambda: client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)), timeout,
                 "the run's tasks on the scheduler", interval=0.05)


def _drop(source: Path, home: Path) -> None:
    temporary = home / "inbox" / f".{source.name}.tmp"
    shutil.copyfile(source, temporary)
    temporary.rename(home / "inbox" / source.name)


def _plugins(address: str) -> tuple[list[str], list[list[str]]]:
    """The worker plugins the scheduler holds, and those each of its workers runs."""
    from distributed import Client

    with Client(address, timeout="10s", set_as_default=False) as client:
        on_scheduler = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
        on_workers = client.run(lambda dask_worker: list(dask_worker.plugins))
    return on_scheduler, list(on_workers.values())


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_run_in_flight_when_the_scheduler_restarts_runs_again_on_the_new_one(
        tmp_path: Path, prefect_api_url: str, cluster: RestartableDaskCluster, stop: signal.Signals) -> None:
    home = tmp_path / f"scheduler-{stop.name.lower()}"  # its own deployment on the shared API
    env = daemon_env(home, prefect_api_url, dask__address=cluster.address, **SETTINGS)
    first, second = (Path(p) for p in cli("sample", "--out", str(tmp_path / "data"), "--files", "2", "--rows",
                                          "10000", "--seed", "3", env=env, cwd=tmp_path).stdout.split())
    went_away = f"the Dask scheduler at {cluster.address} went away; the run is handed back"
    daemon = Daemon(home, env, cwd=tmp_path)
    try:
        daemon.wait_ready(timeout=240)
        _drop(first, home)
        _wait_for_tasks_on(cluster.address, timeout=180)
        cluster.stop_scheduler(stop)
        wait_for(lambda: went_away in daemon.log(), 120, "the run to be handed back")
        # While the scheduler is down the daemon keeps taking files in, and waits.
        _drop(second, home)
        wait_for(lambda: f"claimed '{second.name}'" in daemon.log(), 60, "the second file to be claimed")
        time.sleep(2)  # a few questions to the scheduler that go unanswered
        assert daemon.proc.poll() is None, daemon.log()
        assert "run 2 started" not in daemon.log()
        assert json.loads(Home(home).heartbeat_path.read_text())["state"] == "waiting for the Dask scheduler"
        cluster.start_scheduler()
        wait_for(lambda: "answers again" in daemon.log(), 120, "the daemon to see the scheduler back")
        wait_for(lambda: check_invariant(home, allow_in_flight=True)["archived"] == 2, 300, "both files archived")
        scheduler_plugins, worker_plugins = _plugins(cluster.address)
        assert daemon.stop(signal.SIGTERM, timeout=120) == 0, daemon.log()
    finally:
        daemon.kill_group()
    log = daemon.log()
    assert log.count(went_away) == 1, log
    ours = {"retrain-warm-up", "retrain-forget-run-profiles", "retrain-release-free-memory"}
    assert ours <= set(scheduler_plugins)
    assert worker_plugins and all(ours <= set(names) for names in worker_plugins), worker_plugins
    ledger = Ledger(home / "state" / "ledger.sqlite", readonly=True)
    try:
        handed_back, rerun = sorted(ledger.runs(limit=10), key=lambda run: run.id)
        files = ledger.files()
    finally:
        ledger.close()
    assert (handed_back.state, rerun.state, rerun.decision) == ("interrupted", "completed", "deployed"), (
        handed_back, rerun)
    # The scheduler's fault, not the files': no attempt counted, both used by the one run that completed.
    assert [(f.attempts, f.run_id) for f in files] == [(0, rerun.id), (0, rerun.id)], files
    counts = check_invariant(home)
    assert (counts["archived"], counts["quarantined"]) == (2, 0), counts
    assert check_registry_agrees(home) == "v0001"
    assert [v.version for v in ModelRegistry(home / "registry").versions()] == ["v0001"]
    assert "Traceback (most recent call last)" not in log, log
