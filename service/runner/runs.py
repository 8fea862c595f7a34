"""One run through the flow: its flow run of the deployment and the flow's request built
from the ledger, then what happened recorded. Used by the daemon and by ``retrain run``
alike; each says how the run ended once, in its own way (the daemon in its log, ``retrain
run`` on stdout). The flow run itself is executed by ``service.runner.flowruns``, which touches
no ledger or file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.records import FileRef, RunOutcome
from flows.models.registry import ModelRegistry
from service.config import Settings
from service.intake.inbox import Home, archive_files, cancel_run_files, fail_run_files
from service.intake.ledger import FileRecord, FileState, Ledger, RunRecord
from service.runner.agreement import mend_current
from service.runner.retention import apply_retention

if TYPE_CHECKING:
    from service.runner.flowruns import RunStart
    from service.runtime.deployment import DeploymentRef

log = logging.getLogger("retrain.runs")


@dataclass
class FlowResult:
    flow_run_id: str | None
    outcome: RunOutcome | None  # None when the flow did not complete
    error: str | None = None  # one line, when it did not
    cancelled: bool = False  # Prefect asked to cancel it, and it stopped
    started: bool = True  # False: it never ran (the deployment's concurrency slot was taken)


def batch_start(deployment: "DeploymentRef | None", run: RunRecord, ledger: Ledger, by: str) -> "RunStart":
    """The flow run of a batch of new files: a new flow run of the deployment, named after
    the run and its files; ``by`` says who made the batch (the daemon, ``retrain run``)."""
    from service.runner.flowruns import RunStart

    names = [ledger.get(fid).name for fid in run.file_ids]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    count = f"{len(names)} file{'s' if len(names) != 1 else ''}"
    return RunStart(deployment, f"run-{run.id}-{count.replace(' ', '-')}", ["files"],
                    {"reason": f"{by}: {count} ({shown})"})


OPERATOR = "an operator"  # who asks for a run with `retrain run` and no file


def window_start(deployment: "DeploymentRef", run: RunRecord, trigger: str, *, flow_run_id: str | None = None,
                 reason: str | None = None) -> "RunStart":
    """A run on the current window: the flow run Prefect holds for it (Run button, API,
    automation, schedule: ``flow_run_id``), or a new one asked for ``reason``."""
    from service.runner.flowruns import RunStart

    parameters = {} if flow_run_id else {"reason": reason}
    return RunStart(deployment, f"run-{run.id}-window", [trigger], parameters, flow_run_id=flow_run_id)


def build_request(settings: Settings, home: Home, ledger: Ledger, run: RunRecord,
                  requested_by: str | None = None, last_files: int | None = None):
    """The flow's parameter for this run: its new files, the training window (of
    ``last_files`` files when an operator chose it, else the config's), and what the policy
    needs from earlier runs (small batches not scored yet, rows since the champion)."""
    from flows.retrain import RetrainRequest

    new_files = [_ref(ledger.get(fid)) for fid in run.file_ids]
    last = settings.window.last_files if last_files is None else last_files
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
        mend_current(ledger, ModelRegistry(home.registry), f"after run {run.id}")  # a switch it could not undo
        return ledger.get_run(run.id)

    accepted = [f.file_id for f in outcome.files if f.accepted]
    rejected = {f.file_id: f.rejection.model_dump() for f in outcome.files
                if not f.accepted and f.rejection is not None}
    metrics = {
        **run.metrics,  # what started the run
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
    mend_current(ledger, ModelRegistry(home.registry), f"after run {run.id}")
    apply_retention(settings, home, ledger, outcome.window_partitions)
    return ledger.get_run(run.id)


def record_cancelled(ledger: Ledger, home: Home, registry: ModelRegistry, run: RunRecord,
                     result: FlowResult, current_before: str | None) -> RunRecord:
    """An operator cancelled the run in Prefect: `current` is what it was when the run
    started (a deploy that had switched is rolled back), a version the run registered is
    marked cancelled, and its files are set aside in quarantine for an operator to decide."""
    flow_run_id = result.flow_run_id or run.flow_run_id
    if flow_run_id:
        ledger.set_flow_run_id(run.id, flow_run_id)
    latest = registry.latest()
    version = latest.version if latest is not None and flow_run_id and latest.flow_run_id == flow_run_id else None
    switched = registry.current_version()
    if switched != current_before:
        registry.promote(current_before) if current_before else registry.unset_current()
        ledger.record_event("rollback", {"from": switched, "to": current_before, "by": f"cancel of run {run.id}"})
        log.warning("run %d was cancelled after its deploy switched current to %s: back to %s",
                    run.id, switched, current_before)
    if version is not None:
        registry.update(version, decision="cancelled", reason=f"run {run.id} was cancelled by an operator")
    files = cancel_run_files(ledger, home, run.id, version, flow_run_id)
    log.warning("run %d was cancelled by an operator (flow run %s): %d file(s) quarantined, "
                "`retrain requeue NAME` takes one again; current is %s", run.id, flow_run_id, len(files),
                current_before or "none")
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

