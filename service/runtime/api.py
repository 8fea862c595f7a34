"""The two long-lived resources a process needs to run flows: one Prefect API and one Dask
cluster, each started (or connected to) once and kept for the process's whole life.

``prepare_environment`` must run before Prefect is imported: Prefect reads its settings
(home folder, telemetry) from the environment at import time.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from core.errors import RetrainError
from service.config import DaemonSpec
from service.intake.home import Home
from service.runtime import tethered

log = logging.getLogger("retrain.runtime")


def prepare_environment(home: Home) -> None:
    """Environment for Prefect, set before it is imported.

    Without PREFECT_API_URL the embedded API keeps its database under the home folder, so
    each home is self-contained. Telemetry is off: there may be no internet, and it would
    only log errors.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_HOME", str(home.prefect_home.resolve()))
    # The embedded server migrates its database on first start; slow disks need more time.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # The flow's log lines go to the Prefect API (the UI shows them with each run), but only
    # warnings reach this process's console: its own log is one line per event, and
    # Prefect's "task finished" line per task would drown it.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


# How often the embedded API's process is looked at, and how long to wait before starting
# it again after a start that failed.
SUPERVISE_SECONDS = 0.5
REVIVE_INTERVAL_SECONDS = 10.0


class PrefectApi:
    """The Prefect API every flow of this process reports to, for the process's whole life.

    PREFECT_API_URL set: that server (checked to answer). Otherwise one local API server in
    a subprocess (not one per run), on a port chosen here: its URL is in the environment
    from the start, so that Dask workers started while it boots (``start`` may run beside
    the cluster's start) inherit it and report to this same API instead of starting their
    own.
    """

    def __init__(self, history_days: float = DaemonSpec.model_fields["prefect_history_days"].default,
                 ui: tuple[str, int] | None = None) -> None:
        """``history_days``: how long the embedded API keeps ended flow runs; ``ui``: the
        (host, port) where the embedded API also serves Prefect's UI (None: no UI)."""
        self.history_days = history_days
        self.external = os.environ.get("PREFECT_API_URL")
        self.embedded = not self.external
        self.server = None  # the embedded API's server, once started
        self.ui = ui is not None
        self._next_revival = 0.0
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # a revival and the stop never overlap
        if self.external:
            self.url = self.external
            return
        # The port is chosen here, the server started in ``start``: it boots for seconds,
        # which ``start`` spends beside the cluster's start.
        self.host, self.port, self.port_note = ("127.0.0.1", free_port(), None) if ui is None else ui_address(*ui)
        self.url = f"http://{self.host}:{self.port}/api"
        os.environ["PREFECT_API_URL"] = self.url

    def start(self) -> str:
        started = time.perf_counter()
        if not self.embedded:
            import httpx

            try:
                httpx.get(f"{self.url.rstrip('/')}/health", timeout=10).raise_for_status()
            except httpx.HTTPError as exc:
                raise RetrainError(
                    f"the Prefect API at {self.url} does not answer ({type(exc).__name__}); "
                    "start it (make server) or unset PREFECT_API_URL to use the embedded one"
                ) from None
            log.info("reporting to the Prefect API at %s", self.url)
            return self.url
        self.server = EmbeddedApiServer(self.port, self.history_days, self.host, self.ui)
        self.server.start()
        # A thread of its own: the loops that use the API block for a minute in Prefect's
        # client retries when it is gone, and it must be back before those end.
        threading.Thread(target=self._supervise, name="prefect-api-supervisor", daemon=True).start()
        if self.port_note:
            log.warning("%s", self.port_note)
        if self.ui:
            log.info("Prefect UI at %s (runs, the deployment's Run and Pause, artifacts, events); its API at %s, "
                     "database in %s", self.url.removesuffix("/api"), self.url, os.environ.get("PREFECT_HOME"))
        else:
            log.info("embedded Prefect API at %s (database in %s)", self.url, os.environ.get("PREFECT_HOME"))
        log.debug("start-up: Prefect API ready in %.1fs", time.perf_counter() - started)
        return self.url

    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_SECONDS):
            self.revive_if_dead()

    def revive_if_dead(self) -> bool:
        """The embedded API's process ended under a running daemon (killed, crashed): start
        it again, on the same port (its URL is in every worker's environment) and the same
        database. Flow runs in flight ride it out on the Prefect client's retries. Returns
        whether it was started again; a start that fails is tried again
        ``REVIVE_INTERVAL_SECONDS`` later."""
        with self._lock:
            return self._revive_if_dead()

    def _revive_if_dead(self) -> bool:
        server = self.server
        if self._stopping.is_set() or server is None or server.process is None or server.process.poll() is None:
            return False
        if time.monotonic() < self._next_revival:
            return False
        log.warning("the embedded Prefect API exited (code %s); starting it again at %s",
                    server.process.returncode, self.url)
        tethered.stop(server.process)  # reaped, its pipe closed
        try:
            server.start()
        except RetrainError as exc:
            self._next_revival = time.monotonic() + REVIVE_INTERVAL_SECONDS
            log.error("%s; trying again in %.0fs", exc, REVIVE_INTERVAL_SECONDS)
            return False
        log.info("the embedded Prefect API answers again at %s", self.url)
        return True

    def stop(self) -> None:
        started = time.perf_counter()
        send_what_is_queued()  # while the API still answers
        log.debug("stop: last log lines and events sent in %.1fs", time.perf_counter() - started)
        if self.server is None:
            return
        self._stopping.set()
        os.environ.pop("PREFECT_API_URL", None)
        with self._lock:
            self.server.stop()
        log.debug("stop: embedded Prefect API stopped in %.1fs", time.perf_counter() - started)

    @contextmanager
    def settings(self) -> Iterator[str]:
        """Prefect's settings of this process pointed at the API (it was imported before
        the URL was known)."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.url}):
            yield self.url


# Services of a Prefect server the daemon has no use for: work pools and their workers
# (foreman), late, paused and cancelled runs' bookkeeping, expired concurrency leases and
# orphaned records (Prefect's ephemeral server does not run them either).
UNUSED_SERVER_SERVICES = ("FOREMAN", "LATE_RUNS", "PAUSE_EXPIRATIONS", "CANCELLATION_CLEANUP", "REPOSSESSOR",
                          "CLEANUP_RECONCILER")


class EmbeddedApiServer:
    """Prefect's API server in a subprocess, started as Prefect's own ephemeral server is
    (the uvicorn command of ``prefect.server.api.server.SubprocessASGIServer``), but with
    the services the daemon needs that the ephemeral one leaves out (see ``start``).

    Not that class itself: it lives in the module of the whole server, and importing it
    costs this process about 2 s of CPU that a cold ``retrain run`` needs for its own
    start-up; the server's code belongs in the subprocess only.
    """

    def __init__(self, port: int, history_days: float, host: str = "127.0.0.1", ui: bool = False):
        self.port = port
        self.history_days = history_days
        self.host = host
        self.ui = ui  # Prefect's UI served beside the API
        self.process: subprocess.Popen | None = None
        # Beside the database, in Prefect's home (~/.prefect is Prefect's default).
        self.log_path = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect") / "api-server.log"

    def last_message(self) -> str:
        lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else "no message"

    def start(self) -> None:
        # Launched before this process imports Prefect (a second of CPU, spent while the
        # server boots). The server reads Prefect's settings from the same environment,
        # profile and working directory as this process.
        site_packages = Path(importlib.util.find_spec("prefect").origin).parent.parent
        env = {
            # Not Prefect's ephemeral server, which leaves out two services the daemon needs:
            # the scheduler, which creates the runs of the deployment's schedule, and the
            # database vacuum of ended flow runs (after ``history_days``). The services for
            # work pools, late and paused runs, which the daemon does not use, stay off as in
            # the ephemeral server: polling every few seconds, they cost each run about 0.15 s
            # on two cores. An operator's own PREFECT_SERVER_SERVICES_* settings win.
            # glibc gives each thread that contends for the heap an arena of its own (up to
            # 8 per core), and the server's threads (one per database connection, its
            # services') leave freed memory spread over them: resident memory that creeps up
            # run after run. Two arenas: 0.042 MiB per trivial flow run over 250 runs
            # against 0.064 MiB with glibc's default, and 13 MiB less to start with.
            "MALLOC_ARENA_MAX": "2",
            "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
            "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": str(int(self.history_days * 86400)),
            **{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in UNUSED_SERVER_SERVICES},
            # The UI asks its API at PREFECT_UI_API_URL (by default the host and port of
            # Prefect's settings, not the ones chosen here), and copies its static files, on
            # first start, into a folder it can write: beside the database.
            **({"PREFECT_UI_API_URL": f"http://{self.host}:{self.port}/api",
                "PREFECT_UI_STATIC_DIRECTORY": str(self.log_path.parent / "ui")} if self.ui else {}),
            **os.environ,
            # The UI when asked for (the daemon's); never for a one-shot `retrain run`.
            "PREFECT_UI_ENABLED": "1" if self.ui else "0", "PREFECT__SERVER_FINAL": "1"}
        # Its messages (errors only) go to a file beside its database, rewritten at each
        # start: at a stop it cancels what it still serves (see below) with a traceback
        # that is not the operator's concern.
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log_file:
            # Tethered (service.runtime.tethered): it ignores the signals meant for the
            # daemon, which stops it itself, and it never outlives the daemon.
            self.process = subprocess.Popen(
                tethered.command("uvicorn", "--app-dir", str(site_packages),
                 "--factory", "prefect.server.api.server:create_app", "--host", self.host,
                 "--port", str(self.port), "--log-level", "error", "--lifespan", "on",
                 # Our own: Prefect's task-run waiter in this process holds an event
                 # subscription whose handler on the server would keep a stop waiting up to
                 # 2 s for its next idle tick. This process's last requests are answered
                 # before ``stop`` (``send_what_is_queued``): what is left is cancelled.
                 "--timeout-graceful-shutdown", "0"),
                env=env, stdout=log_file, stderr=subprocess.STDOUT, **tethered.launch_options())
        import httpx
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        deadline = time.monotonic() + PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    self.process = None
                    why = ("its port was taken meanwhile; start again" if code == 3  # uvicorn's code for it
                           else f"{self.last_message()} (its log: {self.log_path})")
                    raise RetrainError(f"the embedded Prefect API exited while starting (code {code}): {why}")
                try:
                    if client.get(f"http://{self.host}:{self.port}/api/health", timeout=5).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise RetrainError("the embedded Prefect API did not answer within "
                           f"{PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value():.0f}s; raise "
                           f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS on a slow disk (its log: {self.log_path})")

    def stop(self) -> None:
        if self.process is None:
            return
        tethered.stop(self.process)
        self.process = None


def ui_address(host: str, port: int) -> tuple[str, int, str | None]:
    """(host, port, why another port) for the UI: the configured port when it is free now,
    else one the system chooses, with a line saying so (another daemon, `make server`)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
            return host, sock.getsockname()[1], None
        except OSError as exc:
            why = exc.strerror
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            raise RetrainError(f"the Prefect UI cannot listen on {host} ({exc.strerror}); fix "
                               "daemon.prefect_ui_host or set daemon.prefect_ui = false") from None
        chosen = sock.getsockname()[1]
    return host, chosen, (f"port {port} of {host} is not free ({why}): the Prefect UI is at "
                          f"http://{host}:{chosen} instead (daemon.prefect_ui_port sets it)")


def free_port() -> int:
    """A TCP port of the loopback interface free now (the system's choice)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def send_what_is_queued() -> None:
    """Send the last log lines and events of this process to the API."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=5)
        except Exception as exc:  # losing a few of them must not fail the stop
            log.debug("could not send the last items of %s to Prefect: %s", worker.__name__, exc)


@contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API started for the block's life (see PrefectApi); yields its URL."""
    api = PrefectApi()
    try:
        api.start()
        with api.settings() as url:
            yield url
    finally:
        api.stop()


def mark_flow_runs_crashed(flow_run_ids: list[str], reason: str) -> int:
    """Tell Prefect that flow runs a killed daemon left 'Running' have crashed, so the UI
    does not show them running forever. Best effort: returns how many were updated."""
    from prefect import get_client
    from prefect.states import Crashed

    updated = 0
    with get_client(sync_client=True) as client:
        for flow_run_id in flow_run_ids:
            try:
                run = client.read_flow_run(flow_run_id)
                if run.state is not None and not run.state.is_final():
                    client.set_flow_run_state(flow_run_id, Crashed(message=reason), force=True)
                    updated += 1
            except Exception as exc:  # an unknown id or an API hiccup must not stop the start
                log.debug("could not mark flow run %s crashed: %s", flow_run_id, exc)
    return updated
