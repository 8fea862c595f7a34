"""The model search: which configuration is trained for the gate. Plain code, no Prefect.

Each candidate of ``[[model.candidates]]`` is cross-validated on the window's training rows:
they are cut into ``model.validation_folds`` folds by a hash of each row
(``flows.data.window.validation_position``), and the candidate is fitted once per fold on
the other folds and scored on that one. The best mean score on the gate's metric wins, and
that configuration alone is then trained on every training row, so the search costs the
model no data. The gate's holdout plays no part in the choice: it stays the only judge of
deployment, unbiased by the search. XGBoost, which trains across the whole cluster, is
validated on the first fold only.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import TrainingError, first_line
from core.records import CandidateScore, TrainResult
from core.specs import METRICS, ModelSpec
from flows.data.window import Window, model_threads, validation_position
from flows.models.scoring import classes_of, metrics, model_outputs
from flows.training.train import build_pipeline, prepare_rows


def staged_path(prefix: str, index: int) -> str:
    """Where candidate ``index`` of a run writes its model (its trainer may change the suffix)."""
    return f"{prefix}-{index}.skops"


def fold_of_rows(position: np.ndarray, folds: int) -> np.ndarray:
    """Each row's fold (0 .. folds-1) from its ``validation_position``: fold 0 is the rows
    that ``is_validation`` takes at a fraction of 1/folds."""
    return (position * np.uint64(folds) // np.uint64(10_000)).astype(np.int64)


def cross_validate(window: Window, spec: ModelSpec) -> CandidateScore:
    """The candidate ``spec`` fitted ``spec.validation_folds`` times, each time on every
    training row outside one fold and scored on that fold; its validation metrics are the
    folds' mean. A fold without rows (a tiny window) is skipped; TrainingError when no fold
    could be scored."""
    schema = window.schema
    started = time.perf_counter()
    frame = window.training_rows()
    fold = fold_of_rows(validation_position(frame, window.columns), spec.validation_folds)
    scores: list[dict[str, float]] = []
    for k in range(spec.validation_folds):
        held = fold == k
        if not held.any() or held.all():
            continue
        pipeline = build_pipeline(spec, schema)
        prepared = prepare_rows(pipeline, frame[~held], schema, spec.threads)
        with model_threads(spec.threads):
            prepared.fit(pipeline.steps[-1][1])
            del prepared
            rows = frame[held]
            scores.append(metrics(model_outputs(pipeline, rows, schema), rows[schema.target], schema,
                                  classes_of(pipeline)))
    if not scores:
        raise TrainingError(f"too few training rows to cross-validate a model search over "
                            f"{spec.validation_folds} folds; add data or lower model.validation_folds")
    validation = {key: float(np.nanmean([s.get(key, math.nan) for s in scores])) for key in scores[0]}
    return CandidateScore(estimator=spec.estimator, params=spec.params, validation=validation,
                          validation_rows=len(frame), fit_seconds=round(time.perf_counter() - started, 3))


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


def candidate_score(spec: ModelSpec, result: CandidateScore | TrainResult | BaseException) -> CandidateScore:
    """What the search records of one candidate: its cross-validation, the validation of an
    XGBoost candidate (whose model file, not the one trained for the gate, is removed), or
    why it failed."""
    if isinstance(result, BaseException):
        return CandidateScore(estimator=spec.estimator, params=spec.params, error=first_line(result))
    if isinstance(result, TrainResult):
        Path(result.model_path).unlink(missing_ok=True)
        return CandidateScore(estimator=spec.estimator, params=spec.params, validation=result.validation,
                              validation_rows=result.validation_rows, fit_seconds=result.fit_seconds)
    return result


def choose(specs: list[ModelSpec], results: list[CandidateScore | TrainResult | BaseException],
           metric: str) -> tuple[int, list[CandidateScore]]:
    """(the index of the candidate with the best validation ``metric``, the first of equals
    in config order; every candidate's record, the chosen one marked). Raises the first
    TrainingError when no candidate could be validated."""
    scores = [candidate_score(spec, result) for spec, result in zip(specs, results)]
    higher = METRICS[metric][1]
    valued = [(_value(s, metric, higher), i) for i, s in enumerate(scores) if s.error is None]
    if not valued or all(v == -math.inf for v, _ in valued):
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            raise TrainingError(f"no candidate of the model search has a validation {metric}; add data")
        raise next((e for e in errors if isinstance(e, TrainingError)), errors[0])
    best = max(valued, key=lambda pair: (pair[0], -pair[1]))[1]
    scores[best] = scores[best].model_copy(update={"chosen": True})
    return best, scores


def _value(score: CandidateScore, metric: str, higher: bool) -> float:
    """The validation metric, oriented so that larger is better (missing: worst)."""
    value = (score.validation or {}).get(metric, math.nan)
    if math.isnan(value):
        return -math.inf
    return value if higher else -value
