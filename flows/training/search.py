"""The model search: which candidate goes to the gate. Plain code, no Prefect.

Each candidate of ``[[model.candidates]]`` is trained on the training rows outside the
validation split and scored on that split (``flows.data.window.is_validation``); the best on the
gate's metric is the run's candidate. The gate's holdout plays no part in the choice: it
stays the only judge of deployment, unbiased by the search.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from core.errors import TrainingError, first_line
from core.records import CandidateScore, TrainResult
from core.specs import METRICS, ModelSpec


def staged_path(prefix: str, index: int) -> str:
    """Where candidate ``index`` of a run writes its model (its trainer may change the suffix)."""
    return f"{prefix}-{index}.skops"


def start_order(specs: list[ModelSpec], indices: list[int], previous: list[dict[str, Any]] | None) -> list[int]:
    """The order to start the candidates ``indices`` in: the longest expected fit first (its
    ``fit_seconds`` when the same configuration was last searched, ``previous`` being the
    champion's recorded candidates), those never timed before all (they may be long),
    config order among equals. On fewer worker threads than candidates, the short ones then
    fill the gaps at the end instead of a long one starting last."""
    def key(estimator: str | None, params: dict[str, Any] | None) -> str:
        return json.dumps([estimator, params or {}], sort_keys=True, default=str)

    seconds = {key(c.get("estimator"), c.get("params")): c.get("fit_seconds") or 0.0
               for c in previous or [] if not c.get("error")}
    return sorted(indices, key=lambda i: -seconds.get(key(specs[i].estimator, specs[i].params), math.inf))


def choose(specs: list[ModelSpec], results: list[TrainResult | BaseException], metric: str) -> TrainResult:
    """The candidate with the best validation ``metric`` (the first of equals, in config
    order), recording every candidate's configuration and score on it; the other
    candidates' files are removed. Without a search (one spec, no validation), that one.
    Raises the first TrainingError when no candidate could be trained."""
    higher = METRICS[metric][1]
    best: int | None = None
    for i, result in enumerate(results):
        if isinstance(result, TrainResult):
            value = _value(result, metric, higher)
            if best is None or value > _value(results[best], metric, higher):  # type: ignore[arg-type]
                best = i
    if best is None:
        errors = [r for r in results if isinstance(r, BaseException)]
        raise next((e for e in errors if isinstance(e, TrainingError)), errors[0])
    scores = [_score(spec, result, i == best) for i, (spec, result) in enumerate(zip(specs, results))]
    for i, result in enumerate(results):
        if i != best and isinstance(result, TrainResult):
            Path(result.model_path).unlink(missing_ok=True)
    chosen = results[best]
    assert isinstance(chosen, TrainResult)
    # Only a search (validate=True) has validation scores to record.
    return chosen.model_copy(update={"candidates": scores}) if chosen.validation is not None else chosen


def _value(result: TrainResult, metric: str, higher: bool) -> float:
    """The validation metric, oriented so that larger is better (missing: worst)."""
    value = (result.validation or {}).get(metric, math.nan)
    if math.isnan(value):
        return -math.inf
    return value if higher else -value


def _score(spec: ModelSpec, result: TrainResult | BaseException, chosen: bool) -> CandidateScore:
    if isinstance(result, BaseException):
        return CandidateScore(estimator=spec.estimator, params=spec.params,
                              error=first_line(result))
    return CandidateScore(estimator=spec.estimator, params=spec.params, validation=result.validation,
                          fit_seconds=result.fit_seconds, chosen=chosen)
