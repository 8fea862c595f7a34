"""The production runs of the ``retrain`` flow, and the ``@task`` wrappers of their steps.

score:  plan partitions -> score each partition on the workers (into the prediction log,
        with its rows' drift counts) -> write each file's predictions/<name> -> drift of the
        scored rows
labels: join the labels with the prediction log -> the production metric of every version
        -> the joined rows as a training file

Both return a ``RunOutcome`` (decision ``scored`` or ``labelled``) that the service records
as it records a training run: files archived or quarantined with their reason.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from core.errors import InvalidDataError
from core.records import (
    DriftReport,
    FileOutcome,
    LabelsReport,
    PartitionPlan,
    ProductionMetric,
    Rejection,
    ResolvedSchema,
    RetrainRequest,
    RunOutcome,
)
from flows.data.preprocess import plan_partitions, read_sample
from flows.models.modelfile import ModelFile
from flows.models.registry import ModelRegistry
from flows.production import labels as labels_step
from flows.production import predlog, scoring
from flows.reporting.artifacts import publish_production


@task(name="score_partition", cache_policy=NO_CACHE, persist_result=False)
def score_partition_task(plan: PartitionPlan, first_row: int, schema: ResolvedSchema, model: ModelFile,
                         trusted_types: list[str], id_column: str | None, log_dir: str, version: str,
                         scored_at: float, threads: int, out: tuple[str, str] | None, reference: dict | None) -> dict:
    return scoring.score_partition(plan, first_row, schema, model, trusted_types, id_column, log_dir, version,
                                   scored_at, threads, out, reference)


@task(name="write_predictions", cache_policy=NO_CACHE, persist_result=False)
def write_predictions_task(parts: list[str], out_path: str, fmt: str, columns: list[str]) -> int:
    return scoring.write_predictions(parts, out_path, fmt, columns)


@task(name="join_labels", cache_policy=NO_CACHE, persist_result=False)
def join_labels_task(request: RetrainRequest, schema: ResolvedSchema, out_dir: str
                     ) -> tuple[LabelsReport, list[ProductionMetric], dict[int, dict | None]]:
    spec = request.pipeline
    return labels_step.join_labels(request.new_files, schema, request.prediction_log_dir, out_dir,
                                   spec.evaluation.metric_for(schema.task), spec.predictions.period,
                                   spec.policy.min_live_rows)


def run_production(request: RetrainRequest, stages) -> RunOutcome:
    """A scoring run or a labels run, as ``request.kind`` says."""
    registry = ModelRegistry(request.registry_dir)
    champion = registry.current()
    if champion is None:
        reason = ("no model is deployed yet: nothing to score with" if request.kind == "score"
                  else "no model is deployed yet: no prediction to join labels with")
        return _outcome(request, "no_valid_data", reason, {f.file_id: _rejection(reason) for f in request.new_files})
    schema = ResolvedSchema.model_validate({**champion.lineage["schema"], "id": request.pipeline.schema_.id})
    if request.kind == "score":
        return score_files(request, registry, champion, schema, stages)
    return take_labels(request, schema, stages)


def score_files(request: RetrainRequest, registry: ModelRegistry, champion, schema: ResolvedSchema,
                stages) -> RunOutcome:
    spec, logger = request.pipeline, get_run_logger()
    model = ModelFile(str(Path(champion.path) / champion.model_file), champion.model_sha256, champion.version)
    scored_at = time.time()
    reference = champion.lineage.get("reference") or {}
    plans, rejections = _plans(request, spec.preprocess.rows_per_partition)
    outputs = {f.file_id: str(Path(request.predictions_dir) / scoring.predictions_name(
        f.name, spec.predictions.format, champion.version if request.backfill else None)) for f in request.new_files}
    # Partitions scored at once share the cores: one thread each, as Dask gives its workers'
    # libraries (two workers at two threads each on two cores run slower than at one).
    threads = spec.model.threads if len(plans) == 1 else 1
    futures = [score_partition_task.submit(plan, first, schema, model, spec.model.trusted_types, schema.id,
                                           request.prediction_log_dir, champion.version, scored_at, threads,
                                           (outputs[plan.file.file_id], spec.predictions.format)
                                           if plan.count == 1 else None, reference)
               for plan, first in plans]
    summaries = [f.result() for f in futures]
    stages.lap("score")
    parts = _parts_by_file(summaries, rejections)
    written = {}
    for fid, file_parts in parts.items():
        if len(file_parts) > 1:  # a file of several partitions: its parts, one at a time, in order
            columns = scoring.output_columns(schema.task, _logged_classes(file_parts))
            written[fid] = write_predictions_task.submit(file_parts, outputs[fid], spec.predictions.format, columns)
    for future in written.values():
        future.result()
    predictions = {fid: outputs[fid] for fid in parts}
    stages.lap("write")
    every_part = [p for fid in predictions for p in parts[fid]]
    monitoring = scoring.scored_monitoring([s for s in summaries if s["file_id"] in predictions], every_part,
                                           reference, schema)
    removed = predlog.prune(request.prediction_log_dir, spec.predictions.keep_days)
    stages.lap("drift")
    rows = sum(s["rows"] for s in summaries if s["file_id"] in predictions)
    logger.info("scored %d rows of %d file(s) with %s%s", rows, len(predictions), champion.version,
                f"; the prediction log dropped {len(removed)} day(s) past keep_days" if removed else "")
    reason = (f"{rows:,} rows of {len(predictions)} file(s) scored by {champion.version}" if predictions
              else "no file of this batch could be scored; see each file's reason")
    outcome = _outcome(request, "scored" if predictions else "no_valid_data", reason, rejections,
                       rows={fid: sum(s["rows"] for s in summaries if s["file_id"] == fid) for fid in predictions})
    outcome.predictions, outcome.model_version, outcome.stage_seconds = predictions, champion.version, stages.seconds
    if monitoring["drift"] is not None:
        outcome.drift = DriftReport.model_validate(monitoring["drift"])
    outcome.estimated = monitoring["estimated"]
    return outcome


def take_labels(request: RetrainRequest, schema: ResolvedSchema, stages) -> RunOutcome:
    out_dir = str(Path(request.cache_dir) / "labelled")
    report, production, rejections = join_labels_task.submit(request, schema, out_dir).result()
    stages.lap("join")
    used = {fid for fid, why in rejections.items() if why is None}
    refused = {fid: why for fid, why in rejections.items() if why is not None}
    publish_production(production, report)
    reason = (f"{report.joined:,} of {report.rows:,} labels joined with their predictions"
              + "".join(f"; {n:,} {what}" for n, what in ((report.unknown_ids, "unknown ids"),
                                                          (report.duplicate_ids, "duplicate ids"),
                                                          (report.relabelled, "already labelled"),
                                                          (report.unparseable, "unparseable")) if n))
    outcome = _outcome(request, "labelled" if used else "no_valid_data",
                       reason if used else "no labels file of this batch could be used; see each file's reason",
                       {fid: Rejection.model_validate(why) for fid, why in refused.items()})
    outcome.production, outcome.labels, outcome.stage_seconds = production, report, stages.seconds
    get_run_logger().info("%s", reason)
    return outcome


def _plans(request: RetrainRequest, rows_per_partition: int) -> tuple[list[tuple[PartitionPlan, int]], dict]:
    """Each file's partitions with the rows before each; files that cannot be read are rejected."""
    plans, rejections = [], {}
    for file in request.new_files:
        try:
            read_sample(file.path, rows=1, name=file.name)
            file_plans = plan_partitions(file, rows_per_partition)
        except InvalidDataError as exc:
            rejections[file.file_id] = Rejection(reason=str(exc), hint=exc.hint, details=exc.details)
            continue
        plans += list(zip(file_plans, scoring.row_offsets(file_plans)))
    return plans, rejections


def _parts_by_file(summaries: list[dict], rejections: dict) -> dict[int, list[str]]:
    parts: dict[int, list[tuple[int, str]]] = {}
    for summary in summaries:
        if summary["rejection"] is not None:
            rejections.setdefault(summary["file_id"], Rejection.model_validate(summary["rejection"]))
        elif summary["path"] is not None:
            parts.setdefault(summary["file_id"], []).append((summary["index"], summary["path"]))
    for fid in set(parts) & set(rejections):  # a file refused in one part leaves nothing in the log
        for _, path in parts.pop(fid):
            Path(path).unlink(missing_ok=True)
    return {fid: [p for _, p in sorted(found)] for fid, found in parts.items()}


def _logged_classes(parts: list[str]) -> list[str]:
    import pyarrow.parquet as pq

    names = pq.read_schema(parts[0]).names if parts else []
    return [n[len(predlog.PROBABILITY):] for n in names if n.startswith(predlog.PROBABILITY)]


def _rejection(reason: str) -> Rejection:
    return Rejection(reason=reason, hint="`retrain requeue NAME` once a model is deployed")


def _outcome(request: RetrainRequest, decision: str, reason: str, rejections: dict,
             rows: dict[int, int] | None = None) -> RunOutcome:
    files = [FileOutcome(file_id=f.file_id, name=f.name, accepted=f.file_id not in rejections,
                         rows=(rows or {}).get(f.file_id, 0), rejection=rejections.get(f.file_id))
             for f in request.new_files]
    return RunOutcome(flow_run_id=str(flow_run.id) if flow_run.id else None, decision=decision, reason=reason,
                      files=files, requested_by=request.requested_by)
