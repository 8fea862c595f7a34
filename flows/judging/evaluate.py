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
    TrainResult,
)
from core.specs import METRICS, EvaluationSpec
from flows.data.window import Window, model_threads
from flows.judging.compare import paired_comparison, row_statistics
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
           champion_version: str | None = None, comparison: PairedComparison | None = None) -> EvaluationResult:
    """The gate: deploy when the candidate meets the threshold AND shows against the champion
    what ``spec.must_show`` asks, judged on the paired ``comparison`` when there is one (on
    the point difference and ``tolerance`` otherwise). Lower is better for rmse and mae."""
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
    if champ_value is None or math.isnan(champ_value):
        not_worse = True
        why_champion = "no champion to compare with" if champion_version is None else \
            f"champion {champion_version} has no {metric}"
    elif comparison is not None and not math.isnan(comparison.low):
        not_worse, why_champion = _judge_interval(comparison, spec, higher, value, champ_value, champion_version)
    else:
        bound = champ_value - spec.tolerance if higher else champ_value + spec.tolerance
        not_worse = value >= bound - 1e-12 if higher else value <= bound + 1e-12
        op = (">=" if not_worse else "<") if higher else ("<=" if not_worse else ">")
        sign = "-" if higher else "+"
        why_champion = (f"{metric} {value:.4f} {op} champion {champion_version} {champ_value:.4f} "
                        f"{sign} tolerance {spec.tolerance:.4f}")
        if not not_worse:
            why_champion = f"worse than the champion, {why_champion}"
    deploy = passed and not_worse
    if deploy:
        reason = f"deploy: {why_threshold} and {why_champion}"
    elif not passed:
        reason = f"not deployed: {why_threshold}"
    else:
        reason = f"not deployed: {why_champion}"
    return EvaluationResult(
        metric=metric, greater_is_better=higher, threshold=spec.threshold, tolerance=spec.tolerance,
        holdout_rows=holdout_rows, candidate=candidate, champion=champion,
        champion_version=champion_version, passed_threshold=passed, not_worse_than_champion=not_worse,
        deploy=deploy, reason=reason, comparison=comparison,
    )


def _judge_interval(comparison: PairedComparison, spec: EvaluationSpec, higher: bool, value: float,
                    champ_value: float, champion_version: str | None) -> tuple[bool, str]:
    """(passes, why): "not_worse" passes unless the whole interval of the improvement lies
    below -tolerance; "better" passes only when it lies wholly above +tolerance."""
    sign = 1.0 if higher else -1.0
    worst, best = sorted((sign * comparison.low, sign * comparison.high))
    tol, confidence = spec.tolerance, f"{comparison.confidence:.0%}"
    if spec.must_show == "not_worse":
        ok = best >= -tol - 1e-12
        verdict = (f"not worse by more than tolerance {tol:.4f}" if ok else
                   f"worse by more than tolerance {tol:.4f} with {confidence} confidence")
    else:
        ok = worst > tol + 1e-12
        verdict = (f"better by more than tolerance {tol:.4f} with {confidence} confidence" if ok else
                   f"not shown better by more than tolerance {tol:.4f} with {confidence} confidence")
    return ok, (f"{comparison.metric} {value:.4f} vs champion {champion_version} {champ_value:.4f}: "
                f"difference {comparison.difference:+.4f} ({confidence} interval {comparison.low:+.4f} "
                f"to {comparison.high:+.4f}), {verdict}")


def evaluate_against_champion(candidate: TrainResult, champion: ModelVersion | None, window: Window,
                              spec: EvaluationSpec, registry: ModelRegistry, trusted_types: list[str],
                              check_rows: int = 1000, threads: int = 0,
                              outputs_dir: str | None = None) -> EvaluationResult:
    """Score candidate and champion on the same holdout rows of the window, one partition
    at a time (on the cluster's workers when there is one), compare them row by row, and
    decide. Both models are loaded hash-checked; with ``outputs_dir`` their outputs per
    partition are kept there, under their sha256, so a champion only scores partitions new
    since it was a candidate."""
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
    comparison = None if old is None else _compare(spec, schema, y, outputs, scores, [new, old], trusted_types)
    result = decide(scores[new.key], scores[old.key] if old is not None else None, spec, schema.task, len(y),
                    champion.version if old is not None else None, comparison)
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
    return paired_comparison(metric, difference, rows[0], rows[1], spec.confidence, spec.must_show)


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
