"""One batch through the flow: build the request from the ledger, call the flow, record
what happened. Used by the daemon and by ``retrain run`` alike; each says how the run
ended once, in its own way (the daemon in its log, ``retrain run`` on stdout).

Only ``call_flow`` talks to Prefect; it touches no ledger or file, so the daemon can run
it in a worker thread and keep every state change in its own loop.
"""

from __future__ import annotations

import functools
import logging
import traceback
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from flows.records import FileRef, RunOutcome
from service.config import Settings
from service.inbox import Home, archive_files, fail_run_files
from service.ledger import FileRecord, FileState, Ledger, RunRecord
from service.retention import apply_retention

log = logging.getLogger("retrain.runs")


@dataclass
class FlowResult:
    flow_run_id: str | None
    outcome: RunOutcome | None  # None when the flow failed
    error: str | None = None  # one line, when it failed


OPERATOR = "an operator"  # who asks for a run with `retrain run` and no file


def build_request(settings: Settings, home: Home, ledger: Ledger, run: RunRecord,
                  requested_by: str | None = None):
    """The flow's parameter for this run: its new files, the training window, and what the
    policy needs from earlier runs (small batches not scored yet, rows since the champion)."""
    from flows.registry import ModelRegistry
    from flows.retrain import RetrainRequest

    new_files = [_ref(ledger.get(fid)) for fid in run.file_ids]
    last = settings.window.last_files
    if last:
        window = ledger.window(max(last - len(new_files), 0)) if last > len(new_files) else []
    else:
        window = ledger.window(0)
    champion = ModelRegistry(home.registry).current()
    return RetrainRequest(
        new_files=new_files,
        window_files=[_ref(r) for r in window],
        pipeline=settings.pipeline(),
        registry_dir=str(home.registry.resolve()),
        cache_dir=str(home.cache.resolve()),
        unscored_files=[_ref(r) for r in unscored_files(ledger)],
        rows_since_champion=rows_since(ledger, champion.created_at) if champion else 0,
        requested_by=requested_by,
    )


def unscored_files(ledger: Ledger) -> list[FileRecord]:
    """Archived files of kept batches too small for a live metric, that no run has judged
    since: the last completed run carries them (``unscored_file_ids`` of its metrics)."""
    last = ledger.last_completed_run()
    ids = (last.metrics or {}).get("unscored_file_ids", []) if last else []
    records = [ledger.get(fid) for fid in ids]
    return [r for r in records if r.state == FileState.ARCHIVED]


def rows_since(ledger: Ledger, created_at: str) -> int:
    """Rows of the batches that started after a model was trained (its own run's excluded)."""
    return ledger.rows_since(datetime.fromisoformat(created_at).timestamp())


def _ref(record: FileRecord) -> FileRef:
    return FileRef(file_id=record.id, name=record.name, path=str(record.path),
                   sha256=record.sha256 or "", size=record.size or 0)


def call_flow(request, scheduler_address: str,
              on_flow_run_id: Callable[[str], None] | None = None) -> FlowResult:
    """Run the flow on the given Dask scheduler; never raises. ``on_flow_run_id`` is told
    the flow run's id as soon as it runs, so that a crash mid-run can still name it."""
    from prefect_dask import DaskTaskRunner

    from flows.retrain import retrain

    hooks = []
    if on_flow_run_id is not None:
        # The hook travels with the flow into task contexts that Dask pickles: it must not
        # hold the caller's objects (a ledger connection cannot be pickled), only a key.
        key = id(on_flow_run_id)
        _flow_run_callbacks[key] = on_flow_run_id
        hooks.append(functools.partial(_announce_flow_run, key))
    flow = retrain.with_options(task_runner=DaskTaskRunner(address=scheduler_address),
                                on_running=hooks)
    try:
        state = flow(request, return_state=True)
    except Exception as exc:  # the engine itself failed (API gone, ...)
        log.debug("%s", traceback.format_exc())  # the caller reports the one line
        return FlowResult(None, None, f"the flow did not run: {_one_line(exc)}")
    finally:
        if on_flow_run_id is not None:
            _flow_run_callbacks.pop(id(on_flow_run_id), None)
    flow_run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    if state.is_completed():
        return FlowResult(flow_run_id, state.result())
    try:
        state.result()  # raises the flow's exception
        error = state.message or state.name
    except BaseException as exc:
        error = _one_line(exc)
    return FlowResult(flow_run_id, None, f"flow run {state.name.lower()}: {error}")


_flow_run_callbacks: dict[int, Callable[[str], None]] = {}


def _announce_flow_run(key: int, flow, flow_run, state) -> None:
    callback = _flow_run_callbacks.get(key)
    if callback is not None:
        callback(str(flow_run.id))


def record_result(ledger: Ledger, home: Home, run: RunRecord, result: FlowResult,
                  settings: Settings) -> RunRecord:
    """Archive the files the run used, quarantine the ones it rejected, apply retention;
    or, when the flow failed, hand its files back to the queue (quarantined after
    ``daemon.max_attempts``). Logs nothing of the outcome: the caller reports it
    (``outcome_line``)."""
    if result.flow_run_id:
        ledger.set_flow_run_id(run.id, result.flow_run_id)
    outcome = result.outcome
    if outcome is None:
        fail_run_files(ledger, home, run.id, result.error or "flow failed", settings.daemon.max_attempts)
        return ledger.get_run(run.id)

    accepted = [f.file_id for f in outcome.files if f.accepted]
    rejected = {f.file_id: f.rejection.model_dump() for f in outcome.files
                if not f.accepted and f.rejection is not None}
    metrics = {
        **_monitoring(outcome),
        "candidate": outcome.candidate_metrics,
        "champion": outcome.champion_metrics,
        "train_rows": outcome.train_rows,
        "holdout_rows": outcome.holdout_rows,
        "window_files": outcome.window_files,
        "rows": sum(f.rows for f in outcome.files),
        "rejected_rows": sum(f.rejected_rows for f in outcome.files),
        "stage_seconds": outcome.stage_seconds,
    }
    archive_files(ledger, home, run.id, decision=outcome.decision, reason=outcome.reason,
                  flow_run_id=outcome.flow_run_id, model_version=outcome.model_version,
                  metric=outcome.metric, metrics=metrics, accepted=accepted, rejected=rejected)
    apply_retention(settings, home, ledger, outcome.window_partitions)
    return ledger.get_run(run.id)


def outcome_line(run_id: int, outcome: RunOutcome) -> str:
    """How a completed run ended, in one line: decision, version, why, files used (and who
    asked for it, when it is a run on the window alone)."""
    used = sum(1 for f in outcome.files if f.accepted)
    version = f" {outcome.model_version}" if outcome.model_version else ""
    asked = (f" (requested by {outcome.requested_by}: retrained on the current window)"
             if outcome.requested_by else "")
    return (f"run {run_id}{asked}: {outcome.decision}{version}: {outcome.reason} "
            f"({used} file(s) archived, {len(outcome.files) - used} quarantined; "
            f"flow run {outcome.flow_run_id})")


def _monitoring(outcome: RunOutcome) -> dict[str, Any]:
    """What the monitor and the policy found, as the run's ledger record keeps it."""
    drift = outcome.drift
    return {
        "live": outcome.live.model_dump() if outcome.live else None,
        "drift": None if drift is None else {
            "statistic": drift.statistic, "rows": drift.rows, "label": drift.label,
            "top": list(drift.scores.items())[:5], "scores": drift.scores},
        "policy": outcome.policy.model_dump() if outcome.policy else None,
        "comparison": outcome.comparison.model_dump() if outcome.comparison else None,
        "unscored_file_ids": outcome.unscored_file_ids,
        "requested_by": outcome.requested_by,
    }


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
