"""The run plan on its own, without Prefect or Dask: identity by file id, rejections and
skipped window files, the window's order."""

from __future__ import annotations

from pathlib import Path

from core.files import sha256_file
from core.records import FileRef, ResolvedSchema, RetrainRequest
from core.specs import PipelineSpec, SchemaSpec
from flows.data.plan import RunPlan, group_plans
from flows.data.preprocess import preprocess_partition
from service.sample import sample_frame

SCHEMA = ResolvedSchema(target="churned", task="classification",
                        numeric=["age", "income", "tenure_months", "usage_hours", "support_calls"],
                        categorical=["plan", "region"], max_bad_row_fraction=0.05)


def ref(path: Path, file_id: int, name: str | None = None) -> FileRef:
    return FileRef(file_id=file_id, name=name or path.name, path=str(path), sha256=sha256_file(path),
                   size=path.stat().st_size)


def csv(folder: Path, name: str, seed: int, rows: int = 300, broken: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame = sample_frame(rows, seed)
    if broken:  # a numeric column that is text on every row: the file no longer fits
        frame["age"] = "unknown"
    path = folder / name
    frame.to_csv(path, index=False)
    return path


def run_plan(tmp_path: Path, window: list[FileRef], new: list[FileRef], unscored: list[FileRef] = ()) -> RunPlan:
    request = RetrainRequest(new_files=new, window_files=window, pipeline=PipelineSpec(),
                             registry_dir=str(tmp_path / "registry"), cache_dir=str(tmp_path / "cache"),
                             unscored_files=list(unscored))
    plan = RunPlan.of(request)
    for group in plan.plan_work(200_000, SCHEMA, request.cache_dir, 0.2):
        plan.add_summaries([preprocess_partition(p, SCHEMA, request.cache_dir, 0.2) for p in group])
    return plan


def test_two_window_files_with_one_name_are_told_apart_by_id(tmp_path: Path) -> None:
    # Two archived files named alike (allowed: same name, new content); one stops fitting.
    good = ref(csv(tmp_path / "a", "data.csv", seed=1), file_id=1)
    bad = ref(csv(tmp_path / "b", "data.csv", seed=2, broken=True), file_id=2)
    new = ref(csv(tmp_path / "c", "new.csv", seed=3), file_id=3)
    plan = run_plan(tmp_path, [good, bad], [new])
    assert set(plan.skipped) == {2} and plan.rejected == {}
    assert list(plan.usable()) == [1, 3]  # the other file of that name stays in the window
    assert "age" in plan.skipped[2].reason
    assert [f["file_id"] for f in plan.lineage()] == [1, 3]
    outcome = plan.outcome(flow_run_id=None, decision="rejected", reason="x", stage_seconds={})
    assert [(f.file_id, f.accepted) for f in outcome.files] == [(3, True)] and outcome.window_files == 2


def test_a_bad_new_file_is_rejected_with_its_reason_and_the_rest_is_used(tmp_path: Path) -> None:
    good = ref(csv(tmp_path / "a", "good.csv", seed=1), file_id=1)
    bad = ref(csv(tmp_path / "b", "good.csv", seed=4, broken=True), file_id=2)
    empty_path = tmp_path / "c" / "empty.csv"
    empty_path.parent.mkdir()
    empty_path.write_text("")
    empty = ref(empty_path, file_id=3)
    plan = run_plan(tmp_path, [], [good, bad, empty])
    assert set(plan.rejected) == {2, 3} and plan.has_new_data()
    assert "empty" in plan.rejected[3].reason
    outcome = plan.outcome(flow_run_id=None, decision="deployed", reason="x", stage_seconds={})
    assert [f.accepted for f in outcome.files] == [True, False, False]
    assert outcome.files[1].rejection == plan.rejected[2]


def test_cached_partitions_are_recorded_without_tasks(tmp_path: Path) -> None:
    files = [ref(csv(tmp_path / "d", f"f{i}.csv", seed=i), file_id=i) for i in (1, 2)]
    first = run_plan(tmp_path, [], files)
    assert first.cached == 0 and first.partitions == 2
    request = RetrainRequest(new_files=files[1:], window_files=files[:1], pipeline=PipelineSpec(),
                             registry_dir=str(tmp_path / "registry"), cache_dir=str(tmp_path / "cache"))
    again = RunPlan.of(request)
    assert again.plan_work(200_000, SCHEMA, request.cache_dir, 0.2) == []
    assert again.cached == 2 and again.parquet_paths() == first.parquet_paths()


def test_schema_comes_from_the_latest_model_while_the_config_is_unchanged(tmp_path: Path) -> None:
    from core.records import ModelVersion

    new = ref(csv(tmp_path / "a", "x.csv", seed=1), file_id=1)
    plan = RunPlan(new_files=[new], window_files=[])
    spec = SchemaSpec(drop=["customer_id"])
    inferred = plan.resolve_schema(spec, None)
    assert inferred is not None and "plan" in inferred.categorical
    kept = SCHEMA.model_copy(update={"categorical": ["plan"], "numeric": SCHEMA.numeric + ["region"]})
    latest = ModelVersion(version="v0001", path="", created_at="", model_sha256="",
                          metadata={"schema": kept.model_dump(), "config": {"schema": spec.model_dump(by_alias=True)}})
    assert plan.resolve_schema(spec, latest) == kept
    changed = SchemaSpec(drop=["customer_id", "region"])
    assert plan.resolve_schema(changed, latest) != kept


def test_groups_hold_small_partitions_together(tmp_path: Path) -> None:
    from flows.data.preprocess import plan_partitions

    files = [ref(csv(tmp_path, f"g{i}.csv", seed=i, rows=50), file_id=i) for i in range(5)]
    plans = [p for f in files for p in plan_partitions(f, 200_000)]
    assert group_plans(plans) == [plans]
    assert [len(g) for g in group_plans(plans, task_bytes=1)] == [1] * 5


def test_small_batches_carried_over_are_monitored_not_trained_on_outside_the_window(tmp_path: Path) -> None:
    from core.records import LiveMetric, PolicyDecision

    carried = ref(csv(tmp_path / "a", "small.csv", seed=1, rows=120), file_id=1)
    in_window = ref(csv(tmp_path / "b", "window.csv", seed=2), file_id=2)
    new = ref(csv(tmp_path / "c", "new.csv", seed=3), file_id=3)
    plan = run_plan(tmp_path, [in_window], [new], unscored=[carried, in_window])
    file_ids, paths = plan.monitored()
    assert file_ids == [1, 2, 3] and len(paths) == 3  # preprocessed although outside the window
    assert list(plan.usable()) == [2, 3] and len(plan.parquet_paths()) == 2  # trained on: the window
    assert plan.new_rows() == 300
    # Not judged yet (too few rows): carried again; judged, or a new model deployed: done.
    plan.policy = PolicyDecision(retrain=False, reason="kept")
    plan.live = LiveMetric(version="v0001", metric="roc_auc", value=0.8, rows=720, metrics={},
                           file_ids=file_ids, enough=False)
    assert plan.unscored_file_ids("kept") == [1, 2, 3] and plan.unscored_file_ids("deployed") == []
    plan.live = plan.live.model_copy(update={"enough": True})
    assert plan.unscored_file_ids("kept") == []
    stopped = run_plan(tmp_path, [], [new], unscored=[carried])  # no monitor ran (no valid data...)
    assert stopped.unscored_file_ids("no_valid_data") == [1]
    outcome = plan.outcome(flow_run_id=None, decision="kept", reason="x", stage_seconds={})
    assert set(paths) <= set(outcome.window_partitions)  # retention keeps what the next run scores
