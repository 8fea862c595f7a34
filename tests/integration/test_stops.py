"""Stops and faults with real signals, real servers and real processes: a stop lets the run
in flight finish with its API and workers alive; a killed daemon leaves no process behind;
an embedded Prefect API killed under the daemon is started again. Each time the files, the
ledger and the registry tell one story (tests/invariants.py)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest
from harness import Daemon, cli, daemon_env, wait_for
from invariants import check_invariant, check_registry_agrees

from service.intake.ledger import Ledger

pytestmark = pytest.mark.integration

# The daemon's own embedded Prefect API (no PREFECT_API_URL): it is what a stop must keep.
SETTINGS = {
    "model__params": '{"max_iter": 20}',  # the run is about the stop, not the model
    # The run is still in flight when the stop comes, however fast the machine: its deploy
    # waits in this hook (the workers ignore the group's signal, and so does the hook).
    "deploy__hook_command": "sleep 3",
    # A loaded 2-core machine runs slowly: the grace must cover the run.
    "daemon__grace_seconds": "400",
}


def _drop(source: Path, home: Path) -> None:
    (home / "inbox").mkdir(parents=True, exist_ok=True)
    temporary = home / "inbox" / f".{source.name}.tmp"
    shutil.copyfile(source, temporary)
    os.rename(temporary, home / "inbox" / source.name)


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _all_gone(processes: list[psutil.Process], timeout: float) -> list[str]:
    """The command lines of those still running after ``timeout`` (zombies count as gone)."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    left = []
    for process in alive:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(process.cmdline()[:4]))
        except psutil.NoSuchProcess:
            pass
    return left


def _runs(home: Path):
    ledger = Ledger(home / "state" / "ledger.sqlite", readonly=True)
    try:
        return ledger.runs(limit=100)
    finally:
        ledger.close()


def assert_readable(log: str) -> None:
    """One line per problem: no traceback over many lines, no dump of several kB."""
    assert "Traceback (most recent call last)" not in log, log
    assert max(len(line) for line in log.splitlines()) < 1000, log


@pytest.fixture(scope="module")
def batch_file(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("batch")
    env = daemon_env(data / "unused")
    # The deploy hook keeps the run in flight; `make faults` stops a 300,000-row run.
    paths = cli("sample", "--out", str(data), "--files", "1", "--rows", "20000", "--seed", "5",
                env=env, cwd=data).stdout.split()
    return Path(paths[0])


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_to_the_whole_group_lets_the_run_in_flight_finish(tmp_path: Path, batch_file: Path,
                                                                  stop: signal.Signals) -> None:
    """systemd's KillMode=control-group and a terminal's Ctrl+C signal every process of the
    group: the embedded API and the workers must not act on it. The run in flight finishes
    and is recorded; then the daemon stops them and exits 0, leaving nothing."""
    home = tmp_path / "home"
    daemon = Daemon(home, daemon_env(home, **SETTINGS), cwd=tmp_path)
    try:
        daemon.wait_ready(timeout=240)
        _drop(batch_file, home)
        wait_for(lambda: "run 1 started" in daemon.log(), 120, "the run to start")
        children = _descendants(daemon.proc.pid)
        assert any("service.runtime.tethered" in " ".join(p.cmdline()) for p in children), children
        os.killpg(daemon.proc.pid, stop)
        code = daemon.proc.wait(timeout=600)
        log = daemon.log()
    finally:
        daemon.kill_group()
    assert code == 0, log
    assert _all_gone(children, timeout=30) == []
    assert "did not finish in time" not in log and "handed back" not in log, log
    run = _runs(home)[0]
    assert (run.id, run.state, run.decision) == (1, "completed", "deployed"), (run, log)
    assert check_invariant(home)["archived"] == 1
    assert check_registry_agrees(home) == "v0001"
    assert_readable(log)


def test_a_killed_daemon_leaves_no_process_behind(tmp_path: Path) -> None:
    """SIGKILL to the daemon alone (no stop of its own): its embedded API (own session)
    and its workers end by themselves, through the pipes they watch."""
    home = tmp_path / "home"
    daemon = Daemon(home, daemon_env(home), cwd=tmp_path)
    try:
        daemon.wait_ready(timeout=240)
        children = _descendants(daemon.proc.pid)
        assert len(children) >= 3, children  # the API and two workers (and Dask's helpers)
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(timeout=30)
        assert _all_gone(children, timeout=60) == []
    finally:
        daemon.kill_group()


def test_an_embedded_api_killed_under_the_daemon_is_started_again(tmp_path: Path) -> None:
    """The API dies with SIGKILL while a run is in flight: the daemon starts it again on the
    same address; the run completes (or fails without counting and runs again); a file
    dropped afterwards is taken too; nothing is lost or used twice."""
    home = tmp_path / "home"
    env = daemon_env(home)
    data = tmp_path / "data"
    first, second = (Path(p) for p in cli("sample", "--out", str(data), "--files", "2", "--rows", "40000",
                                          "--seed", "9", env=env, cwd=tmp_path).stdout.split())
    daemon = Daemon(home, env, cwd=tmp_path)
    try:
        daemon.wait_ready(timeout=240)
        _drop(first, home)
        wait_for(lambda: "run 1 started" in daemon.log(), 120, "the run to start")
        time.sleep(3)  # into the flow: its tasks report to the API while it is gone
        api = [p for p in _descendants(daemon.proc.pid) if "service.runtime.tethered" in " ".join(p.cmdline())]
        assert len(api) == 1
        api[0].kill()
        wait_for(lambda: "the embedded Prefect API answers again" in daemon.log(), 240, "the API to be back")
        _drop(second, home)
        wait_for(lambda: check_invariant(home, allow_in_flight=True)["archived"] == 2, 400,
                 "both files to be archived")
        assert daemon.stop(signal.SIGTERM, timeout=120) == 0, daemon.log()
    finally:
        daemon.kill_group()
    check_invariant(home)
    assert check_registry_agrees(home) is not None
    assert_readable(daemon.log())
