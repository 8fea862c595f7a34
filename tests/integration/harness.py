"""Helpers for tests that drive the real `retrain` command and daemon."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

RETRAIN = shutil.which("retrain", path=str(Path(sys.executable).parent)) or "retrain"


def daemon_env(home: Path, prefect_api_url: str | None = None, **settings: str) -> dict[str, str]:
    """Environment for a daemon subprocess: fast intake settings for tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETRAIN_", "PREFECT_"))}
    env.update({
        "RETRAIN_HOME": str(home),
        "RETRAIN_WATCHER__SETTLE_SECONDS": "0.5",
        "RETRAIN_WATCHER__RESCAN_SECONDS": "1.0",
        "RETRAIN_WATCHER__BATCH_WINDOW_SECONDS": "0.5",
        "RETRAIN_DEPLOY__RETRY_DELAY_SECONDS": "0.2",
        "RETRAIN_DASK__DASHBOARD_ADDRESS": "null",
        # The Prefect UI only in the tests that look at it (its files are copied at each new home).
        "RETRAIN_DAEMON__PREFECT_UI": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
    })
    if prefect_api_url:
        env["PREFECT_API_URL"] = prefect_api_url
    for key, value in settings.items():
        env[f"RETRAIN_{key.upper()}"] = value
    return env


class Daemon:
    """A real `retrain watch` process in its own process group (so a kill takes its
    worker processes with it, like a power cut)."""

    def __init__(self, home: Path, env: dict[str, str], cwd: Path):
        self.home = home
        self.log_path = home.parent / f"{home.name}-daemon.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([RETRAIN, "watch"], env=env, cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        wait_for(lambda: "press Ctrl+C to stop" in self.log() or self.proc.poll() is not None,
                 timeout, "daemon start")
        assert self.proc.poll() is None, f"daemon exited early:\n{self.log()}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._cleanup()

    def kill_group(self) -> None:
        """SIGKILL the daemon and everything it started."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self._cleanup()

    def _cleanup(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers of the group, if any
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([RETRAIN, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def status_json(home: Path, env: dict[str, str]) -> dict:
    result = cli("status", "--json", env=env, cwd=home.parent)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class RestartableDaskCluster:
    """`dask scheduler` on a port of its own, and `dask worker` processes kept running by a
    supervisor thread, as systemd's ``Restart=always`` keeps them: a Dask worker exits when
    its scheduler goes away (distributed does not reconnect workers to a new scheduler), and
    one started again waits for a scheduler to answer at the address. The scheduler can be
    stopped with a signal and started again on the same address."""

    def __init__(self, folder: Path, workers: int = 1):
        from service.runtime.api import free_port

        self.address = f"tcp://127.0.0.1:{free_port()}"
        self._dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or "dask"
        self._env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RETRAIN_"))}
        self._log = open(folder / "dask.log", "ab")
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen | None] = [None] * workers
        self.worker_starts = 0
        self._closing = threading.Event()
        self.start_scheduler()
        self._supervisor = threading.Thread(target=self._keep_workers_running, name="dask-worker-supervisor",
                                            daemon=True)
        self._supervisor.start()
        self.wait_for_workers(workers)

    def start_scheduler(self) -> None:
        port = self.address.rsplit(":", 1)[1]
        self.scheduler = subprocess.Popen([self._dask, "scheduler", "--host", "127.0.0.1", "--port", port,
                                           "--no-dashboard"], env=self._env, stdout=self._log,
                                          stderr=subprocess.STDOUT)
        wait_for(lambda: self.workers_joined() is not None, 60, "the Dask scheduler to answer", interval=0.5)

    def stop_scheduler(self, sig: int) -> None:
        assert self.scheduler is not None
        self.scheduler.send_signal(sig)
        self.scheduler.wait(timeout=60)

    def workers_joined(self) -> int | None:
        """How many workers the scheduler at the address knows; None when none answers."""
        from service.runtime.scheduler_watch import scheduler_identity

        identity = scheduler_identity(self.address, timeout=2)
        return None if identity is None else len(identity.get("workers", {}))

    def wait_for_workers(self, count: int, timeout: float = 120) -> None:
        wait_for(lambda: (self.workers_joined() or 0) >= count, timeout, f"{count} Dask worker(s) to join")

    def _keep_workers_running(self) -> None:
        while not self._closing.is_set():
            for i, worker in enumerate(self.workers):
                if worker is None or worker.poll() is not None:
                    self.workers[i] = subprocess.Popen(
                        [self._dask, "worker", self.address, "--nthreads", "1", "--no-dashboard",
                         "--name", f"w{i}"], env=self._env, stdout=self._log, stderr=subprocess.STDOUT)
                    self.worker_starts += 1
            self._closing.wait(1.0)

    def close(self) -> None:
        self._closing.set()
        self._supervisor.join(timeout=10)
        for proc in [*self.workers, self.scheduler]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers, self.scheduler]:
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self._log.close()


# Waits poll the ledger (read-only, a few milliseconds) and ask `retrain status --json` once
# what they wait for is there: each status is a Python process and about a quarter of a
# second of CPU, which a poll every 0.2 s would take from the daemon under test on 2 cores.

def read_ledger(home: Path, read):
    """``read(ledger)`` on the home's ledger, opened read-only; None before the daemon made it."""
    from service.intake.ledger import Ledger

    path = home / "state" / "ledger.sqlite"
    if not path.exists():
        return None
    ledger = Ledger(path, readonly=True)
    try:
        return read(ledger)
    finally:
        ledger.close()


def ledger_runs(home: Path) -> list:
    """The newest runs, as many as `retrain status` lists, newest first."""
    return read_ledger(home, lambda ledger: ledger.runs(limit=10)) or []


def runs_ended(home: Path, count: int) -> bool:
    """Whether ``count`` of the runs `retrain status` lists have ended."""
    return sum(run.state != "running" for run in ledger_runs(home)) >= count


def files_settled(home: Path, files: int) -> bool:
    """Whether ``files`` files are archived, quarantined or duplicates, none is queued and no
    run is running."""
    counts = read_ledger(home, lambda ledger: ledger.counts())
    if counts is None:
        return False
    done = counts["archived"] + counts["quarantined"] + counts["duplicate"]
    return done == files and counts["queued"] == 0 and all(r.state != "running" for r in ledger_runs(home))
