"""``retrain watch`` (the daemon) and ``retrain run`` (one batch, or the window): both drive
the one runner (``service.runner.runs``)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

from core.errors import RetrainError
from service.cli.base import cluster_overrides, load


def add_run_commands(sub, common: argparse.ArgumentParser, cluster: argparse.ArgumentParser) -> None:
    watch = sub.add_parser("watch", parents=[common, cluster], help="run the daemon (foreground, Ctrl+C to stop)",
                           description="Watch the inbox and retrain on every batch of new files.")
    watch.set_defaults(func=cmd_watch)

    run = sub.add_parser("run", parents=[common, cluster], help="run one batch of files through the flow, no daemon",
                         description="Copy FILEs into the home and run them through the flow as one "
                                     "batch. The originals are never moved. With no FILE: retrain on the "
                                     "current window now, whatever [policy] says (through the daemon when "
                                     "one holds the home). Exit 0: the run completed (deployed, rejected or kept) "
                                     "and every file was used; 3: it completed but a file was quarantined; "
                                     "1: it failed.")
    run.add_argument("files", nargs="*", metavar="FILE",
                     help="CSV files (none: retrain on the current window, as an operator's request)")
    run.set_defaults(func=cmd_run)

    backfill = sub.add_parser("backfill", parents=[common, cluster],
                              help="score the archived scoring batches again with the current model",
                              description="Score the scoring batches taken from score/ (first seen at --since "
                                          "or later) again with the current model, as one run (through the daemon "
                                          "when one holds the home): new predictions/<name>.<version> files, the "
                                          "earlier ones kept. Exit 0: scored (or nothing to score); 1: it failed.")
    backfill.add_argument("--since", metavar="DATE", help="only batches first seen at DATE or later (2026-12-01)")
    backfill.set_defaults(func=cmd_backfill)


def cmd_watch(args: argparse.Namespace) -> int:
    settings = load(args, **cluster_overrides(args))
    from service.intake.home import Home
    from service.runtime.api import prepare_environment

    prepare_environment(Home(Path(settings.home)))
    from service.runner.daemon import RetrainDaemon

    return RetrainDaemon(settings).serve()


def cmd_run(args: argparse.Namespace) -> int:
    settings = load(args, **cluster_overrides(args))
    sources = [Path(f) for f in args.files]
    for source in sources:
        if not source.is_file():
            raise RetrainError(f"{source}: no such file; give paths of CSV files")
    from service.intake.home import Home
    from service.runner.handoff import ask_daemon, daemon_holds, hand_to_daemon

    home = Home(Path(settings.home))
    if daemon_holds(home):
        return hand_to_daemon(sources, home) if sources else ask_daemon(home)

    def start(runner):
        from service.runner.runs import OPERATOR

        if not sources:  # a run on the window, asked for by an operator
            return runner.start_window("operator", OPERATOR)
        claimed = claim_copies(sources, runner)
        if not claimed:
            raise RetrainError("no file to run on; see the lines above")
        return runner.start_batch(claimed, "retrain run")

    return run_here(settings, home, start)


def cmd_backfill(args: argparse.Namespace) -> int:
    settings = load(args, **cluster_overrides(args))
    since = _since(args.since)
    from service.intake.home import Home
    from service.runner.handoff import ask_daemon, daemon_holds

    home = Home(Path(settings.home))
    if daemon_holds(home):
        return ask_daemon(home, "backfill", since)

    def start(runner):
        started = runner.start_backfill(since)
        if started is None:
            print("retrain: no archived scoring batch to score again", file=sys.stderr)
        return started

    return run_here(settings, home, start)


def _since(text: str | None) -> float | None:
    from datetime import datetime, timezone

    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RetrainError(f"--since {text!r}: expected a date (2026-12-01) or a time (2026-12-01T08:00)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def run_here(settings, home, start) -> int:
    """One run in this process, no daemon: the home's session (lock, repair, API, cluster),
    the run ``start(runner)`` begins (None: nothing to do), executed with progress, recorded."""
    from service.runtime.api import prepare_environment

    prepare_environment(home)
    from service.intake.ledger import FileState
    from service.runner.session import RunSession

    log = logging.getLogger("retrain.run")
    with ExitStack() as resources:
        session = RunSession(settings, "retrain run", resources)
        ledger = session.open_home()
        waiting = ledger.files(FileState.QUEUED)
        if waiting:
            log.info("%d file(s) from before wait in the queue for `retrain watch`", len(waiting))
        # Reach the scheduler and the API before taking the files: when either does not
        # answer, the files are left alone.
        session.start_runtime(in_process=settings.dask.run_in_process)
        runner = session.runner
        assert runner is not None
        started = start(runner)
        if started is None:
            return 0
        with show_progress(log):
            result = runner.execute(started)
        run = runner.record(started, result)
        return report_run(ledger, run, result)


@contextmanager
def show_progress(log: logging.Logger) -> Iterator[None]:
    """Progress of the run per stage: bars on a terminal, plain log lines otherwise."""
    from flows.reporting import progress

    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        bars = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=Console(stderr=True))
        tasks: dict[str, Any] = {}

        def listener(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
            bars.update(tasks[stage], completed=done, total=total)
    else:
        bars = nullcontext()

        def listener(stage: str, done: int, total: int) -> None:
            if stage == "preprocess":
                log.info("preprocess: %d/%d partitions", done, total)
            elif done == total:
                log.info("%s: done", stage)

    with bars:
        progress.add_listener(listener)
        try:
            yield
        finally:
            progress.remove_listener(listener)


def claim_copies(sources: list[Path], runner) -> list[int]:
    """Copy each source into the inbox and claim it as the daemon claims an inbox file;
    returns the ids of the files queued for this run (duplicates and rejected files are
    reported)."""
    from service.intake.inbox import drop_into_inbox
    from service.intake.ledger import FileState

    claimed = []
    for source in sources:
        record = runner.claim(drop_into_inbox(source, runner.home.inbox), time.time())
        if record is None:
            continue
        if record.state == FileState.QUEUED:
            claimed.append(record.id)
        elif record.state == FileState.DUPLICATE:
            print(f"retrain: {source.name}: same content as a file already used; not trained on again",
                  file=sys.stderr)
        else:
            print(f"retrain: {source.name}: {(record.error or {}).get('reason', record.state)}",
                  file=sys.stderr)
    return claimed


def report_run(ledger, run, result) -> int:
    from service.intake.ledger import FileState
    from service.runner.runs import run_line

    if result.cancelled:
        print(f"retrain: error: run {run.id} was cancelled in Prefect; its files are in quarantine",
              file=sys.stderr)
        return 1
    if result.outcome is None:
        print(f"retrain: error: run {run.id} failed: {result.error}", file=sys.stderr)
        return 1
    outcome = result.outcome
    quarantined = 0
    for f in outcome.files:
        if not f.accepted:
            quarantined += 1
            where = ledger.get(f.file_id).path
            print(f"retrain: error: {f.rejection.reason if f.rejection else 'rejected'} "
                  f"(quarantined as {where})", file=sys.stderr)
    if outcome.decision == "no_valid_data":
        if not outcome.files:  # a run on the window alone: nothing else says why
            print(f"retrain: error: run {run.id}: {outcome.reason}", file=sys.stderr)
        return 1
    print(run_line(ledger, run))
    states = {ledger.get(f.file_id).state for f in outcome.files}
    return 3 if quarantined or FileState.QUARANTINED in states else 0
