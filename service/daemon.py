"""``retrain watch``: the daemon.

serve() reads as its outline: signal handlers -> startup -> main loop -> shutdown.

Threads: watchdog's observer only enqueues events; one run thread calls the flow; the
main loop does everything else (claims, batches, ledger updates, file moves), so every
state change has a single writer and a shutdown can never race a run's bookkeeping.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import Future
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType

from flows.files import write_atomically
from service.batcher import Batcher
from service.config import Settings
from service.inbox import Home, claim_file, fail_run_files
from service.ledger import FileState, Ledger, RunRecord
from service.requests import OPERATOR_RUN, take_run_request
from service.runs import OPERATOR, FlowResult, build_request, call_flow, outcome_line, record_result
from service.session import RunSession
from service.watcher import InboxWatcher

log = logging.getLogger("retrain.daemon")


class RetrainDaemon:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = Home(settings.home)
        self.should_exit = False
        self.force_exit = False
        self.started_at = time.time()
        self.session: RunSession | None = None
        self.ledger: Ledger | None = None
        self.watcher: InboxWatcher | None = None
        self.batcher = Batcher(settings.watcher.batch_window_seconds,
                               settings.watcher.max_batch_wait_seconds,
                               settings.watcher.max_batch_files)
        self.scheduler_address: str | None = None
        self.api_url: str | None = None
        self.current_run: RunRecord | None = None
        self.run_future: Future[FlowResult] | None = None
        self._next_heartbeat = 0.0
        # After a failed run, the next one waits (backoff_seconds): a broken environment
        # should not burn through every file's attempts in seconds.
        self.consecutive_failures = 0
        self.hold_until = 0.0

    # -- outline --------------------------------------------------------------------------
    def serve(self) -> int:
        self.install_signal_handlers()
        with ExitStack() as resources:
            self.startup(resources)
            self.main_loop()
            self.shutdown()
        log.info("stopped")
        return 0

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.handle_exit)
        signal.signal(signal.SIGTERM, self.handle_exit)

    def handle_exit(self, signum: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True  # a second signal: do not wait for the run
        self.should_exit = True

    # -- startup --------------------------------------------------------------------------
    def startup(self, resources: ExitStack) -> None:
        self.session = session = RunSession(self.settings, "retrain watch", resources)
        self.ledger = session.open_home()
        resources.callback(self._remove_heartbeat)
        if self.settings.daemon.metrics_port:
            from service.metrics import serve_daemon_metrics

            resources.enter_context(serve_daemon_metrics(self.home, self.settings.daemon.metrics_host,
                                                         self.settings.daemon.metrics_port))
        # Claim files while the heavier resources start: intake needs neither of them.
        self.start_intake(resources)
        self.write_heartbeat(state="starting")
        self.scheduler_address = session.start_runtime()
        self.api_url = session.api_url
        log.info("watching %s (settle %.1fs, batch window %.1fs); press Ctrl+C to stop",
                 self.home.inbox.resolve(), self.settings.watcher.settle_seconds,
                 self.settings.watcher.batch_window_seconds)

    def start_intake(self, resources: ExitStack) -> None:
        """Start watching the inbox, and batch the files queued before the start."""
        assert self.ledger is not None
        self.watcher = InboxWatcher(
            self.home.inbox, observer=self.settings.watcher.observer,
            settle_seconds=self.settings.watcher.settle_seconds,
            closed_settle_seconds=self.settings.watcher.closed_settle_seconds,
            rescan_seconds=self.settings.watcher.rescan_seconds,
        )
        self.watcher.start()
        resources.callback(self.watcher.stop)
        queued = [r.id for r in self.ledger.files(FileState.QUEUED)]
        if queued:
            log.info("%d file(s) waiting from before the start are queued", len(queued))
            self.batcher.add(queued, time.monotonic())

    # -- main loop --------------------------------------------------------------------------
    def main_loop(self) -> None:
        tick = self.settings.watcher.tick_seconds
        while not self.should_exit:
            self.take_in_files()
            self.finish_run_if_done()
            self.start_run_if_ready()
            self.write_heartbeat_if_due()
            time.sleep(tick)

    def take_in_files(self) -> None:
        assert self.watcher is not None and self.ledger is not None
        claimed = []
        for entry in self.watcher.poll():
            record = claim_file(self.ledger, self.home, entry.path, entry.first_seen,
                                self.settings.watcher.max_file_bytes)
            self.watcher.forget(entry.path)
            if record is not None and record.state == FileState.QUEUED:
                claimed.append(record.id)
        if claimed:
            self.batcher.add(claimed, time.monotonic())

    def start_run_if_ready(self) -> None:
        """Start a run for a ready batch, or else for an operator's request (``retrain run``
        with no file: the current window, whatever the policy says)."""
        assert self.ledger is not None and self.scheduler_address is not None
        now = time.monotonic()
        if self.run_future is not None or now < self.hold_until:
            return
        asked = None if self.batcher.ready(now) else take_run_request(self.home.state)
        if asked is None and not self.batcher.ready(now):
            return
        run = self.ledger.start_run([] if asked else self.batcher.take())
        if asked:
            self.ledger.record_event(OPERATOR_RUN, {"request": asked, "run": run.id})
        request = build_request(self.settings, self.home, self.ledger, run,
                                requested_by=OPERATOR if asked else None)
        log.info("run %d started: %d new file(s), %d in the window%s", run.id,
                 len(request.new_files), len(request.window_files) + len(request.new_files),
                 f" (requested by {OPERATOR})" if asked else "")
        self.current_run = run
        self.run_future = Future()
        ledger, run_id = self.ledger, run.id
        thread = threading.Thread(
            target=self._run_in_thread, name=f"run-{run.id}",
            args=(request, self.scheduler_address, self.run_future,
                  lambda flow_run_id: ledger.set_flow_run_id(run_id, flow_run_id)),
            daemon=True,  # never keeps the process alive past shutdown
        )
        thread.start()
        self.write_heartbeat()

    @staticmethod
    def _run_in_thread(request, address: str, future: Future[FlowResult], on_flow_run_id) -> None:
        future.set_result(call_flow(request, address, on_flow_run_id))

    def finish_run_if_done(self) -> None:
        if self.run_future is None or not self.run_future.done():
            return
        assert self.ledger is not None and self.current_run is not None
        result = self.run_future.result()
        record_result(self.ledger, self.home, self.current_run, result, self.settings)
        if result.outcome is None:
            log.error("run %d failed: %s", self.current_run.id, result.error)
            self.consecutive_failures += 1
            delay = backoff_seconds(self.consecutive_failures)
            self.hold_until = time.monotonic() + delay
            log.warning("next run in %.0fs at the earliest (failed runs in a row: %d)", delay,
                        self.consecutive_failures)
        else:
            log.info("%s", outcome_line(self.current_run.id, result.outcome))
            self.consecutive_failures = 0
        # Files that failed and went back to the queue wait for the next batch.
        requeued = [fid for fid in self.current_run.file_ids
                    if self.ledger.get(fid).state == FileState.QUEUED]
        if requeued:
            self.batcher.add(requeued, time.monotonic())
        self.current_run, self.run_future = None, None
        self.write_heartbeat()

    # -- shutdown --------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop intake, let the run finish within the grace period or hand its files back."""
        log.info("stopping: no new files are taken")
        if self.watcher is not None:
            self.watcher.stop()
        if self.run_future is not None and self.current_run is not None:
            grace = 0.0 if self.force_exit else self.settings.daemon.grace_seconds
            log.info("waiting up to %.0fs for run %d to finish", grace, self.current_run.id)
            deadline = time.monotonic() + grace
            while not self.run_future.done() and time.monotonic() < deadline and not self.force_exit:
                time.sleep(0.1)
            if self.run_future.done():
                self.finish_run_if_done()
            else:
                assert self.ledger is not None
                fail_run_files(self.ledger, self.home, self.current_run.id,
                               "the daemon stopped during the run; its files go to the next run",
                               self.settings.daemon.max_attempts, count_attempt=False)
                # Whatever of the run still runs somewhere may no longer switch `current`.
                assert self.session is not None and self.session.registry is not None
                self.session.registry.release_lease()
                log.warning("run %d did not finish in time; its files are handed back to the queue",
                            self.current_run.id)
                self.current_run, self.run_future = None, None

    # -- heartbeat (read by `retrain status`) ----------------------------------------------
    def write_heartbeat_if_due(self) -> None:
        if time.monotonic() >= self._next_heartbeat:
            self.write_heartbeat()

    def write_heartbeat(self, state: str | None = None) -> None:
        self._next_heartbeat = time.monotonic() + self.settings.daemon.heartbeat_seconds
        now = time.time()
        beat = {
            "pid": os.getpid(),
            "state": state or ("running" if self.current_run else "idle"),
            "started_at": _iso(self.started_at),
            "heartbeat_at": _iso(now),
            "heartbeat_unix": now,
            "heartbeat_seconds": self.settings.daemon.heartbeat_seconds,
            "home": str(self.home.root.resolve()),
            "prefect_api_url": self.api_url,
            "dask_scheduler": self.scheduler_address,
            "current_run": self.current_run.id if self.current_run else None,
            "current_run_files": len(self.current_run.file_ids) if self.current_run else 0,
            "batched": len(self.batcher),
            "settling": self.watcher.pending if self.watcher else 0,
        }
        # Rewritten every few seconds and worthless after a power cut: no fsync.
        write_atomically(self.home.state / "daemon.json", json.dumps(beat, indent=1), durable=False)

    def _remove_heartbeat(self) -> None:
        Path(self.home.state / "daemon.json").unlink(missing_ok=True)


def backoff_seconds(failures: int) -> float:
    """How long the daemon holds its queue after ``failures`` failed runs in a row: 5 s,
    10 s, 20 s, ... up to a minute. Written out because no library fits: Prefect's
    ``exponential_backoff`` is the list of a task's retry delays (no cap), and this is not a
    retry of one call but a pause of the whole queue between runs."""
    return min(60.0, 5.0 * 2 ** (failures - 1))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
