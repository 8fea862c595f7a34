"""The run plan: what one run works on, and what became of each file. Plain code, no
Prefect: the flow calls it between its steps, and it is unit-tested on its own.

Everything is keyed by file id (two files may share a name: "the same name with new
content is a new file"). A new file that cannot be used is *rejected* (the service
quarantines it); a window file (accepted by an earlier run) that no longer fits is only
*skipped* by this run. A file is usable only when every one of its partitions is.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from typing import Any

from core.errors import InvalidDataError
from core.records import (
    DriftReport,
    EvaluationResult,
    FileOutcome,
    FileRef,
    LiveMetric,
    ModelVersion,
    PartitionPlan,
    PartitionSummary,
    PolicyDecision,
    Rejection,
    ResolvedSchema,
    RetrainRequest,
    RunOutcome,
    TrainResult,
)
from flows.data.preprocess import cached_summary, plan_partitions, read_sample
from flows.data.schema import resolve_schema

# A task costs tens of milliseconds of orchestration: small partitions (small files) are
# grouped so that each task has at least this much to read.
TASK_BYTES = 8 * 1024 * 1024


def rejection_of(exc: InvalidDataError) -> Rejection:
    return Rejection(reason=str(exc), hint=exc.hint, details=exc.details)


@dataclass
class RunPlan:
    new_files: list[FileRef]
    window_files: list[FileRef]  # accepted by earlier runs, oldest first
    rejected: dict[int, Rejection] = field(default_factory=dict)  # new files, by id
    skipped: dict[int, Rejection] = field(default_factory=dict)  # window files, by id
    # Archived files of earlier small batches the champion has not been scored on yet
    # (policy.min_live_rows): monitored with this batch, whether in the window or not.
    unscored_files: list[FileRef] = field(default_factory=list)
    summaries: dict[int, list[PartitionSummary]] = field(default_factory=dict)
    partitions: int = 0  # planned partitions of the files not rejected
    cached: int = 0  # of which already in the cache
    # What the monitor found and what the policy made of it (None until they ran).
    live: LiveMetric | None = None
    drift: DriftReport | None = None
    policy: PolicyDecision | None = None
    requested_by: str | None = None

    @classmethod
    def of(cls, request: RetrainRequest) -> "RunPlan":
        return cls(new_files=list(request.new_files), window_files=list(request.window_files),
                   unscored_files=list(request.unscored_files), requested_by=request.requested_by)

    @property
    def files(self) -> list[FileRef]:
        """Every file the run trains on, in window order: the window, then the new files."""
        return [*self.window_files, *self.new_files]

    @property
    def monitored_files(self) -> list[FileRef]:
        """The files whose rows the champion has never seen: earlier small batches carried
        over, then this batch's."""
        new = {ref.file_id for ref in self.new_files}
        return [*(ref for ref in self.unscored_files if ref.file_id not in new), *self.new_files]

    def _all_files(self) -> list[FileRef]:
        """What the run reads: the window and new files, and carried files outside the window."""
        known = {ref.file_id for ref in self.files}
        return [*(ref for ref in self.unscored_files if ref.file_id not in known), *self.files]

    def is_new(self, file_id: int) -> bool:
        return any(ref.file_id == file_id for ref in self.new_files)

    def refuse(self, file_id: int, rejection: Rejection) -> None:
        """A file cannot be used: a new one is rejected, a window one skipped (the first
        reason is kept)."""
        (self.rejected if self.is_new(file_id) else self.skipped).setdefault(file_id, rejection)

    def refused(self, file_id: int) -> bool:
        return file_id in self.rejected or file_id in self.skipped

    # -- schema and partitions ------------------------------------------------------------
    def resolve_schema(self, spec, latest: ModelVersion | None) -> ResolvedSchema | None:
        """The schema of this run. Once a model was trained, its resolved schema is kept
        for as long as the configured schema is unchanged, so every later file is held to
        the same columns and types; only the first run (or a changed config) infers it from
        a new file. New files that cannot even be sampled are rejected here."""
        if latest is not None and "schema" in latest.lineage and \
                latest.lineage.get("config", {}).get("schema") == spec.model_dump(by_alias=True):
            return ResolvedSchema.model_validate(latest.lineage["schema"])
        for ref in self.new_files:
            try:
                return resolve_schema(spec, read_sample(ref.path, name=ref.name), ref.name)
            except InvalidDataError as exc:
                self.refuse(ref.file_id, rejection_of(exc))
        return None

    def plan_work(self, rows_per_partition: int, schema: ResolvedSchema, cache_dir: str,
                  holdout_fraction: float) -> list[list[PartitionPlan]]:
        """Cut every usable file into partitions; partitions already in the cache are known
        from their parquet footers here and recorded at once, so only the others become
        tasks, in groups of about TASK_BYTES. Files that cannot be cut are refused."""
        plans: list[PartitionPlan] = []
        for ref in self._all_files():
            if self.refused(ref.file_id):
                continue
            try:
                plans.extend(plan_partitions(ref, rows_per_partition))
            except InvalidDataError as exc:
                self.refuse(ref.file_id, rejection_of(exc))
        self.partitions = len(plans)
        to_preprocess = []
        for plan in plans:
            hit = cached_summary(plan, schema, cache_dir, holdout_fraction)
            if hit is None:
                to_preprocess.append(plan)
            else:
                self.add_summaries([hit])
        self.cached = self.partitions - len(to_preprocess)
        return group_plans(to_preprocess)

    def add_summaries(self, summaries: list[PartitionSummary]) -> None:
        for summary in summaries:
            self.summaries.setdefault(summary.file_id, []).append(summary)
            if summary.rejection is not None:
                self.refuse(summary.file_id, summary.rejection)

    # -- what the run trains on -----------------------------------------------------------
    def usable(self, files: list[FileRef] | None = None) -> dict[int, list[PartitionSummary]]:
        """Partitions of the usable files (of the window, unless ``files`` is given), by file
        id in window order, partitions in order."""
        return {ref.file_id: sorted(self.summaries[ref.file_id], key=lambda s: s.index)
                for ref in (self.files if files is None else files)
                if not self.refused(ref.file_id) and ref.file_id in self.summaries}

    def parquet_paths(self) -> list[str]:
        """The window's partitions in window order: what training and evaluation read."""
        return [s.parquet_path for parts in self.usable().values() for s in parts if s.parquet_path]

    def new_parquet_paths(self) -> list[str]:
        """The partitions of this batch's usable new files."""
        return [s.parquet_path for parts in self.usable(self.new_files).values() for s in parts if s.parquet_path]

    def set_aside_new_files(self, rejection: Rejection) -> None:
        """The batch carried nothing to learn: its usable new files are refused (the service
        quarantines them with ``rejection``, out of every later window, for an operator to
        decide)."""
        for file_id in self.usable(self.new_files):
            self.rejected.setdefault(file_id, rejection)

    def has_new_data(self) -> bool:
        usable = self.usable()
        return any(ref.file_id in usable for ref in self.new_files)

    # -- what the monitor scores ------------------------------------------------------------
    def monitored(self) -> tuple[list[int], list[str]]:
        """(file ids, partitions) of the usable files the champion has never seen."""
        usable = self.usable(self.monitored_files)
        return list(usable), [s.parquet_path for parts in usable.values() for s in parts if s.parquet_path]

    def new_rows(self) -> int:
        """Rows of this batch's usable new files."""
        usable = self.usable(self.new_files)
        return sum(p.rows for parts in usable.values() for p in parts)

    def unscored_file_ids(self, decision: str) -> list[int]:
        """The files no live metric judged yet, for the next run to score: none once a new
        model is deployed (it was trained on them) or when there is no champion to judge.
        A run that stopped before its monitor carries the files it was given."""
        if decision == "deployed":
            return []
        if self.policy is None:
            return [ref.file_id for ref in self.unscored_files]
        if self.live is None or self.live.enough:
            return []
        return self.live.file_ids

    # -- records ----------------------------------------------------------------------------
    def lineage(self) -> list[dict[str, Any]]:
        """The files a model is trained on, for its version metadata and its data assets."""
        usable = self.usable()
        return [{"file_id": ref.file_id, "name": ref.name, "sha256": ref.sha256,
                 "rows": sum(p.rows for p in usable[ref.file_id]),
                 "rejected_rows": sum(p.rejected_rows for p in usable[ref.file_id]),
                 "holdout_rows": sum(p.holdout_rows for p in usable[ref.file_id]),
                 "new": self.is_new(ref.file_id),
                 # A file the service made of scored rows and their late labels: where they came from.
                 **({"origin": ref.origin} if ref.origin else {})}
                for ref in self.files if ref.file_id in usable]

    def outcome(self, *, flow_run_id: str | None, decision: str, reason: str, stage_seconds: dict[str, float],
                version: str | None = None, evaluation: EvaluationResult | None = None,
                trained: TrainResult | None = None) -> RunOutcome:
        files = []
        for ref in self.new_files:
            parts = self.summaries.get(ref.file_id, [])
            files.append(FileOutcome(
                file_id=ref.file_id, name=ref.name, accepted=ref.file_id not in self.rejected,
                rows=sum(p.rows for p in parts), rejected_rows=sum(p.rejected_rows for p in parts),
                rejection=self.rejected.get(ref.file_id)))
        return RunOutcome(
            flow_run_id=flow_run_id, decision=decision, reason=reason, files=files, model_version=version,
            metric=evaluation.metric if evaluation else (self.live.metric if self.live else None),
            candidate_metrics=evaluation.candidate if evaluation else None,
            champion_metrics=evaluation.champion if evaluation else None,
            train_rows=trained.train_rows if trained else 0,
            holdout_rows=evaluation.holdout_rows if evaluation else 0,
            window_files=len(self.usable()), stage_seconds=stage_seconds,
            # Carried files' partitions are kept too: the next run scores them.
            window_partitions=[*self.parquet_paths(), *self.monitored()[1]],
            live=self.live, drift=self.drift, policy=self.policy,
            comparison=evaluation.comparison if evaluation else None,
            unscored_file_ids=self.unscored_file_ids(decision), requested_by=self.requested_by)


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


def version_record(plan: RunPlan, request: RetrainRequest, schema: ResolvedSchema, trained: TrainResult,
                     evaluation: EvaluationResult, flow_run_id: str | None,
                     reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of a new version: its metrics, and its lineage (which data, which config,
    which code)."""
    return {
        "flow_run_id": flow_run_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_sha256": trained.model_sha256,
        "metrics": evaluation.candidate,
        "champion_metrics": evaluation.champion,
        "lineage": {
            "metric": evaluation.metric,
            "evaluation": evaluation.model_dump(),
            "training": trained.model_dump(exclude={"model_path"}),
            "schema": schema.model_dump(),
            "files": plan.lineage(),
            # Statistics of the training rows, that later batches' drift is measured against.
            "reference": reference,
            "config": request.pipeline.model_dump(by_alias=True),
            "libraries": library_versions(),
        },
    }


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("scikit-learn", "pandas", "numpy", "pyarrow", "skops", "prefect", "dask", "xgboost"):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return versions
