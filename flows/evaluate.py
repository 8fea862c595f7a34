"""Evaluation: score candidate and champion on the same holdout rows; the gate."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.pipeline import Pipeline

from flows.data import Window, model_threads
from flows.errors import RegistryIntegrityError, TrainingError
from flows.files import write_atomically
from flows.records import EvaluationResult, ModelVersion, ResolvedSchema, TrainResult
from flows.registry import ModelRegistry, load_model_file
from flows.specs import METRICS, EvaluationSpec


def score(model, frame: pd.DataFrame, schema: ResolvedSchema) -> dict[str, float]:
    """All metrics of the task on ``frame``. Classification: accuracy, balanced_accuracy,
    f1 (binary: of the positive class, the second of the sorted classes; multiclass:
    macro), roc_auc (omitted when only one class is present or the model has no scores).
    Regression: r2, rmse, mae."""
    return metrics(model_outputs(model, frame, schema), frame[schema.target], schema, _classes(model))


def model_outputs(model, frame: pd.DataFrame, schema: ResolvedSchema) -> dict[str, np.ndarray]:
    """What a model says about the rows of ``frame``, row by row: its predictions, and its
    class scores when it has them. Everything the metrics need, and small enough to keep."""
    estimator, X = _prepared(model, frame[schema.features])
    if schema.task == "regression":
        return {"predicted": np.asarray(estimator.predict(X), dtype=float)}
    scores, predicted = _scores_and_predictions(estimator, X)
    outputs = {"predicted": np.asarray(predicted).astype(str)}
    if scores is not None:
        outputs["scores"] = np.asarray(scores, dtype=float)
    return outputs


def metrics(outputs: dict[str, np.ndarray], y: pd.Series, schema: ResolvedSchema,
            model_classes: list[str]) -> dict[str, float]:
    """The task's metrics from a model's outputs and the true values (see ``score``)."""
    predicted = outputs["predicted"]
    if schema.task == "regression":
        y = y.astype(float)
        return {
            "r2": float(skm.r2_score(y, predicted)) if len(y) > 1 else float("nan"),
            "rmse": float(math.sqrt(skm.mean_squared_error(y, predicted))),
            "mae": float(skm.mean_absolute_error(y, predicted)),
        }
    y = y.astype(str)
    classes = sorted(set(model_classes)) if model_classes else sorted(set(y))
    binary = len(classes) == 2
    # The label metrics on integer codes: the same numbers, without scikit-learn sorting
    # the label strings again for every metric.
    labels = sorted(set(classes) | set(y.unique()) | set(np.unique(predicted)))
    y_codes = pd.Categorical(y, categories=labels).codes
    predicted_codes = pd.Categorical(predicted, categories=labels).codes
    result = {
        "accuracy": float(skm.accuracy_score(y_codes, predicted_codes)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_codes, predicted_codes)),
        "f1": float(skm.f1_score(y_codes, predicted_codes, pos_label=labels.index(classes[-1]), average="binary")
                    if binary else skm.f1_score(y_codes, predicted_codes, average="macro")),
    }
    if y.nunique() >= 2 and "scores" in outputs:
        auc = _roc_auc(outputs["scores"], model_classes, y)
        if auc is not None:
            result["roc_auc"] = auc
    return result


def _classes(model) -> list[str]:
    return [str(c) for c in getattr(model, "classes_", [])]


def score_window(model, model_key: str, parts: list[tuple[str, pd.DataFrame]], schema: ResolvedSchema,
                 outputs_dir: str | Path | None) -> dict[str, float]:
    """The metrics of ``model`` over the holdout rows of every partition of the window,
    equal to ``score`` on their concatenation. A model's outputs on a partition never
    change (both are immutable), so with ``outputs_dir`` they are kept per (model,
    partition): the champion, scored on most of this window by the run that made it the
    candidate, only scores the partitions that are new since."""
    collected = []
    for parquet_path, part in parts:
        kept = Path(outputs_dir) / model_key / f"{Path(parquet_path).stem}.npz" if outputs_dir else None
        outputs = _load_outputs(kept) if kept else None
        if outputs is None:
            outputs = model_outputs(model, part, schema)
            if kept:
                _save_outputs(kept, outputs)
        collected.append(outputs)
    joined = {key: np.concatenate([o[key] for o in collected]) for key in collected[0]}
    y = pd.concat([part[schema.target].astype(object) for _, part in parts], ignore_index=True)
    return metrics(joined, y, schema, _classes(model))


def _load_outputs(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, KeyError):
        return None  # missing or unreadable: compute again


def _save_outputs(path: Path, outputs: dict[str, np.ndarray]) -> None:
    # Not fsynced: a kept output lost in a power cut is computed again.
    write_atomically(path, lambda fh: np.savez(fh, **outputs), durable=False)


def prune_outputs(outputs_dir: str | Path, keep: set[str]) -> None:
    """Drop the kept outputs of models other than ``keep`` (they will not be scored again)."""
    root = Path(outputs_dir)
    if root.is_dir():
        for entry in root.iterdir():
            if entry.is_dir() and entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)


def _prepared(model, X: pd.DataFrame):
    """(final estimator, X transformed by the pipeline's other steps): the preparation runs
    once for every metric instead of once per predict call."""
    if isinstance(model, Pipeline) and len(model.steps) > 1:
        return model.steps[-1][1], model[:-1].transform(X)
    return model, X


# scikit-learn classifiers whose predict() is, in its source, the class of highest
# predict_proba: for them the (costly) probabilities are computed once and reused.
_PREDICT_IS_ARGMAX = {"HistGradientBoostingClassifier", "RandomForestClassifier",
                      "ExtraTreesClassifier", "DecisionTreeClassifier"}


def _scores_and_predictions(estimator, X):
    """Class scores (probabilities, or the decision function) and predicted labels."""
    if hasattr(estimator, "predict_proba"):
        scores = estimator.predict_proba(X)
    elif hasattr(estimator, "decision_function"):
        scores = estimator.decision_function(X)
    else:
        return None, estimator.predict(X)
    cls = type(estimator)
    if cls.__module__.startswith("sklearn.") and cls.__name__ in _PREDICT_IS_ARGMAX:
        return scores, estimator.classes_[np.argmax(scores, axis=1)]
    return scores, estimator.predict(X)


def _roc_auc(scores: np.ndarray, model_classes: list[str], y: pd.Series) -> float | None:
    if len(model_classes) == 2:
        column = scores[:, 1] if scores.ndim == 2 else scores
        return float(skm.roc_auc_score((y == model_classes[1]).astype(int), column))
    if scores.ndim != 2 or set(y) - set(model_classes):
        return None
    present = [i for i, c in enumerate(model_classes) if c in set(y)]
    if len(present) < 2:
        return None
    proba = scores[:, present]
    proba = proba / proba.sum(axis=1, keepdims=True)
    return float(skm.roc_auc_score(y, proba, multi_class="ovr",
                                   labels=[model_classes[i] for i in present]))


def decide(candidate: dict[str, float], champion: dict[str, float] | None,
           spec: EvaluationSpec, task: str, holdout_rows: int,
           champion_version: str | None = None) -> EvaluationResult:
    """The gate: deploy when the candidate meets the threshold AND is not worse than the
    champion by more than the tolerance (lower is better for rmse and mae)."""
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
    else:
        bound = champ_value - spec.tolerance if higher else champ_value + spec.tolerance
        not_worse = value >= bound - 1e-12 if higher else value <= bound + 1e-12
        op = (">=" if not_worse else "<") if higher else ("<=" if not_worse else ">")
        sign = "-" if higher else "+"
        why_champion = (f"{metric} {value:.4f} {op} champion {champion_version} {champ_value:.4f} "
                        f"{sign} tolerance {spec.tolerance:.4f}")
    deploy = passed and not_worse
    if deploy:
        reason = f"deploy: {why_threshold} and {why_champion}"
    elif not passed:
        reason = f"not deployed: {why_threshold}"
    else:
        reason = f"not deployed: worse than the champion, {why_champion}"
    return EvaluationResult(
        metric=metric, greater_is_better=higher, threshold=spec.threshold, tolerance=spec.tolerance,
        holdout_rows=holdout_rows, candidate=candidate, champion=champion,
        champion_version=champion_version, passed_threshold=passed, not_worse_than_champion=not_worse,
        deploy=deploy, reason=reason,
    )


def check_score(model, first_rows: pd.DataFrame, schema: ResolvedSchema, metric: str,
                whole_holdout: Callable[[], pd.DataFrame]) -> float:
    """The metric on the first holdout rows: what the post-deploy check reproduces. When
    they cannot carry the metric (one class for roc_auc) the whole holdout is used."""
    value = score(model, first_rows, schema).get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = score(model, whole_holdout(), schema).get(metric, float("nan"))
    return float(value)


def evaluate_against_champion(candidate: TrainResult, champion: ModelVersion | None, window: Window,
                              spec: EvaluationSpec, registry: ModelRegistry, trusted_types: list[str],
                              check_rows: int = 1000, threads: int = 0,
                              outputs_dir: str | None = None) -> EvaluationResult:
    """Score candidate and champion on the holdout rows of the window (read once), decide.
    Both models are loaded hash-checked; with ``outputs_dir``, their outputs per partition
    are kept there, under their sha256 (see ``score_window``)."""
    schema = window.schema
    parts = window.holdout_parts()
    holdout_rows = sum(len(part) for _, part in parts)
    if holdout_rows < spec.min_holdout_rows:
        raise TrainingError(f"only {holdout_rows} holdout rows in the window, fewer than "
                            f"evaluation.min_holdout_rows={spec.min_holdout_rows}; add data")
    with model_threads(threads):
        model = load_model_file(candidate.model_path, candidate.model_sha256, trusted_types,
                                what="the candidate")
        # Models are told apart by content: the candidate's outputs serve again when it is
        # the champion of the next run.
        candidate_key = candidate.model_sha256[:32]
        candidate_scores = score_window(model, candidate_key, parts, schema, outputs_dir)
        champion_scores, champion_key, note = _score_champion(champion, registry, trusted_types,
                                                              parts, schema, outputs_dir)
        if outputs_dir:
            prune_outputs(outputs_dir, {candidate_key, champion_key} - {None})
        champion_version = champion.version if champion_scores is not None else None
        result = decide(candidate_scores, champion_scores, spec, schema.task, holdout_rows,
                        champion_version)
        # What the post-deploy check will reproduce from the deployed file: the same call
        # on the same first rows of the holdout.
        holdout = pd.concat([part for _, part in parts], ignore_index=True)
        first_rows = holdout.iloc[:check_rows]
        check_value = check_score(model, first_rows, schema, result.metric, lambda: holdout)
    return result.model_copy(update={"reason": result.reason + note, "check_rows": len(first_rows),
                                     "check_value": check_value})


def _score_champion(champion: ModelVersion | None, registry: ModelRegistry, trusted_types: list[str],
                    parts: list[tuple[str, pd.DataFrame]], schema: ResolvedSchema,
                    outputs_dir: str | None) -> tuple[dict[str, float] | None, str | None, str]:
    """(the champion's metrics, its outputs key, a note when it cannot score this window)."""
    if champion is None:
        return None, None, ""
    try:
        model = registry.load_model(champion.version, trusted_types)
        key = champion.model_sha256[:32]
        return score_window(model, key, parts, schema, outputs_dir), key, ""
    except (KeyError, ValueError, RegistryIntegrityError) as exc:
        return None, None, f" (champion {champion.version} cannot score this window: {str(exc).splitlines()[0]})"
