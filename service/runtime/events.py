"""Prefect events of the service, for automations to act on (README: "Events and
automations").

Event names and their resource::

    retrain.file.claimed | archived | quarantined | duplicate     a file
    retrain.run.deployed | rejected | no-signal | kept | rolled-back | failed |
                cancelled | no-valid-data | not-trained | scored | labelled   a model version
    retrain.model.degraded | drifted                              the champion

A file is ``retrain.file.<sha256>`` (the same bytes are the same file), named after its
inbox name. A model version is its lineage asset's key, ``retrain://models/<registry>/<v>``
(``.../current`` when a run made no version: the model that stays deployed). The run's
flow run, the deployment and (for run events) its files are related resources, so an
automation can act on the deployment (``source: inferred``).

Events are sent by Prefect's events worker in the background; ``runtime.prefect_api``
drains it before the API stops. Only processes that hold a Prefect API emit them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

from core.records import RunOutcome
from core.specs import PipelineSpec
from flows.models.registry import ModelRegistry
from service.intake.ledger import FileRecord, FileState, Ledger, RunRecord

log = logging.getLogger("retrain.events")

# At most this many files are named as related resources of a run's event (Prefect caps
# related resources per event); the payload counts them all.
RELATED_FILES = 50
FILE_EVENT = {FileState.QUEUED: "claimed", FileState.ARCHIVED: "archived",
              FileState.QUARANTINED: "quarantined", FileState.DUPLICATE: "duplicate"}


def file_resource(record: FileRecord) -> dict[str, str]:
    return {"prefect.resource.id": f"retrain.file.{record.sha256 or f'unread-{record.id}'}",
            "prefect.resource.name": record.name, "retrain.file.id": str(record.id)}


def model_resource(registry: Path, version: str | None) -> dict[str, str]:
    from flows.retrain import model_asset

    return {"prefect.resource.id": model_asset(registry, version or "current").key,
            "prefect.resource.name": version or "none"}


def related(deployment_id: str | None = None, flow_run_id: str | None = None,
            files: Iterable[FileRecord] = ()) -> list[dict[str, str]]:
    found = []
    if deployment_id:
        found.append({"prefect.resource.id": f"prefect.deployment.{deployment_id}",
                      "prefect.resource.role": "deployment"})
    if flow_run_id:
        found.append({"prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                      "prefect.resource.role": "flow-run"})
    for record in list(files)[:RELATED_FILES]:
        found.append({**file_resource(record), "prefect.resource.role": "file"})
    return found


def emit(event: str, resource: dict[str, str], related_resources: list[dict[str, str]],
         payload: dict[str, Any]) -> None:
    from prefect.events import emit_event

    emit_event(event, resource=resource, related=related_resources, payload=payload)


def file_event(record: FileRecord, deployment_id: str | None = None,
               flow_run_id: str | None = None) -> None:
    """``retrain.file.<what happened>`` for a file that reached a state worth telling."""
    kind = FILE_EVENT.get(record.state)
    if kind is None:
        return
    payload: dict[str, Any] = {"file_id": record.id, "name": record.name, "size": record.size,
                               "path": record.path}
    if record.state == FileState.QUARANTINED:
        error = record.error or {}
        payload.update(reason=error.get("reason", ""), hint=error.get("hint", ""),
                       requeue=f"retrain requeue '{Path(record.path).name}'")
    if record.state == FileState.DUPLICATE:
        payload["duplicate_of"] = record.duplicate_of
    if record.run_id is not None:
        payload["run"] = record.run_id
    emit(f"retrain.file.{kind}", file_resource(record), related(deployment_id, flow_run_id), payload)


def run_ended(ledger: Ledger, registry: ModelRegistry, run_id: int, deployment_id: str | None,
              outcome: RunOutcome | None, spec: PipelineSpec) -> None:
    """The events of a run that ended: each of its files that reached its place (archived,
    quarantined), its decision, and what its monitoring found of the champion."""
    run = ledger.get_run(run_id)
    files = [f for f in map(ledger.get, run.file_ids) if f.state in (FileState.ARCHIVED, FileState.QUARANTINED)]
    for record in files:
        file_event(record, deployment_id, run.flow_run_id)
    current = registry.current_version()
    decision = run.decision or run.state  # "failed", "cancelled" for runs without a decision
    name = "rolled-back" if decision == "deploy_failed" else decision.replace("_", "-")
    payload = {"run": run.id, "decision": decision, "reason": run.reason, "model_version": run.model_version,
               "current": current, "metric": run.metric, "details": run.details, "files": len(files)}
    emit(f"retrain.run.{name}", model_resource(registry.root, run.model_version or current),
         related(deployment_id, run.flow_run_id, files), payload)
    if outcome is not None:
        champion_events(outcome, run, registry.root, deployment_id, spec)


def champion_events(outcome: RunOutcome, run: RunRecord, registry: Path, deployment_id: str | None,
                    spec: PipelineSpec) -> None:
    """``retrain.model.degraded`` when the policy found the champion's live metric below its
    bar (its ``live_metric`` trigger, whatever ``policy.retrain``), ``retrain.model.drifted``
    when it found a feature drifted above ``max_drift``."""
    from flows.judging.policy import live_bar

    policy, live, drift = outcome.policy, outcome.live, outcome.drift
    if policy is None or live is None:
        return
    resource = model_resource(registry, live.version)
    context = related(deployment_id, run.flow_run_id)
    if "live_metric" in policy.triggers:
        bar = live_bar(spec)
        reason = (f"live {live.metric} {live.value:.4f} on {live.rows:,} new rows, bar {bar:g}"
                  if live.value is not None else "it cannot score the new rows")
        emit("retrain.model.degraded", resource, context,
             {"run": run.id, "metric": live.metric, "value": live.value, "rows": live.rows, "bar": bar,
              "reason": reason})
    if "drift" in policy.triggers and drift is not None and drift.scores:
        feature, score = next(iter(drift.scores.items()))
        emit("retrain.model.drifted", resource, context,
             {"run": run.id, "statistic": drift.statistic, "scores": dict(list(drift.scores.items())[:10]),
              "bar": spec.policy.max_drift,
              "reason": f"{drift.statistic} {score:.3f} ({feature}) above max_drift {spec.policy.max_drift:g}"})
