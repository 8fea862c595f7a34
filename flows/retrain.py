"""The ``retrain`` flow: the pipeline diagram, with thin ``@task`` wrappers around the steps.

preprocess (one task per partition or group of small ones, mapped) -> train -> evaluate -> register -> deploy

Tasks exchange paths and small summaries; the cached parquet partitions stay on disk.
The flow itself runs in the caller's process (the daemon, or ``retrain run``); its tasks
run on whatever Dask cluster the caller's ``DaskTaskRunner`` points at.
"""

from __future__ import annotations

import base64
import platform
import time
import uuid
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict

from flows import progress
from flows.deploy import deploy_model, post_deploy_check, rollback
from flows.errors import InvalidDataError, TrainingError
from flows.evaluate import evaluate_against_champion
from flows.hooks import run_deploy_hooks
from flows.preprocess import cached_summary, plan_partitions, preprocess_partition, read_sample
from flows.records import (
    EvaluationResult,
    FileOutcome,
    FileRef,
    ModelVersion,
    PartitionPlan,
    PartitionSummary,
    Rejection,
    ResolvedSchema,
    RunOutcome,
    TrainResult,
)
from flows.registry import MODEL_FILE, ModelRegistry
from flows.schema import resolve_schema
from flows.specs import METRICS, PipelineSpec
from flows.train import train_candidate


class RetrainRequest(BaseModel):
    """The flow's one parameter: which files, which settings, where to write."""

    model_config = ConfigDict(extra="forbid")

    new_files: list[FileRef]
    # Files accepted by earlier runs that are still in the training window, oldest first.
    window_files: list[FileRef] = []
    pipeline: PipelineSpec
    registry_dir: str
    cache_dir: str


# -- tasks: thin wrappers, no logic of their own ------------------------------------------

@task(name="preprocess_partitions", cache_policy=NO_CACHE, persist_result=False)
def preprocess_partitions_task(plans: list[PartitionPlan], schema: ResolvedSchema, cache_dir: str,
                               holdout_fraction: float) -> list[PartitionSummary]:
    return [preprocess_partition(plan, schema, cache_dir, holdout_fraction) for plan in plans]


@task(name="train_candidate", cache_policy=NO_CACHE, persist_result=False)
def train_candidate_task(parquet_paths: list[str], schema: ResolvedSchema, pipeline: PipelineSpec,
                         out_path: str) -> TrainResult:
    return train_candidate(parquet_paths, schema, pipeline.model, out_path)


@task(name="evaluate_against_champion", cache_policy=NO_CACHE, persist_result=False)
def evaluate_task(candidate_path: str, champion_path: str | None, champion_version: str | None,
                  parquet_paths: list[str], schema: ResolvedSchema, pipeline: PipelineSpec,
                  cache_dir: str) -> EvaluationResult:
    return evaluate_against_champion(
        candidate_path, champion_path, champion_version, parquet_paths, schema,
        pipeline.evaluation, pipeline.model.trusted_types, check_rows=pipeline.deploy.check_rows,
        threads=pipeline.model.threads, outputs_dir=str(Path(cache_dir) / "outputs"),
    )


@materialize("retrain://models/candidate", name="register_candidate", cache_policy=NO_CACHE,
             persist_result=False)
def register_candidate_task(registry_dir: str, staged: str, metadata: dict[str, Any]) -> ModelVersion:
    """Every candidate becomes a registry version. As a Prefect asset materialization (the
    assets are set per run), the UI draws the data files -> model lineage."""
    version = ModelRegistry(registry_dir).register(staged, metadata)
    for asset in materialized_assets():
        add_asset_metadata(asset, {"version": version.version, "metrics": version.metrics,
                                   "path": version.path, "sha256": version.model_sha256})
    return version


@task(name="deploy_model", cache_policy=NO_CACHE, persist_result=False)
def deploy_task(registry_dir: str, version: str, parquet_paths: list[str], schema: ResolvedSchema,
                evaluation: EvaluationResult, pipeline: PipelineSpec, lease: str) -> str | None:
    """Switch ``current`` (only while this run holds the registry's lease) and check what
    is now on disk; undo the switch when the check fails, so that a retry (or the end of
    the retries) starts from the old champion."""
    registry = ModelRegistry(registry_dir)
    previous = deploy_model(registry, version, lease)
    try:
        post_deploy_check(
            registry, version, parquet_paths, schema, evaluation.metric,
            evaluation.check_value, evaluation.check_rows, pipeline.model.trusted_types,
            pipeline.model.threads,
        )
        run_deploy_hooks(pipeline.deploy, version, registry.get(version).path)
    except Exception:
        rollback(registry, previous, version)
        raise
    return previous


# -- the flow -------------------------------------------------------------------------------

@flow(name="retrain", persist_result=False, validate_parameters=True)
def retrain(request: RetrainRequest) -> RunOutcome:
    logger = get_run_logger()
    spec = request.pipeline
    started = time.perf_counter()
    stages = Stopwatch()
    rejected: dict[int, Rejection] = {}
    # This run may switch `current` until the service releases the lease or a later run
    # takes it (see ModelRegistry.take_lease).
    lease = str(flow_run.id or uuid.uuid4())
    ModelRegistry(request.registry_dir).take_lease(lease)

    schema = _resolve_run_schema(request, rejected)
    stages.lap("schema")
    if schema is None:
        return _finish(request, rejected, {}, stages, decision="no_valid_data",
                       reason="no file of this batch could be read; see each file's reason")

    # Plan partitions for the new files and for the window (the window is cached).
    plans: list[PartitionPlan] = []
    skipped_window: list[str] = []
    for ref in [*request.window_files, *request.new_files]:
        if ref.file_id in rejected:
            continue
        try:
            plans.extend(plan_partitions(ref, spec.preprocess.rows_per_partition))
        except InvalidDataError as exc:
            _reject_or_skip(ref, exc, request, rejected, skipped_window)

    # Partitions already in the cache are known from their parquet footers here; only the
    # new ones become tasks (a task costs tens of milliseconds even when it has no work).
    holdout_fraction = spec.evaluation.holdout_fraction
    summaries: list[PartitionSummary] = []
    to_preprocess: list[PartitionPlan] = []
    for plan in plans:
        hit = cached_summary(plan, schema, request.cache_dir, holdout_fraction)
        if hit is not None:
            summaries.append(hit)
        else:
            to_preprocess.append(plan)
    groups = group_plans(to_preprocess)
    futures = preprocess_partitions_task.map(
        groups, unmapped(schema), unmapped(request.cache_dir), unmapped(holdout_fraction),
    )
    summaries += _gather_with_progress(futures, groups, done=len(summaries), total=len(plans))
    for summary in summaries:
        if summary.rejection is not None:
            ref = _ref_by_id(request, summary.file_id)
            exc = InvalidDataError(summary.rejection.reason, summary.rejection.details,
                                   summary.rejection.hint)
            _reject_or_skip(ref, exc, request, rejected, skipped_window)
    by_file = _group_by_file(summaries, rejected, skipped_window, request)
    stages.lap("preprocess")
    cached = sum(s.cached for s in summaries)
    if schema.ignored:
        logger.warning("columns %s look like identifiers and are not used as features "
                       "(set schema.drop or schema.features to decide)", ", ".join(schema.ignored))
    logger.info("preprocessed %d partitions (%d from cache) of %d files",
                len(summaries), cached, len(by_file))
    for name in skipped_window:
        logger.warning("window file %s no longer fits the schema and is left out", name)

    new_ids = {ref.file_id for ref in request.new_files}
    if not any(fid in by_file for fid in new_ids):
        return _finish(request, rejected, by_file, stages, decision="no_valid_data",
                       reason="every file of this batch was rejected; see each file's reason")

    # The window in file order (oldest first), partitions in order within a file.
    parquet_paths = [s.parquet_path for ref in [*request.window_files, *request.new_files]
                     for s in by_file.get(ref.file_id, []) if s.parquet_path]

    registry = ModelRegistry(request.registry_dir)
    run_id = flow_run.id or "local"
    staged = registry.staging_path(f"candidate-{run_id}.skops")
    champion = registry.current()
    try:
        progress.report("train", 0, 1)
        trained = train_candidate_task.submit(parquet_paths, schema, spec, str(staged)).result()
        stages.lap("train")
        progress.report("train", 1, 1)
        evaluation = evaluate_task.submit(
            str(staged), str(Path(champion.path) / MODEL_FILE) if champion else None,
            champion.version if champion else None, parquet_paths, schema, spec, request.cache_dir,
        ).result()
        stages.lap("evaluate")
        progress.report("evaluate", 1, 1)
    except TrainingError as exc:
        logger.warning("not trained: %s", exc)
        return _finish(request, rejected, by_file, stages, decision="not_trained", reason=str(exc))

    metadata = _metadata(request, schema, trained, evaluation, by_file)
    version = register_candidate_task.with_options(
        assets=[model_asset(request.registry_dir)],
        asset_deps=[data_asset(f) for f in metadata["metadata"]["files"]],
    ).submit(request.registry_dir, str(staged), metadata).result()
    stages.lap("register")
    progress.report("register", 1, 1)
    logger.info("candidate %s: %s", version.version, evaluation.reason)

    decision, reason = "rejected", evaluation.reason
    if evaluation.deploy:
        deploy = deploy_task.with_options(
            retries=spec.deploy.retries,
            retry_delay_seconds=_backoff(spec.deploy.retry_delay_seconds, spec.deploy.retries),
        )
        try:
            deploy.submit(request.registry_dir, version.version, parquet_paths, schema,
                          evaluation, spec, lease).result()
            decision = "deployed"
        except Exception as exc:  # the deploy was rolled back inside the task
            decision = "deploy_failed"
            reason = f"deploy of {version.version} failed after {spec.deploy.retries + 1} attempts and was rolled back: {exc}"
            logger.error(reason)
        stages.lap("deploy")
        progress.report("deploy", 1, 1)
    registry.update(version.version, decision=decision, reason=reason)
    logger.info("decision: %s (%s) in %.1fs", decision, reason, time.perf_counter() - started)
    publish_history(registry, spec.evaluation.threshold)
    return _finish(request, rejected, by_file, stages, decision=decision, reason=reason,
                   version=version.version, evaluation=evaluation, trained=trained)


def publish_history(registry: ModelRegistry, threshold: float) -> None:
    """Attach the history of every version to this run: the chart of the gate's metric
    (a PNG inside a markdown artifact) and the metrics table. A chart that cannot be drawn
    is logged, never a reason to fail a run whose model is already decided."""
    from flows.report import metrics_table, render_png

    versions = registry.versions()
    try:
        png = render_png(versions, threshold, registry.current_version(), dpi=80)
        create_markdown_artifact(
            key="retrain-history",
            markdown=f"# Every trained version\n\n![metric of every version](data:image/png;base64,"
                     f"{base64.b64encode(png).decode()})\n",
            description="the gate's metric of every trained version over time")
        create_table_artifact(key="retrain-versions", table=metrics_table(versions),
                              description="metrics and decision of every trained version")
    except Exception as exc:
        get_run_logger().warning("history artifacts not created: %s", exc)


def model_asset(registry_dir: str) -> Asset:
    return Asset(key=f"retrain://models{Path(registry_dir).resolve().as_posix()}",
                 properties=AssetProperties(name="retrain model", description=f"registry at {registry_dir}"))


def data_asset(file: dict[str, Any]) -> Asset:
    """Data files are named by content: the same bytes are the same asset, whatever the name."""
    return Asset(key=f"retrain://data/{file['sha256']}",
                 properties=AssetProperties(name=file["name"], description=f"{file['rows']} rows"))


def materialized_assets() -> list[Asset]:
    from prefect.context import AssetContext

    context = AssetContext.get()
    return list(context.downstream_assets) if context else []


# -- helpers of the flow body ----------------------------------------------------------------

def _gather_with_progress(futures, groups: list[list[PartitionPlan]], done: int,
                          total: int) -> list[PartitionSummary]:
    """The summaries of every group, in plan order, reporting each group as it finishes
    (``done`` of ``total`` partitions were already known from the cache)."""
    progress.report("preprocess", done, total)
    position = {id(f): i for i, f in enumerate(futures)}
    results: list[list[PartitionSummary]] = [[] for _ in futures]
    for future in as_completed(futures):
        i = position[id(future)]
        results[i] = future.result()
        done += len(groups[i])
        progress.report("preprocess", done, total)
    return [s for group in results for s in group]


class Stopwatch:
    """Wall time per stage: each ``lap`` records the time since the previous one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 3)
        self._last = now


# A task costs tens of milliseconds of orchestration: small partitions (small files) are
# grouped so that each task has at least this much to read.
TASK_BYTES = 8 * 1024 * 1024


def group_plans(plans: list[PartitionPlan], task_bytes: int = TASK_BYTES) -> list[list[PartitionPlan]]:
    """Partitions in groups of about ``task_bytes`` (a large partition stays alone)."""
    groups: list[list[PartitionPlan]] = []
    current: list[PartitionPlan] = []
    size = 0
    for plan in plans:
        plan_bytes = (plan.file.size if plan.end == -1 else plan.end) - plan.start
        if current and size + plan_bytes > task_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(plan)
        size += plan_bytes
    if current:
        groups.append(current)
    return groups


def _resolve_run_schema(request: RetrainRequest, rejected: dict[int, Rejection]) -> ResolvedSchema | None:
    """The schema of this run. Once a model was trained, its resolved schema is kept for
    as long as the configured schema is unchanged, so every later file is held to the same
    columns and types; only the first run (or a changed config) infers it from a file.
    Files that cannot even be sampled are rejected here."""
    spec = request.pipeline.schema_
    versions = ModelRegistry(request.registry_dir).versions()
    if versions:
        latest = versions[-1].metadata
        if latest.get("config", {}).get("schema") == spec.model_dump(by_alias=True) and "schema" in latest:
            return ResolvedSchema.model_validate(latest["schema"])
    for ref in request.new_files:
        try:
            return resolve_schema(spec, read_sample(ref.path, name=ref.name), ref.name)
        except InvalidDataError as exc:
            rejected[ref.file_id] = _rejection(exc)
    return None


def _reject_or_skip(ref: FileRef, exc: InvalidDataError, request: RetrainRequest,
                    rejected: dict[int, Rejection], skipped_window: list[str]) -> None:
    """A new file that fails is rejected (quarantined by the service); an old window file
    that no longer fits (the schema changed) is only left out of this run."""
    if any(r.file_id == ref.file_id for r in request.new_files):
        rejected.setdefault(ref.file_id, _rejection(exc))
    elif ref.name not in skipped_window:
        skipped_window.append(ref.name)


def _rejection(exc: InvalidDataError) -> Rejection:
    return Rejection(reason=str(exc), hint=exc.hint, details=exc.details)


def _ref_by_id(request: RetrainRequest, file_id: int) -> FileRef:
    return next(r for r in [*request.new_files, *request.window_files] if r.file_id == file_id)


def _group_by_file(summaries: list[PartitionSummary], rejected: dict[int, Rejection],
                   skipped_window: list[str], request: RetrainRequest) -> dict[int, list[PartitionSummary]]:
    """Partitions of the usable files, by file id, in partition order. A file is usable
    only if every one of its partitions is."""
    skipped_ids = {r.file_id for r in request.window_files if r.name in skipped_window}
    by_file: dict[int, list[PartitionSummary]] = {}
    for summary in sorted(summaries, key=lambda s: (s.file_id, s.index)):
        if summary.file_id in rejected or summary.file_id in skipped_ids:
            continue
        by_file.setdefault(summary.file_id, []).append(summary)
    return by_file


def _backoff(delay: float, retries: int) -> list[float]:
    """Exponential backoff: delay, 2*delay, 4*delay, ..."""
    return [delay * (2**i) for i in range(max(retries, 1))]


def _metadata(request: RetrainRequest, schema: ResolvedSchema, trained: TrainResult,
              evaluation: EvaluationResult, by_file: dict[int, list[PartitionSummary]]) -> dict[str, Any]:
    """Lineage and context recorded with the version: which data, which config, which code."""
    files = []
    for ref in [*request.window_files, *request.new_files]:
        parts = by_file.get(ref.file_id)
        if parts:
            files.append({"file_id": ref.file_id, "name": ref.name, "sha256": ref.sha256,
                          "rows": sum(p.rows for p in parts),
                          "rejected_rows": sum(p.rejected_rows for p in parts),
                          "holdout_rows": sum(p.holdout_rows for p in parts),
                          "new": ref in request.new_files})
    return {
        "flow_run_id": flow_run.id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": evaluation.candidate,
        "champion_metrics": evaluation.champion,
        "metadata": {
            "metric": evaluation.metric,
            "evaluation": evaluation.model_dump(),
            "training": trained.model_dump(exclude={"model_path"}),
            "schema": schema.model_dump(),
            "files": files,
            "config": request.pipeline.model_dump(by_alias=True),
            "libraries": _library_versions(),
        },
    }


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("scikit-learn", "pandas", "numpy", "pyarrow", "skops", "prefect", "dask"):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return versions


def _finish(request: RetrainRequest, rejected: dict[int, Rejection],
            by_file: dict[int, list[PartitionSummary]], stages: "Stopwatch", *, decision: str, reason: str,
            version: str | None = None, evaluation: EvaluationResult | None = None,
            trained: TrainResult | None = None) -> RunOutcome:
    files = []
    for ref in request.new_files:
        parts = by_file.get(ref.file_id, [])
        files.append(FileOutcome(
            file_id=ref.file_id, name=ref.name, accepted=ref.file_id not in rejected,
            rows=sum(p.rows for p in parts), rejected_rows=sum(p.rejected_rows for p in parts),
            rejection=rejected.get(ref.file_id),
        ))
    outcome = RunOutcome(
        flow_run_id=str(flow_run.id) if flow_run.id else None,
        decision=decision, reason=reason, files=files, model_version=version,
        metric=evaluation.metric if evaluation else None,
        candidate_metrics=evaluation.candidate if evaluation else None,
        champion_metrics=evaluation.champion if evaluation else None,
        train_rows=trained.train_rows if trained else 0,
        holdout_rows=evaluation.holdout_rows if evaluation else 0,
        window_files=len(by_file), stage_seconds=stages.seconds,
    )
    create_markdown_artifact(key="retrain-summary", markdown=summary_markdown(outcome, evaluation),
                             description=f"retrain: {decision}")
    return outcome


def summary_markdown(outcome: RunOutcome, evaluation: EvaluationResult | None) -> str:
    """The run's artifact: files, rows, metrics and the decision, readable in the Prefect UI."""
    lines = [f"# Retrain: {outcome.decision}", "", f"**Why:** {outcome.reason}", ""]
    if outcome.model_version:
        lines += [f"**Model version:** `{outcome.model_version}`", ""]
    lines += ["## Files of this batch", "", "| file | status | rows used | rows dropped | reason |",
              "|---|---|---:|---:|---|"]
    for f in outcome.files:
        status = "accepted" if f.accepted else "rejected"
        why = f.rejection.reason if f.rejection else ""
        lines.append(f"| {f.name} | {status} | {f.rows} | {f.rejected_rows} | {why} |")
    lines += ["", f"Training window: {outcome.window_files} files, {outcome.train_rows} training rows, "
              f"{outcome.holdout_rows} holdout rows.", ""]
    if evaluation is not None:
        better = "higher" if METRICS[evaluation.metric][1] else "lower"
        lines += [f"## Metrics (gate on `{evaluation.metric}`, {better} is better; threshold "
                  f"{evaluation.threshold}, tolerance {evaluation.tolerance})", "",
                  "| metric | candidate | champion |", "|---|---:|---:|"]
        champion = evaluation.champion or {}
        for name, value in evaluation.candidate.items():
            other = champion.get(name)
            lines.append(f"| {name} | {value:.4f} | {'' if other is None else f'{other:.4f}'} |")
        if evaluation.champion_version:
            lines += ["", f"Champion: `{evaluation.champion_version}`."]
    if outcome.stage_seconds:
        lines += ["", "Time per stage: " + ", ".join(f"{stage} {seconds:.2f}s" for stage, seconds
                                                    in outcome.stage_seconds.items()) + "."]
    return "\n".join(lines) + "\n"

