"""Dask worker plugins of the service: warm workers, and quiet workers of its own cluster."""

from __future__ import annotations

import signal
import threading

from distributed.diagnostics.plugin import WorkerPlugin


class WarmUp(WorkerPlugin):
    """Imports the flow's code (Prefect, pandas, pyarrow, scikit-learn, skops) when a worker
    starts, so that the first run does not pay for it. Registered by name: registering it
    again (a restarted daemon on the same cluster) replaces it, and workers started later
    by adaptive scaling run it too."""

    name = "retrain-warm-up"
    idempotent = True

    def setup(self, worker) -> None:
        import flows.retrain  # noqa: F401


class ParentHandlesInterrupts(WorkerPlugin):
    """For the workers of the service's own local cluster only: a Ctrl+C in the terminal
    reaches every process of the foreground group, and systemd's SIGTERM every process of
    the unit's cgroup (``KillMode=control-group``). A worker that acted on it would die
    under the run the daemon is letting finish. The workers ignore both; the daemon (or
    `retrain run`) closes them through their nannies, and a worker whose daemon died exits
    by itself (Dask's own pipe to the parent: ``distributed.process.AsyncProcess``).
    Their log records (on the daemon's output) are cut to one line, as the daemon's own
    (``service.runtime.readable_logs``)."""

    name = "retrain-parent-handles-interrupts"
    idempotent = True

    def setup(self, worker) -> None:
        if threading.current_thread() is threading.main_thread():  # a worker process's loop
            for stop in (signal.SIGINT, signal.SIGTERM):
                signal.signal(stop, signal.SIG_IGN)
        from service.runtime.readable_logs import one_line_library_logs

        one_line_library_logs()
