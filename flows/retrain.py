"""The ``retrain`` flow: the pipeline diagram, and the ``@task`` wrappers of its steps.

plan -> preprocess (one task per partition group, mapped) -> monitor -> policy -> train (one
task per candidate, mapped; XGBoost as its own step across the cluster; beside it, the
reference statistics of its rows) -> evaluate -> register -> deploy

Every batch first scores the deployed model on its new rows (``flows.judging.monitor``); the policy
(``flows.judging.policy``) then keeps it, or goes on to train a candidate.

Tasks exchange paths and small summaries; the cached parquet partitions stay on disk. The
run's bookkeeping is the plan's (``flows.data.plan``), reading data is the data layer's
(``flows.data.window``). The flow itself runs in the caller's process (the daemon, or
``retrain run``); its tasks run on whatever Dask cluster the caller's ``DaskTaskRunner``
points at.

The run ends in a state named after its decision (Completed ``Deployed``, ``Rejected``...;
Failed ``DeployFailed``), with the reason as its message and the ``RunOutcome`` as its
result, so that Prefect's runs list alone tells decisions apart. When its Dask tasks are
cancelled (an operator cancelled the run) it ends Cancelled.
"""

from __future__ import annotations

import functools
import time
import uuid
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any, Callable

from prefect import flow, get_client, get_run_logger, task, unmapped
from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed, State
from prefect.tasks import exponential_backoff

from core.errors import TrainingError
from core.records import (
    CandidateScore,
    DriftReport,
    EvaluationResult,
    LiveMetric,
    ModelVersion,
    PartitionPlan,
    PartitionSummary,
    Rejection,
    ResolvedSchema,
    RetrainRequest,
    RunOutcome,
    TrainResult,
)
from core.specs import ModelSpec, PipelineSpec
from flows.data.plan import RunPlan, version_record
from flows.data.preprocess import preprocess_partition
from flows.data.window import Window
from flows.judging.evaluate import evaluate_against_champion
from flows.judging.monitor import monitor_champion, reference_statistics
from flows.judging.policy import decide_policy
from flows.models.deploy import deploy_version, undo_switch
from flows.models.registry import ModelRegistry
from flows.production.run import run_production
from flows.reporting import progress
from flows.reporting.artifacts import (
    publish_history,
    publish_monitoring,
    publish_summary,
)
from flows.training.search import choose, cross_validate, staged_path, start_order
from flows.training.train import train_candidate
from flows.training.xgb import train_xgboost

__all__ = ["RetrainRequest", "retrain"]


# -- tasks: one step each; the step's logic is a plain function of its module ----------------

@task(name="preprocess_partitions", cache_policy=NO_CACHE, persist_result=False)
def preprocess_partitions_task(plans: list[PartitionPlan], schema: ResolvedSchema, cache_dir: str,
                               holdout_fraction: float) -> list[PartitionSummary]:
    return [preprocess_partition(plan, schema, cache_dir, holdout_fraction) for plan in plans]


@task(name="monitor_champion", cache_policy=NO_CACHE, persist_result=False)
def monitor_task(champion: ModelVersion, file_ids: list[int], paths: list[str], schema: ResolvedSchema,
                 pipeline: PipelineSpec, registry_dir: str, cache_dir: str
                 ) -> tuple[LiveMetric | None, DriftReport | None, str]:
    return monitor_champion(champion, file_ids, paths, schema, pipeline.evaluation.metric_for(schema.task),
                            pipeline.policy.min_live_rows, ModelRegistry(registry_dir),
                            pipeline.model.trusted_types, threads=pipeline.model.threads,
                            outputs_dir=str(Path(cache_dir) / "outputs"))


@task(name="reference_statistics", cache_policy=NO_CACHE, persist_result=False)
def reference_task(window: Window) -> dict[str, Any]:
    return reference_statistics(window)


@task(name="train_candidate", cache_policy=NO_CACHE, persist_result=False)
def train_candidate_task(window: Window, spec: ModelSpec, out_path: str) -> TrainResult:
    return train_candidate(window, spec, out_path)


@task(name="cross_validate_candidate", cache_policy=NO_CACHE, persist_result=False)
def cross_validate_task(window: Window, spec: ModelSpec) -> CandidateScore:
    return cross_validate(window, spec)


@task(name="train_xgboost", cache_policy=NO_CACHE, persist_result=False)
def train_xgboost_task(window: Window, spec: ModelSpec, out_path: str, validate: bool) -> TrainResult:
    """Runs on one worker and trains on all of them (see flows.training.xgb)."""
    return train_xgboost(window, spec, out_path, validate)


@task(name="evaluate_against_champion", cache_policy=NO_CACHE, persist_result=False)
def evaluate_task(trained: TrainResult, champion: ModelVersion | None, window: Window,
                  pipeline: PipelineSpec, registry_dir: str, cache_dir: str,
                  new_paths: list[str] | None = None) -> EvaluationResult:
    return evaluate_against_champion(
        trained, champion, window, pipeline.evaluation, ModelRegistry(registry_dir),
        pipeline.model.trusted_types, check_rows=pipeline.deploy.check_rows,
        threads=pipeline.model.threads, outputs_dir=str(Path(cache_dir) / "outputs"), new_paths=new_paths)


@materialize("retrain://models/candidate", name="register_candidate", cache_policy=NO_CACHE,
             persist_result=False)
def register_candidate_task(registry_dir: str, staged: str, metadata: dict[str, Any],
                            version: str) -> ModelVersion:
    """Every candidate becomes a registry version, an asset of its own (the assets are set
    per run): the UI draws the data files -> version lineage."""
    record = ModelRegistry(registry_dir).register(staged, metadata, version=version)
    for asset in materialized_assets():
        add_asset_metadata(asset, {"version": record.version, "metrics": record.metrics,
                                   "path": record.path, "sha256": record.model_sha256})
    return record


@materialize("retrain://models/current", name="deploy_model", cache_policy=NO_CACHE, persist_result=False)
def deploy_task(registry_dir: str, version: str, window: Window, evaluation: EvaluationResult,
                pipeline: PipelineSpec, lease: str, previous: str | None) -> str | None:
    """A deploy materializes the registry's deployed model (the assets are set per run),
    downstream of the version: deployed versions lead to it, rejected candidates do not."""
    deploy_version(ModelRegistry(registry_dir), version, window, evaluation, pipeline, lease, previous)
    for asset in materialized_assets():
        add_asset_metadata(asset, {"version": version, "previous": previous})
    return previous


# -- the flow -------------------------------------------------------------------------------

def ends_cancelled_when_its_tasks_are(pipeline: Callable[[RetrainRequest], State]) -> Callable[[RetrainRequest], State]:
    """When Prefect asked to cancel the run (it is Cancelling), whoever executes it cancels
    its Dask tasks: the flow then ends Cancelled instead of failing on their CancelledError.
    Tasks cancelled for any other reason (a lost scheduler) still fail the run."""
    @functools.wraps(pipeline)
    def run(request: RetrainRequest) -> State:
        try:
            return pipeline(request)
        except CancelledError:
            if not cancel_requested():
                raise
            get_run_logger().warning("the run was cancelled; its tasks were stopped")
            return Cancelled(message="cancelled: its tasks were stopped")
    return run


def cancel_requested() -> bool:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    return state is not None and (state.is_cancelling() or state.is_cancelled())


@flow(name="retrain", persist_result=False, validate_parameters=True)
@ends_cancelled_when_its_tasks_are
def retrain(request: RetrainRequest) -> State:
    spec, registry, stages = request.pipeline, ModelRegistry(request.registry_dir), Stopwatch()
    if request.kind != "train":  # unlabelled rows to score, or late labels (flows.production)
        return decision_state(run_production(request, stages))
    # This run may switch `current` until the service releases the lease or a later run
    # takes it (see ModelRegistry.take_lease).
    lease = str(flow_run.id or uuid.uuid4())
    registry.take_lease(lease)
    plan = RunPlan.of(request)
    schema = plan.resolve_schema(spec.schema_, registry.latest())
    stages.lap("schema")
    if schema is None:
        return finish(plan, stages, "no_valid_data", "no file of this batch could be read; see each file's reason"
                      if plan.new_files else "nothing to train on: the training window holds no data yet")

    preprocess(plan, schema, request)
    stages.lap("preprocess")
    if not plan.has_new_data() and not (request.requested_by and plan.parquet_paths()):
        return finish(plan, stages, "no_valid_data", "every file of this batch was rejected; see each file's reason"
                      if plan.new_files else "the training window holds no usable data")

    champion = registry.current()
    note = monitor(plan, champion, schema, request)
    stages.lap("monitor")
    plan.policy = decide_policy(spec, champion, plan.live, plan.drift, note, plan.new_rows(),
                                request.rows_since_champion, request.requested_by, production=request.production)
    get_run_logger().info("policy: %s (%s)", plan.policy.reason, ", ".join(plan.policy.triggers) or "no trigger")
    if not plan.policy.retrain:
        return finish(plan, stages, "kept", plan.policy.reason)

    window = Window(plan.parquet_paths(), schema)
    staged = str(registry.staging_path(f"candidate-{flow_run.id or uuid.uuid4()}"))
    try:
        trained, evaluation, reference = train_and_evaluate(window, champion, staged, request, stages,
                                                            plan.new_parquet_paths())
    except TrainingError as exc:
        get_run_logger().warning("not trained: %s", exc)
        return finish(plan, stages, "not_trained", str(exc))

    record = version_record(plan, request, schema, trained, evaluation, flow_run.id, reference)
    version = register_version(registry, trained.model_path, record).version
    stages.lap("register")
    decision, reason = deploy_if_better(registry, version, window, evaluation, spec, lease)
    stages.lap("deploy")
    if decision == "no_signal":
        plan.set_aside_new_files(no_signal_rejection(evaluation))
    publish_history(registry, spec.evaluation.threshold)
    return finish(plan, stages, decision, reason, version=version, evaluation=evaluation, trained=trained)


# -- the steps' orchestration, each named after what it does ----------------------------------

def preprocess(plan: RunPlan, schema: ResolvedSchema, request: RetrainRequest) -> None:
    """Preprocess every partition the cache does not hold yet, one task per group."""
    fraction = request.pipeline.evaluation.holdout_fraction
    groups = plan.plan_work(request.pipeline.preprocess.rows_per_partition, schema, request.cache_dir, fraction)
    futures = preprocess_partitions_task.map(groups, unmapped(schema), unmapped(request.cache_dir),
                                             unmapped(fraction))
    plan.add_summaries(gather_with_progress(futures, groups, plan.cached, plan.partitions))
    log_preprocessing(plan, schema)


def monitor(plan: RunPlan, champion: ModelVersion | None, schema: ResolvedSchema,
            request: RetrainRequest) -> str:
    """Score the champion on every row it has never seen (``plan.live``) and measure their
    drift (``plan.drift``); returns a note when the champion cannot score them."""
    file_ids, paths = plan.monitored()
    if champion is None or not paths:
        return ""
    plan.live, plan.drift, note = monitor_task.submit(
        champion, file_ids, paths, schema, request.pipeline, request.registry_dir, request.cache_dir).result()
    logger = get_run_logger()
    if note:
        logger.warning(note)
    if plan.live is not None:
        logger.info("live %s of %s: %s on %d new rows (%s)", plan.live.metric, champion.version,
                    "n/a" if plan.live.value is None else f"{plan.live.value:.4f}", plan.live.rows,
                    "judged" if plan.live.enough else "too few rows to judge; scored again with the next batches")
    if plan.drift is not None and plan.drift.scores:
        logger.info("drift (%s), largest: %s", plan.drift.statistic,
                    ", ".join(f"{k} {v:.3f}" for k, v in list(plan.drift.scores.items())[:3]))
    return note


def train_and_evaluate(window: Window, champion: ModelVersion | None, staged: str, request: RetrainRequest,
                       stages: "Stopwatch", new_paths: list[str] | None = None
                       ) -> tuple[TrainResult, EvaluationResult, dict[str, Any] | None]:
    """Train the candidate (the best of a search) into files named after ``staged`` (while
    another task takes the reference statistics of the same rows), then score it and the
    champion on the same holdout rows. Raises TrainingError when the window cannot be
    trained on."""
    progress.report("train", 0, 1)
    pipeline = request.pipeline
    reference = reference_task.submit(window)
    trained = train_models(window, pipeline.model, staged, pipeline.evaluation.metric_for(window.schema.task),
                           champion.lineage.get("training", {}).get("candidates") if champion else None)
    stages.lap("train")
    evaluation = evaluate_task.submit(trained, champion, window, request.pipeline, request.registry_dir,
                                      request.cache_dir, new_paths).result()
    stages.lap("evaluate")
    try:
        return trained, evaluation, reference.result()
    except Exception as exc:  # without them only the drift of later batches is missing
        get_run_logger().warning("reference statistics not taken, later batches get no drift: %s", exc)
        return trained, evaluation, None


def train_models(window: Window, spec: ModelSpec, staged: str, metric: str,
                 previous: list[dict[str, Any]] | None = None) -> TrainResult:
    """The one model, or with a search the best candidate (flows.training.search) trained
    on every training row. The candidates are cross-validated as Dask tasks of their own, at
    once as far as the cluster's threads go: XGBoost as its own task, which trains across
    the cluster; scikit-learn ones longest first (by ``previous``, the champion's recorded
    candidates), each started when a thread is free, none after ``spec.search_seconds``.
    (Dask places a task on a worker when it is submitted: four candidates on two
    single-threaded workers would wait two behind each worker, however long the first ones
    take, while the other worker may sit idle.)"""
    specs = spec.candidate_specs()
    if not spec.candidates:
        return train_one(window, specs[0], staged_path(staged, 0))
    started = time.monotonic()
    futures = {i: train_xgboost_task.submit(window, s, staged_path(staged, i), True)
               for i, s in enumerate(specs) if s.distributed}
    # No worker yet (an adaptive cluster at its minimum of 0): every candidate at once, which
    # is what makes it grow.
    threads = sum(get_run_context().task_runner.client.nthreads().values()) or len(specs)
    running: dict[int, Any] = {}
    skipped: dict[int, TrainingError] = {}
    for i in start_order(specs, [i for i, s in enumerate(specs) if not s.distributed], previous):
        if len(running) >= threads:
            done = next(as_completed(list(running.values())))
            try:
                done.result()
            except CancelledError:
                raise  # the run was cancelled: start no more
            except Exception:  # a failed candidate: recorded below
                pass
            running = {k: f for k, f in running.items() if f is not done}
        # The budget holds back the candidates past the first wave (one per thread).
        spent = time.monotonic() - started
        if len(futures) >= threads and spent > spec.search_seconds:
            skipped[i] = TrainingError(f"not tried: the search had run {spent:.0f} s, past "
                                       f"model.search_seconds = {spec.search_seconds:g}")
            continue
        running[i] = futures[i] = cross_validate_task.submit(window, specs[i])
    results: list[CandidateScore | TrainResult | BaseException] = []
    for i in range(len(specs)):
        try:
            results.append(skipped[i] if i in skipped else futures[i].result())
        except CancelledError:
            raise  # the run was cancelled: not a failed candidate
        except Exception as exc:  # a candidate that fails is recorded; the search goes on
            results.append(exc)
    best, scores = choose(specs, results, metric)
    trained = train_one(window, specs[best], staged_path(staged, best))
    return trained.model_copy(update={"candidates": scores, "validation": scores[best].validation,
                                      "validation_rows": scores[best].validation_rows})


def train_one(window: Window, spec: ModelSpec, path: str) -> TrainResult:
    """``spec`` trained on every training row of the window (XGBoost across the cluster)."""
    if spec.distributed:
        return train_xgboost_task.submit(window, spec, path, False).result()
    return train_candidate_task.submit(window, spec, path).result()


def register_version(registry: ModelRegistry, staged: str, record: dict[str, Any]) -> ModelVersion:
    """Register the candidate as the next version, with the data files it was trained on as
    upstream assets. (This run holds the registry's lease: no other run registers now.)"""
    version = registry.next_version()
    return register_candidate_task.with_options(
        assets=[model_asset(registry.root, version)],
        asset_deps=[data_asset(f) for f in record["lineage"]["files"]],
    ).submit(registry.root.as_posix(), staged, record, version).result()


def deploy_if_better(registry: ModelRegistry, version: str, window: Window, evaluation: EvaluationResult,
                     spec: PipelineSpec, lease: str) -> tuple[str, str]:
    """(decision, reason): deploy when the gate says so, with retries and exponential
    backoff (each attempt rolls itself back), and record the decision on the version."""
    logger = get_run_logger()
    logger.info("candidate %s: %s", version, evaluation.reason)
    decision, reason = ("no_signal" if evaluation.no_signal else "rejected"), evaluation.reason
    if evaluation.deploy:
        deploy = deploy_task.with_options(
            retries=spec.deploy.retries,
            retry_delay_seconds=exponential_backoff(spec.deploy.retry_delay_seconds),
            assets=[model_asset(registry.root, "current")], asset_deps=[model_asset(registry.root, version)],
        )
        previous = registry.current_version()
        try:
            deploy.submit(registry.root.as_posix(), version, window, evaluation, spec, lease, previous).result()
            decision = "deployed"
        except CancelledError:
            raise  # the run was cancelled: not a failed deploy
        except Exception as exc:  # each attempt rolled itself back, unless its end was lost
            decision = "deploy_failed"
            reason = (f"deploy of {version} failed after {spec.deploy.retries + 1} attempts; "
                      f"{undo_switch(registry, version, previous)}: {exc}")
            logger.error(reason)
    registry.update(version, decision=decision, reason=reason)
    return decision, reason


def no_signal_rejection(evaluation: EvaluationResult) -> Rejection:
    """Why the files of a batch with nothing to learn are set aside, with the numbers."""
    signal = evaluation.signal
    return Rejection(reason=f"no signal: {signal.reason if signal else evaluation.reason}",
                     hint="set aside, not trained on: check this file's labels; `retrain requeue NAME` takes it "
                          "back, to be judged again with the next batches",
                     details={"signal": signal.model_dump(mode="json") if signal else None})


def gather_with_progress(futures, groups: list[list[PartitionPlan]], done: int,
                         total: int) -> list[PartitionSummary]:
    """The summaries of every group, reporting each group as it finishes (``done`` of
    ``total`` partitions were already known from the cache)."""
    progress.report("preprocess", done, total)
    sizes = {id(f): len(g) for f, g in zip(futures, groups)}
    summaries: list[PartitionSummary] = []
    for future in as_completed(futures):
        summaries.extend(future.result())
        done += sizes[id(future)]
        progress.report("preprocess", done, total)
    return summaries


def log_preprocessing(plan: RunPlan, schema: ResolvedSchema) -> None:
    logger = get_run_logger()
    if schema.ignored:
        logger.warning("columns %s look like identifiers and are not used as features "
                       "(set schema.drop or schema.features to decide)", ", ".join(schema.ignored))
    logger.info("preprocessed %d partitions (%d from cache) of %d files", plan.partitions,
                plan.cached, len(plan.usable()))
    for ref in plan.window_files:
        if ref.file_id in plan.skipped:
            logger.warning("window file %s (file %d) no longer fits the schema and is left out: %s",
                           ref.name, ref.file_id, plan.skipped[ref.file_id].reason)


def finish(plan: RunPlan, stages: "Stopwatch", decision: str, reason: str, *, version: str | None = None,
           evaluation: EvaluationResult | None = None, trained: TrainResult | None = None) -> State:
    """The run's summary artifact, and its final state: the outcome for the service as its
    result, the decision as its name."""
    outcome = plan.outcome(flow_run_id=str(flow_run.id) if flow_run.id else None, decision=decision,
                           reason=reason, stage_seconds=stages.seconds, version=version,
                           evaluation=evaluation, trained=trained)
    get_run_logger().info("decision: %s (%s) in %.1fs", decision, reason, stages.total())
    publish_summary(outcome, evaluation, trained)
    publish_monitoring(outcome)
    return decision_state(outcome)


def decision_state(outcome: RunOutcome) -> State:
    """Completed named after the decision (``Deployed``, ``Rejected``, ``Kept``,
    ``NoValidData``...) with its reason as message; a deploy that failed and was rolled back
    is Failed (``DeployFailed``): an operator has something to fix."""
    name = "".join(word.capitalize() for word in outcome.decision.split("_"))
    end = Failed if outcome.decision == "deploy_failed" else Completed
    return end(name=name, message=outcome.reason, data=outcome)


class Stopwatch:
    """Wall time per stage: each ``lap`` records the time since the previous one, and
    tells progress listeners that the stage is done."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 3)
        self._last = now
        if stage not in ("schema", "preprocess"):  # preprocessing reports each group itself
            progress.report(stage, 1, 1)

    def total(self) -> float:
        return time.perf_counter() - self._started


# -- lineage: Prefect assets ------------------------------------------------------------------

def model_asset(registry_dir: str | Path, version: str) -> Asset:
    """A model version of a registry (``current``: whichever version is deployed), so that a
    deployed model and a rejected candidate are different assets."""
    registry = Path(registry_dir).resolve().as_posix()
    return Asset(key=f"retrain://models{registry}/{version}",
                 properties=AssetProperties(name=f"retrain model {version}", description=f"registry at {registry}"))


def data_asset(file: dict[str, Any]) -> Asset:
    """Data files are named by content: the same bytes are the same asset, whatever the name."""
    return Asset(key=f"retrain://data/{file['sha256']}",
                 properties=AssetProperties(name=file["name"], description=f"{file['rows']} rows"))


def materialized_assets() -> list[Asset]:
    from prefect.context import AssetContext

    context = AssetContext.get()
    return list(context.downstream_assets) if context else []
