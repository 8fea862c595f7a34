"""The one runner: every run takes the same path, whoever asked for it.

    claim -> start -> execute -> record -> events

- **claim** (``Runner.claim``): a file in the inbox becomes a ledger record (queued,
  duplicate or quarantined) by an atomic rename, and an event says so;
- **start** (``Runner.start_batch``, ``Runner.start_window``): the run's ledger record, the
  flow run of the deployment it is, and the flow's request built from the ledger;
- **execute** (``Runner.execute``): the flow run, in this process on the warm cluster
  (``service.runner.flowruns``, which touches no ledger or file: the daemon runs it in a
  thread of its own);
- **record** (``Runner.record``): what became of the run and its files (archived,
  quarantined, handed back, cancelled), retention, and the events of its end.

The daemon (a batch from the watcher, an operator's request, a run Prefect holds for the
deployment) and ``retrain run`` (with or without files) both drive a ``Runner``; each says
how a run ended with ``run_line``, in its own place (the daemon's log, ``retrain run``'s
stdout, a hand-off's wait).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.records import FileRef, RetrainRequest, RunOutcome
from flows.models.registry import ModelRegistry
from service.config import Settings
from service.intake.inbox import (
    Home,
    archive_files,
    cancel_run_files,
    claim_file,
    fail_run_files,
)
from service.intake.ledger import FileRecord, FileState, Ledger, RunRecord
from service.integrations.mlflow_export import export_to_mlflow
from service.runner.agreement import mend_current
from service.runner.production import (
    production_details,
    production_of,
    production_request,
    take_labelled_rows,
)
from service.runner.records import FlowResult, RunStart
from service.runner.retention import apply_retention
from service.runtime import events

if TYPE_CHECKING:
    from service.runner.flowruns import RunStop
    from service.runtime.deployment import DeploymentRef

log = logging.getLogger("retrain.runs")

OPERATOR = "an operator"  # who asks for a run with `retrain run` and no file


@dataclass
class StartedRun:
    """A run between its start and its record: its ledger record, the flow run it is, the
    flow's request, the handle that stops it, and `current` when it started."""

    record: RunRecord
    start: RunStart
    request: RetrainRequest
    stop: "RunStop"
    current_before: str | None
    made_files: list[int] = field(default_factory=list)  # queued files the run made (late labels' rows)


class Runner:
    """The path of every run through the flow, on one home, one deployment and one cluster."""

    def __init__(self, settings: Settings, home: Home, ledger: Ledger, registry: ModelRegistry,
                 deployment: "DeploymentRef | None", scheduler_address: str):
        self.settings = settings
        self.home = home
        self.ledger = ledger
        self.registry = registry
        self.deployment = deployment
        self.scheduler_address = scheduler_address

    @property
    def deployment_id(self) -> str | None:
        return str(self.deployment.id) if self.deployment else None

    def claim(self, path: Path, first_seen: float, kind: str = "train") -> FileRecord | None:
        """Take a file that came in (``kind``: through inbox/, score/ or labels/) into the
        ledger (queued, duplicate or quarantined), and say so in an event; None when it
        vanished before it could be claimed."""
        record = claim_file(self.ledger, self.home, path, first_seen, self.settings.watcher.max_file_bytes, kind)
        if record is not None:
            events.file_event(record, self.deployment_id)
        return record

    def start_batch(self, file_ids: list[int], by: str, kind: str = "train", backfill: bool = False) -> StartedRun:
        """A run of new files, as a new flow run named after them; ``by`` says who made the
        batch (the daemon, ``retrain run``); ``kind`` what the files are (one kind a batch)."""
        run = self.ledger.start_run(file_ids, {"trigger": "operator" if backfill else "files", "kind": kind,
                                               **({"backfill": True} if backfill else {})})
        names = [self.ledger.get(fid).name for fid in run.file_ids]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        count = f"{len(names)} file{'s' if len(names) != 1 else ''}"
        what = {"train": "", "score": "score-", "labels": "labels-"}[kind] + ("backfill-" if backfill else "")
        start = RunStart(self.deployment, f"run-{run.id}-{what}{count.replace(' ', '-')}",
                         ["files" if kind == "train" else kind], {"reason": f"{by}: {count} ({shown})"})
        return self._started(run, start, kind=kind, backfill=backfill)

    def start_backfill(self, since: float | None = None) -> StartedRun | None:
        """The archived scoring batches (first seen at ``since`` or later) scored again by the
        current model, into new predictions/<name>.<version> files; None when there is none."""
        files = [r.id for r in self.ledger.files(FileState.ARCHIVED)
                 if r.kind == "score" and (since is None or r.first_seen >= since)]
        return self.start_batch(files, "retrain backfill", "score", backfill=True) if files else None

    def start_window(self, trigger: str, requested_by: str, *, flow_run_id: str | None = None,
                     last_files: int | None = None) -> StartedRun:
        """A retraining on the current window: the flow run Prefect holds for it (Run button,
        API, automation, schedule: ``flow_run_id``), or a new one asked for by
        ``requested_by``. ``last_files``: the window an operator chose (None: the config's)."""
        run = self.ledger.start_run([], {"trigger": trigger, "requested_by": requested_by})
        parameters = {} if flow_run_id else {"reason": requested_by}
        start = RunStart(self.deployment, f"run-{run.id}-window", [trigger], parameters, flow_run_id=flow_run_id)
        return self._started(run, start, requested_by, last_files)

    def _started(self, run: RunRecord, start: RunStart, requested_by: str | None = None,
                 last_files: int | None = None, kind: str = "train", backfill: bool = False) -> StartedRun:
        from service.runner.flowruns import RunStop

        request = build_request(self.settings, self.home, self.ledger, run, requested_by, last_files, kind, backfill)
        if kind == "train":
            log.info("run %d started (%s): %d new file(s), %d in the window", run.id, run.details.get("trigger"),
                     len(request.new_files), len(request.window_files) + len(request.new_files))
        else:
            log.info("run %d started (%s%s): %d file(s)", run.id, "backfill of " if backfill else "",
                     "rows to score" if kind == "score" else "late labels", len(request.new_files))
        return StartedRun(run, start, request, RunStop(), self.registry.current_version())

    def execute(self, started: StartedRun) -> FlowResult:
        """Run the flow run; never raises. Safe in a thread of its own: it records only the
        flow run's id, as soon as it is opened (so that a cut run can be marked Crashed)."""
        from service.runner.flowruns import execute

        record_flow_run_id = functools.partial(self.ledger.set_flow_run_id, started.record.id)
        return execute(started.start, started.request, self.scheduler_address, started.stop, record_flow_run_id)

    def record(self, started: StartedRun, result: FlowResult) -> RunRecord:
        """What became of the run and of its files, then the events of its end."""
        run = started.record
        if started.stop.requested or result.cancelled:
            run = record_cancelled(self.ledger, self.home, self.registry, run, result, started.current_before)
        elif not result.started:  # handed back: its files wait for the next run, no attempt counted
            fail_run_files(self.ledger, self.home, run.id, result.error or "not started",
                           self.settings.daemon.max_attempts, count_attempt=False)
            # Whatever of it still runs on a worker may no longer switch `current`.
            self.registry.release_lease()
            mend_current(self.ledger, self.registry, f"after run {run.id}")
            run = self.ledger.get_run(run.id)
        else:
            run = record_result(self.ledger, self.home, run, result, self.settings)
            if result.outcome is not None and result.outcome.labels is not None:
                started.made_files = take_labelled_rows(self, result.outcome.labels)
        if result.started:
            events.run_ended(self.ledger, self.registry, run.id, self.deployment_id, result.outcome, self.settings)
        return run


def run_line(ledger: Ledger, run: RunRecord) -> str:
    """How a run ended, in one line, from its ledger record: decision, version, why, files
    used (and who asked for it, when it is a run on the window alone)."""
    if run.state != "completed":
        return f"run {run.id} {run.state}: {run.reason}"
    states = [ledger.get(fid).state for fid in run.file_ids]
    archived = sum(s == FileState.ARCHIVED for s in states)
    version = f" {run.model_version}" if run.model_version else ""
    asked = (f" (requested by {run.details['requested_by']}: retrained on the current window)"
             if run.details.get("requested_by") else "")
    return (f"run {run.id}{asked}: {run.decision}{version}: {run.reason} ({archived} file(s) archived, "
            f"{len(states) - archived} quarantined; flow run {run.flow_run_id})")


def build_request(settings: Settings, home: Home, ledger: Ledger, run: RunRecord,
                  requested_by: str | None = None, last_files: int | None = None, kind: str = "train",
                  backfill: bool = False):
    """The flow's parameter for this run: its new files, the training window (of
    ``last_files`` files when an operator chose it, else the config's), and what the policy
    needs from earlier runs (small batches not scored yet, rows since the champion)."""
    from flows.retrain import RetrainRequest

    new_files = [_ref(ledger.get(fid)) for fid in run.file_ids]
    if kind != "train":  # rows to score or late labels: their files alone, no window to build
        return production_request(RetrainRequest(
            new_files=new_files, pipeline=settings.pipeline(), registry_dir=str(home.registry.resolve()),
            cache_dir=str(home.cache.resolve())), home, kind, backfill)
    last = settings.window.last_files if last_files is None else last_files
    if last:
        window = ledger.window(max(last - len(new_files), 0)) if last > len(new_files) else []
    else:
        window = ledger.window(0)
    champion = ModelRegistry(home.registry).current()
    production = production_of(ledger, champion.version) if champion else None
    return RetrainRequest(
        new_files=new_files,
        window_files=[_ref(r) for r in window],
        pipeline=settings.pipeline(),
        registry_dir=str(home.registry.resolve()),
        cache_dir=str(home.cache.resolve()),
        unscored_files=[_ref(r) for r in unscored_files(ledger)],
        rows_since_champion=rows_since(ledger, champion.created_at) if champion else 0,
        requested_by=requested_by,
        production=production,
    )


def unscored_files(ledger: Ledger) -> list[FileRecord]:
    """Archived files of kept batches too small for a live metric, that no run has judged
    since: the last completed run carries them (``unscored_file_ids`` of its metrics)."""
    last = ledger.last_completed_run()
    ids = last.details.get("unscored_file_ids", []) if last else []
    records = [ledger.get(fid) for fid in ids]
    return [r for r in records if r.state == FileState.ARCHIVED]


def rows_since(ledger: Ledger, created_at: str) -> int:
    """Rows of the batches that started after a model was trained (its own run's excluded)."""
    return ledger.rows_since(datetime.fromisoformat(created_at).timestamp())


def _ref(record: FileRecord) -> FileRef:
    return FileRef(file_id=record.id, name=record.name, path=str(record.path),
                   sha256=record.sha256 or "", size=record.size or 0, origin=record.origin)


def record_result(ledger: Ledger, home: Home, run: RunRecord, result: FlowResult,
                  settings: Settings) -> RunRecord:
    """Archive the files the run used, quarantine the ones it rejected, apply retention;
    or, when the flow failed, hand its files back to the queue (quarantined after
    ``daemon.max_attempts``). Logs nothing of the outcome: the caller reports it
    (``run_line``)."""
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
    details = {
        **run.details,  # what started the run
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
    details.update(production_details(outcome))
    if run.details.get("backfill"):  # its files stay archived, where the runs that first scored them put them
        ledger.complete_run(run.id, decision=outcome.decision, reason=outcome.reason, flow_run_id=outcome.flow_run_id,
                            model_version=outcome.model_version, metric=outcome.metric, details=details,
                            archived={}, quarantined={})
        return ledger.get_run(run.id)
    archive_files(ledger, home, run.id, decision=outcome.decision, reason=outcome.reason,
                  flow_run_id=outcome.flow_run_id, model_version=outcome.model_version,
                  metric=outcome.metric, details=details, accepted=accepted, rejected=rejected)
    mend_current(ledger, ModelRegistry(home.registry), f"after run {run.id}")
    if run.details.get("kind", "train") == "train":  # the window's partitions: a training run knows them
        apply_retention(settings, home, ledger, outcome.window_partitions)
    export_to_mlflow(settings)  # in the background; never holds up the next run
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

