"""``retrain watch``: the daemon.

serve() reads as its outline: signal handlers -> startup -> main loop -> shutdown.

Threads: watchdog's observer only enqueues events; one run thread executes the run's flow
run (recording only its id in the ledger), with a thread of its own that watches Prefect
for a cancel (``service.runner.flowruns``); the main loop does everything else (claims, batches,
ledger updates, file moves, the questions to Prefect), so every state change has a single
writer and a shutdown can never race a run's bookkeeping.

Every run is a flow run of the home's Prefect deployment (``service.runtime.deployment``): a batch
of new files, or a run Prefect holds for it (the Run button, the API, the schedule). Once a
second the loop asks Prefect whether the deployment is paused (then files are still taken,
but no run starts) and whether a run of the deployment is due. A run an operator cancelled
stops; the loop then keeps or restores `current` and quarantines its files.
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
from types import FrameType

from core.errors import RetrainError, one_line
from core.files import write_atomically
from service.config import Settings
from service.intake.batcher import Batcher
from service.intake.home import Home
from service.intake.inbox import fail_run_files
from service.intake.ledger import FileState, Ledger, RunRecord
from service.intake.requests import OPERATOR_RUN, take_run_request
from service.intake.watcher import InboxWatcher
from service.runner.agreement import mend_current
from service.runner.records import FlowResult
from service.runner.runs import OPERATOR, Runner, StartedRun, run_line
from service.runner.session import CRASH_REASON, RunSession
from service.runtime.deployment import DeploymentControl, DeploymentRef, run_parameters
from service.runtime.heap import release_free_memory
from service.runtime.scheduler_watch import SchedulerWatch

log = logging.getLogger("retrain.daemon")

# How often the main loop asks Prefect about the deployment (paused? cancelled? runs due?).
PREFECT_POLL_SECONDS = 1.0


class RetrainDaemon:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = Home(settings.home)
        self.should_exit = False
        self.force_exit = False
        self.started_at = time.time()
        self.session: RunSession | None = None
        self.ledger: Ledger | None = None
        # One watcher and one batcher per folder files come in through (inbox/, score/,
        # labels/): a batch holds files of one kind, and a run does one kind of work.
        self.watchers: dict[str, InboxWatcher] = {}
        self.batchers = {kind: Batcher(settings.watcher.batch_window_seconds, settings.watcher.max_batch_wait_seconds,
                                       settings.watcher.max_batch_files) for kind in self.home.intake}
        self.scheduler_address: str | None = None
        self.scheduler_watch: SchedulerWatch | None = None  # an existing scheduler's restarts, ridden out
        self.api_url: str | None = None
        self.runner: Runner | None = None
        self.current: StartedRun | None = None  # the run in flight
        self.run_future: Future[FlowResult] | None = None
        self.deployment: DeploymentRef | None = None
        self.control: DeploymentControl | None = None
        self.paused = False
        self._next_poll = 0.0
        self._prefect_trouble: str | None = None
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
        self.runner = session.runner
        resources.callback(self._remove_heartbeat)
        if self.settings.daemon.metrics_port:
            from service.runner.metrics import serve_daemon_metrics

            resources.enter_context(serve_daemon_metrics(self.home, self.settings.daemon.metrics_host,
                                                         self.settings.daemon.metrics_port))
        # Claim files while the heavier resources start: intake needs neither of them.
        self.start_intake(resources)
        self.write_heartbeat(state="starting")
        self.scheduler_address = session.start_runtime()
        self.scheduler_watch = session.scheduler_watch
        self.api_url = session.api_url
        self.deployment = session.deployment
        assert self.deployment is not None
        self.control = DeploymentControl(self.deployment)
        resources.callback(self.control.close)
        log.info("watching %s (training files), %s/ (rows to score) and %s/ (late labels) (settle %.1fs, "
                 "batch window %.1fs); press Ctrl+C to stop", self.home.inbox.resolve(), self.home.score.name,
                 self.home.labels.name, self.settings.watcher.settle_seconds,
                 self.settings.watcher.batch_window_seconds)

    def start_intake(self, resources: ExitStack) -> None:
        """Start watching the inbox, and batch the files queued before the start."""
        assert self.ledger is not None
        for kind, folder in self.home.intake.items():
            watcher = InboxWatcher(
                folder, observer=self.settings.watcher.observer,
                settle_seconds=self.settings.watcher.settle_seconds,
                closed_settle_seconds=self.settings.watcher.closed_settle_seconds,
                rescan_seconds=self.settings.watcher.rescan_seconds,
            )
            watcher.start()
            resources.callback(watcher.stop)
            self.watchers[kind] = watcher
        queued = self.ledger.files(FileState.QUEUED)
        if queued:
            log.info("%d file(s) waiting from before the start are queued", len(queued))
            self.queue([r.id for r in queued])

    # -- main loop --------------------------------------------------------------------------
    def main_loop(self) -> None:
        tick = self.settings.watcher.tick_seconds
        while not self.should_exit:
            self.take_in_files()
            self.finish_run_if_done()
            self.watch_scheduler()
            self.ask_prefect_if_due()
            self.start_run_if_ready()
            self.write_heartbeat_if_due()
            time.sleep(tick)

    def take_in_files(self) -> None:
        assert self.runner is not None
        for kind, watcher in self.watchers.items():
            claimed = []
            for entry in watcher.poll():
                record = self.runner.claim(entry.path, entry.first_seen, kind)
                watcher.forget(entry.path)
                if record is not None and record.state == FileState.QUEUED:
                    claimed.append(record.id)
            if claimed:
                self.batchers[kind].add(claimed, time.monotonic())

    def queue(self, file_ids: list[int]) -> None:
        """Files waiting in the queue (from before the start, handed back, made by a run)
        join the batch of their kind."""
        assert self.ledger is not None
        for fid in file_ids:
            self.batchers[self.ledger.get(fid).kind].add([fid], time.monotonic())

    def start_run_if_ready(self) -> None:
        """Start a run for a ready batch, or else for an operator's request (``retrain run``
        with no file: the current window, whatever the policy says), as a new flow run of
        the deployment."""
        assert self.ledger is not None and self.runner is not None
        now = time.monotonic()
        if self.run_future is not None or now < self.hold_until or self.paused or self._prefect_trouble \
                or not self.scheduler_answers():
            return  # (a run needs the Prefect API and the scheduler: while one does not answer, files wait)
        ready = next((kind for kind, batcher in self.batchers.items() if batcher.ready(now)), None)
        if ready is not None:
            self.launch(self.runner.start_batch(self.batchers[ready].take(), "new files", ready))
            return
        asked = take_run_request(self.home.requests)
        if asked is not None:
            started = (self.runner.start_backfill(asked.since) if asked.what == "backfill"
                       else self.runner.start_window("operator", OPERATOR))
            self.ledger.record_event(OPERATOR_RUN, {"request": asked.id, "run": started.record.id if started else None})
            if started is not None:
                self.launch(started)

    def start_due_run(self, flow_run) -> None:
        """A flow run Prefect holds for the deployment is due (the Run button, the API, an
        automation, the schedule): a retraining on the current window, as its parameters say."""
        assert self.runner is not None
        trigger = "schedule" if flow_run.auto_scheduled else "operator"
        try:
            parameters = run_parameters(flow_run.parameters)
        except RetrainError as exc:  # the API checks them too; a run that slipped through fails
            log.error("flow run %s of the deployment has parameters that do not fit: %s", flow_run.id, exc)
            assert self.control is not None
            self.control.fail(str(flow_run.id), str(exc))
            return
        self.launch(self.runner.start_window(trigger, parameters["reason"], flow_run_id=str(flow_run.id),
                                             last_files=parameters["last_files"]))

    def launch(self, started: StartedRun) -> None:
        """Execute the run's flow run in the run thread, stoppable."""
        self.current, self.run_future = started, Future()
        thread = threading.Thread(target=self._run_in_thread, name=f"run-{started.record.id}",
                                  args=(started, self.run_future),
                                  daemon=True)  # never keeps the process alive past shutdown
        thread.start()
        self.write_heartbeat()

    def _run_in_thread(self, started: StartedRun, future: Future[FlowResult]) -> None:
        assert self.runner is not None
        future.set_result(self.runner.execute(started))

    def finish_run_if_done(self) -> None:
        """The run thread is done: record what became of the run and of its files."""
        if self.run_future is None or not self.run_future.done():
            return
        assert self.ledger is not None and self.runner is not None and self.current is not None
        result = self.run_future.result()
        run = self.runner.record(self.current, result)
        if result.scheduler_lost and self.scheduler_watch is not None:
            self.scheduler_watch.went_away()  # no run starts until it answers again
            log.warning("run %d: the Dask scheduler at %s went away; the run is handed back and will run again "
                        "when it answers", run.id, self.scheduler_address)
        elif not result.started:
            self.hold_until = time.monotonic() + PREFECT_POLL_SECONDS * 5
            log.warning("run %d did not run: %s; its files wait for the next run", run.id, result.error)
        elif not (self.current.stop.requested or result.cancelled):
            self.note_failures(run, result)
        # Files that failed and went back to the queue wait for the next batch.
        # So do the files a run made (the rows of late labels, to train on).
        requeued = [fid for fid in run.file_ids if self.ledger.get(fid).state == FileState.QUEUED]
        self.queue(requeued + self.current.made_files)
        self.current, self.run_future = None, None
        # What the run freed, back to the system (service.runtime.heap); its cyclic garbage
        # too, unless files wait for the next run (a full collection takes about 0.1 s).
        release_free_memory(collect_garbage=not any(len(batcher) for batcher in self.batchers.values()))
        self.write_heartbeat()

    def note_failures(self, run: RunRecord, result: FlowResult) -> None:
        if result.outcome is not None:
            assert self.ledger is not None
            log.info("%s", run_line(self.ledger, run))
            self.consecutive_failures = 0
            return
        log.error("run %d failed: %s", run.id, result.error)
        self.consecutive_failures += 1
        delay = backoff_seconds(self.consecutive_failures)
        self.hold_until = time.monotonic() + delay
        log.warning("next run in %.0fs at the earliest (failed runs in a row: %d)", delay,
                    self.consecutive_failures)

    # -- an existing Dask scheduler: gone, back, restarted -----------------------------
    def watch_scheduler(self) -> None:
        """Ask an existing scheduler whether it answers, when it is time to
        (``service.runtime.scheduler_watch``): its plugins are registered again after a restart."""
        if self.scheduler_watch is not None:
            self.scheduler_watch.check_if_due(idle=self.run_future is None)

    def scheduler_answers(self) -> bool:
        return self.scheduler_watch is None or self.scheduler_watch.answers

    # -- Prefect: pause, runs due ----------------------------------------------------
    def ask_prefect_if_due(self) -> None:
        """Once a second: is the deployment paused? is a run of the deployment due? An API
        that does not answer changes nothing (logged once, and again when it answers)."""
        now = time.monotonic()
        if now < self._next_poll or self.control is None:
            return
        self._next_poll = now + PREFECT_POLL_SECONDS
        try:
            paused = self.control.paused()
            idle = self.run_future is None and not paused and now >= self.hold_until and self.scheduler_answers()
            busy = any(batcher.ready(now) for batcher in self.batchers.values())
            due = self.control.due_runs(limit=1) if idle and not busy else []
        except Exception as exc:  # the API is down or slow: try again at the next poll
            self._note_prefect_trouble(exc)
            return
        if self._prefect_trouble is not None:
            log.info("the Prefect API answers again")
            self._prefect_trouble = None
        if paused != self.paused:
            log.warning("deployment %s %s", self.deployment.name if self.deployment else "",
                        "paused: files are taken into the queue, no run starts" if paused else "resumed")
            self.paused = paused
            self.write_heartbeat()
        if due:
            self.start_due_run(due[0])

    def _note_prefect_trouble(self, exc: Exception) -> None:
        line = one_line(exc)
        if self._prefect_trouble is None:
            log.warning("the Prefect API did not answer (%s); pause, cancel and runs started from "
                        "Prefect wait until it does", line)
        self._prefect_trouble = line

    # -- shutdown --------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop intake, let the run finish within the grace period or hand its files back."""
        log.info("stopping: no new files are taken")
        for watcher in self.watchers.values():
            watcher.stop()
        if self.run_future is not None and self.current is not None:
            run = self.current.record
            grace = 0.0 if self.force_exit else self.settings.daemon.grace_seconds
            log.info("waiting up to %.0fs for run %d to finish", grace, run.id)
            deadline = time.monotonic() + grace
            while not self.run_future.done() and time.monotonic() < deadline and not self.force_exit:
                time.sleep(0.1)
            if self.run_future.done():
                self.finish_run_if_done()
            else:
                assert self.ledger is not None
                fail_run_files(self.ledger, self.home, run.id,
                               "the daemon stopped during the run; its files go to the next run",
                               self.settings.daemon.max_attempts, count_attempt=False)
                # Whatever of the run still runs somewhere may no longer switch `current`.
                assert self.session is not None and self.session.registry is not None
                self.session.registry.release_lease()
                mend_current(self.ledger, self.session.registry, f"stop during run {run.id}")
                self.end_abandoned_flow_run()
                log.warning("run %d did not finish in time; its files are handed back to the queue", run.id)
                self.current, self.run_future = None, None

    def end_abandoned_flow_run(self) -> None:
        """The flow run of a run handed back ends Crashed now, not at the next start: it
        gives back the deployment's concurrency slot at once."""
        from service.runtime.api import mark_flow_runs_crashed

        stop = self.current.stop if self.current else None
        if stop is not None and stop.flow_run_id is not None:
            mark_flow_runs_crashed([stop.flow_run_id], CRASH_REASON)

    # -- heartbeat (read by `retrain status`) ----------------------------------------------
    def write_heartbeat_if_due(self) -> None:
        if time.monotonic() >= self._next_heartbeat:
            self.write_heartbeat()

    def write_heartbeat(self, state: str | None = None) -> None:
        self._next_heartbeat = time.monotonic() + self.settings.daemon.heartbeat_seconds
        now = time.time()
        beat = {
            "pid": os.getpid(),
            "state": state or ("running" if self.current else "paused" if self.paused
                               else "waiting for the Dask scheduler" if not self.scheduler_answers() else "idle"),
            "started_at": _iso(self.started_at),
            "heartbeat_at": _iso(now),
            "heartbeat_unix": now,
            "heartbeat_seconds": self.settings.daemon.heartbeat_seconds,
            "home": str(self.home.root.resolve()),
            "prefect_api_url": self.api_url,
            "dask_scheduler": self.scheduler_address,
            "deployment": self.deployment.name if self.deployment else None,
            "paused": self.paused,
            "current_run": self.current.record.id if self.current else None,
            "current_run_files": len(self.current.record.file_ids) if self.current else 0,
            "batched": sum(len(batcher) for batcher in self.batchers.values()),
            "settling": sum(watcher.pending for watcher in self.watchers.values()),
        }
        # Rewritten every few seconds and worthless after a power cut: no fsync. A full disk
        # must not stop the daemon: the beat is written again once there is room.
        try:
            write_atomically(self.home.heartbeat_path, json.dumps(beat, indent=1), durable=False)
        except OSError as exc:
            log.debug("heartbeat not written: %s", exc)

    def _remove_heartbeat(self) -> None:
        self.home.heartbeat_path.unlink(missing_ok=True)


def backoff_seconds(failures: int) -> float:
    """How long the daemon holds its queue after ``failures`` failed runs in a row: 5 s,
    10 s, 20 s, ... up to a minute. Written out because no library fits: Prefect's
    ``exponential_backoff`` is the list of a task's retry delays (no cap), and this is not a
    retry of one call but a pause of the whole queue between runs."""
    return min(60.0, 5.0 * 2 ** (failures - 1))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
