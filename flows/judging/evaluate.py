"""Evaluation: score candidate and champion on the same holdout rows, compare them row by
row (``flows.judging.compare``); the gate."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core.errors import RegistryIntegrityError, TrainingError, first_line
from core.records import (
    EvaluationResult,
    ModelVersion,
    PairedComparison,
    ResolvedSchema,
    SignalCheck,
    SliceComparison,
    TrainResult,
)
from core.specs import METRICS, EvaluationSpec
from flows.data.window import Window, model_threads
from flows.judging.compare import paired_comparison, row_statistics
from flows.judging.gate import (
    Scored,
    check_signal,
    compare_parts,
    holdout_parts,
    judge_champion,
    refusing_part,
)
from flows.models.modelfile import ModelFile
from flows.models.registry import ModelRegistry
from flows.models.scoring import (
    check_score,
    classes_of,
    loaded,
    metrics,
    prune_outputs,
    window_outputs,
)


def decide(candidate: dict[str, float], champion: dict[str, float] | None,
           spec: EvaluationSpec, task: str, holdout_rows: int,
           champion_version: str | None = None, comparison: PairedComparison | None = None,
           parts: list[SliceComparison] | None = None, signal: SignalCheck | None = None) -> EvaluationResult:
    """The gate: deploy when the candidate meets the threshold AND shows against the champion
    what ``spec.must_show`` asks, judged on the paired ``comparison`` when there is one (on
    the point difference and the margin otherwise), on the whole holdout and on its
    ``parts`` (``flows.judging.gate``); never when the new rows carry nothing to learn
    (``signal``). Lower is better for rmse and mae."""
    metric = spec.metric_for(task)
    higher = METRICS[metric][1]
    value = candidate.get(metric, float("nan"))
    if math.isnan(value):
        passed = False
        why_threshold = f"{metric} could not be computed on the holdout"
    else:
        passed = value >= spec.threshold if higher else value <= spec.threshold
        op = (">=" if passed else "<") if higher else ("<=" if passed else ">")
        why_threshold = f"{metric} {value:.4f} {op} threshold {spec.threshold:.4f}"
    champ_value = (champion or {}).get(metric)
    margin = spec.margin(metric, champ_value)
    if champ_value is None or math.isnan(champ_value):
        not_worse = True
        why_champion = "no champion to compare with" if champion_version is None else \
            f"champion {champion_version} has no {metric}"
    elif comparison is not None and not math.isnan(comparison.low):
        not_worse, why_champion = judge_champion(comparison, spec, higher, value, champ_value, champion_version,
                                                 margin)
        refusal = refusing_part(parts or [], margin) if not_worse else None
        if refusal is not None:
            not_worse, why_champion = False, f"{why_champion}, but {refusal}"
    else:
        not_worse, why_champion = _judge_point(metric, higher, value, champ_value, champion_version, margin)
    no_signal = signal is not None and signal.verdict == "no_signal"
    deploy = passed and not_worse and not no_signal
    if no_signal:
        reason = f"not deployed, no signal: {signal.reason}; {champion_version} stays deployed"
    elif deploy:
        reason = f"deploy: {why_threshold} and {why_champion}"
    elif not passed:
        reason = f"not deployed: {why_threshold}"
    else:
        reason = f"not deployed: {why_champion}"
    if signal is not None and not no_signal:
        reason += f"; {signal.reason}"
    return EvaluationResult(
        metric=metric, greater_is_better=higher, threshold=spec.threshold, tolerance=margin,
        holdout_rows=holdout_rows, candidate=candidate, champion=champion,
        champion_version=champion_version, passed_threshold=passed, not_worse_than_champion=not_worse,
        deploy=deploy, reason=reason, comparison=comparison, slices=parts or [], signal=signal,
        no_signal=no_signal,
    )


def _judge_point(metric: str, higher: bool, value: float, champ_value: float, champion_version: str | None,
                 margin: float) -> tuple[bool, str]:
    """Without an interval (the metric has no per-row form): the point difference."""
    bound = champ_value - margin if higher else champ_value + margin
    not_worse = value >= bound - 1e-12 if higher else value <= bound + 1e-12
    op = (">=" if not_worse else "<") if higher else ("<=" if not_worse else ">")
    sign = "-" if higher else "+"
    why = f"{metric} {value:.4f} {op} champion {champion_version} {champ_value:.4f} {sign} margin {margin:.4f}"
    return not_worse, why if not_worse else f"worse than the champion, {why}"


def evaluate_against_champion(candidate: TrainResult, champion: ModelVersion | None, window: Window,
                              spec: EvaluationSpec, registry: ModelRegistry, trusted_types: list[str],
                              check_rows: int = 1000, threads: int = 0,
                              outputs_dir: str | None = None, new_paths: list[str] | None = None
                              ) -> EvaluationResult:
    """Score candidate and champion on the same holdout rows of the window, one partition
    at a time (on the cluster's workers when there is one), compare them row by row, and
    decide, on the whole holdout and on its parts (the rows of ``new_paths``, the new files'
    partitions, and the others; the slices). Both models are loaded hash-checked; with
    ``outputs_dir`` their outputs per partition are kept there, under their sha256, so a
    champion only scores partitions new since it was a candidate."""
    schema = window.schema
    new = ModelFile(candidate.model_path, candidate.model_sha256, "the candidate")
    old, note = _champion_file(champion, registry, trusted_types)
    try:
        models = [new] if old is None else [new, old]
        y, outputs = window_outputs(window, models, trusted_types, outputs_dir=outputs_dir, threads=threads)
    except (KeyError, ValueError) as exc:
        if old is None:
            raise
        # Only the champion can fail on rows the candidate was trained on (another schema).
        old, note = None, f" (champion {champion.version} cannot score this window: {first_line(exc)})"
        models = [new]
        y, outputs = window_outputs(window, models, trusted_types, outputs_dir=outputs_dir, threads=threads)
    if len(y) < spec.min_holdout_rows:
        raise TrainingError(f"only {len(y)} holdout rows in the window, fewer than "
                            f"evaluation.min_holdout_rows={spec.min_holdout_rows}; add data")
    if outputs_dir:
        prune_outputs(outputs_dir, {m.key for m in models})
    scores = {m.key: metrics(outputs[m.key], y, schema, classes_of(loaded(m, tuple(trusted_types))))
              for m in models}
    comparison, parts, signal = None, [], None
    if old is not None:
        comparison = _compare(spec, schema, y, outputs, scores, [new, old], trusted_types)
        parts, signal = _judge_parts(spec, window, y, outputs, scores, [new, old], trusted_types,
                                     new_paths or [], champion.version)
    result = decide(scores[new.key], scores[old.key] if old is not None else None, spec, schema.task, len(y),
                    champion.version if old is not None else None, comparison, parts, signal)
    # What the post-deploy check will reproduce from the deployed file: the same call
    # on the same first rows of the holdout.
    first_rows = window.holdout_rows(limit=check_rows)
    with model_threads(threads):
        check_value = check_score(loaded(new, tuple(trusted_types)), first_rows, schema, result.metric,
                                  lambda: scores[new.key].get(result.metric, float("nan")))
    return result.model_copy(update={"reason": result.reason + note, "check_rows": len(first_rows),
                                     "check_value": check_value})


def _compare(spec: EvaluationSpec, schema: ResolvedSchema, y: pd.Series, outputs: dict[str, dict[str, np.ndarray]],
             scores: dict[str, dict[str, float]], models: list[ModelFile],
             trusted_types: list[str]) -> PairedComparison | None:
    """The paired comparison of candidate and champion (``models``), when the gate's metric
    exists for both."""
    metric = spec.metric_for(schema.task)
    new, old = models
    rows = [row_statistics(metric, outputs[m.key], y, schema, classes_of(loaded(m, tuple(trusted_types))))
            for m in models]
    difference = scores[new.key].get(metric, float("nan")) - scores[old.key].get(metric, float("nan"))
    if rows[0] is None or rows[1] is None or math.isnan(difference):
        return None
    found = paired_comparison(metric, difference, rows[0], rows[1], spec.confidence, spec.must_show)
    return found.model_copy(update={"rows": len(y), "margin": spec.margin(metric, scores[old.key].get(metric))})


def _judge_parts(spec: EvaluationSpec, window: Window, y: pd.Series, outputs: dict[str, dict[str, np.ndarray]],
                 scores: dict[str, dict[str, float]], models: list[ModelFile], trusted_types: list[str],
                 new_paths: list[str], champion_version: str) -> tuple[list[SliceComparison], SignalCheck | None]:
    """The comparisons on the new rows, the earlier rows and the slices; and, when the
    champion is near chance on the new rows, whether they carry anything to learn."""
    schema, metric = window.schema, spec.metric_for(window.schema.task)
    counts = window.holdout_counts()
    if sum(counts) != len(y):  # cannot happen with immutable partitions; judge the whole only
        return [], None
    new_set = set(new_paths)
    slice_values = {c: window.holdout_column(c) for c in spec.slices if c in schema.categorical}
    masks = holdout_parts(counts, [p in new_set for p in window.parquet_paths], slice_values)
    new, old = models
    scored = Scored(metric, schema, y, outputs[new.key], outputs[old.key],
                    classes_of(loaded(new, tuple(trusted_types))), classes_of(loaded(old, tuple(trusted_types))),
                    spec)
    higher = METRICS[metric][1]
    margin = spec.margin(metric, scores[old.key].get(metric))
    parts = compare_parts(scored, masks, higher, margin)
    signal = check_signal(scored, masks["new rows"][0], higher, champion_version) if "new rows" in masks else None
    return parts, signal


def _champion_file(champion: ModelVersion | None, registry: ModelRegistry,
                   trusted_types: list[str]) -> tuple[ModelFile | None, str]:
    """(the champion's model file, checked to load; or None and a note why it cannot score)."""
    if champion is None:
        return None, ""
    try:
        model = registry.model_file(champion.version)
        loaded(model, tuple(trusted_types))
        return model, ""
    except (KeyError, ValueError, RegistryIntegrityError) as exc:
        return None, f" (champion {champion.version} cannot score this window: {first_line(exc)})"
