"""Scoring a model on rows: its outputs (predictions and class scores) and every metric of
the task, on a frame or partition by partition over the window (spread over the workers),
with each model's outputs on each partition kept for the next run."""

from __future__ import annotations

import math
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.pipeline import Pipeline

from core.files import write_atomically
from core.records import ResolvedSchema
from flows.data.window import Window, cluster_client, model_threads
from flows.models.modelfile import ModelFile
from flows.models.predict import predicts_highest_probability


def score(model, frame: pd.DataFrame, schema: ResolvedSchema) -> dict[str, float]:
    """All metrics of the task on ``frame``. Classification: accuracy, balanced_accuracy,
    f1 (binary: of the positive class, the second of the sorted classes; multiclass:
    macro), roc_auc (omitted when only one class is present or the model has no scores).
    Regression: r2, rmse, mae."""
    return metrics(model_outputs(model, frame, schema), frame[schema.target], schema, classes_of(model))


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
            model_classes: list[str], only: str | None = None) -> dict[str, float]:
    """The task's metrics from a model's outputs and the true values (see ``score``);
    ``only`` one of them, when no other is wanted (a classifier's roc_auc needs none of
    the label metrics, nor they the roc_auc)."""
    predicted = outputs["predicted"]
    if schema.task == "regression":
        y = y.astype(float)
        return {
            "r2": float(skm.r2_score(y, predicted)) if len(y) > 1 else float("nan"),
            "rmse": float(math.sqrt(skm.mean_squared_error(y, predicted))),
            "mae": float(skm.mean_absolute_error(y, predicted)),
        }
    y = y.astype(str)
    result = {} if only == "roc_auc" else _label_metrics(predicted, y, model_classes)
    if only not in (None, "roc_auc"):
        return result
    if y.nunique() >= 2 and "scores" in outputs:
        auc = _roc_auc(outputs["scores"], model_classes, y)
        if auc is not None:
            result["roc_auc"] = auc
    return result


def _label_metrics(predicted: np.ndarray, y: pd.Series, model_classes: list[str]) -> dict[str, float]:
    """accuracy, balanced_accuracy and f1 of predicted labels against the true ones (text)."""
    classes = sorted(set(model_classes)) if model_classes else sorted(set(y))
    binary = len(classes) == 2
    # The label metrics on integer codes: the same numbers, without scikit-learn sorting
    # the label strings again for every metric.
    labels = sorted(set(classes) | set(y.unique()) | set(pd.unique(np.asarray(predicted))))
    y_codes = pd.Categorical(y, categories=labels).codes
    predicted_codes = pd.Categorical(predicted, categories=labels).codes
    return {
        "accuracy": float(skm.accuracy_score(y_codes, predicted_codes)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_codes, predicted_codes)),
        "f1": float(skm.f1_score(y_codes, predicted_codes, pos_label=labels.index(classes[-1]), average="binary")
                    if binary else skm.f1_score(y_codes, predicted_codes, average="macro")),
    }


def classes_of(model) -> list[str]:
    return [str(c) for c in getattr(model, "classes_", [])]


def partition_outputs(path: str, schema: ResolvedSchema, models: list[ModelFile], trusted_types: list[str],
                      side: str = "holdout", fraction: float = 0.0, outputs_dir: str | None = None,
                      threads: int = 1) -> tuple[pd.Series, dict[str, dict[str, np.ndarray]]] | None:
    """The true values of one partition's ``side`` rows ("holdout", or "validation" of a
    model search) and each model's outputs on them; None when the partition has none.
    Runs where it is called: on a Dask worker when mapped over the window. A model's
    outputs on a partition never change (both are immutable), so with ``outputs_dir``
    holdout outputs are kept per (model, partition) and only computed once."""
    window = Window([path], schema)
    if side == "holdout":
        rows = window.holdout_rows()
    else:
        rows = window.training_rows(validation=True, fraction=fraction)
    if rows.empty:
        return None
    outputs = {}
    for model in models:
        kept = kept_outputs_path(outputs_dir, model.key, path) if outputs_dir and side == "holdout" else None
        found = load_outputs(kept) if kept else None
        if found is None:
            with model_threads(threads):
                found = model_outputs(loaded(model, tuple(trusted_types)), rows, schema)
            if kept:
                save_outputs(kept, found)
        outputs[model.key] = found
    return rows[schema.target].astype(object), outputs


@lru_cache(maxsize=4)
def loaded(model: ModelFile, trusted_types: tuple[str, ...]):
    """A model loaded (hash-checked) once per process: scoring a window loads it once per
    worker, not once per partition. The object kept is the one whose bytes were checked."""
    return model.load(list(trusted_types))


def window_outputs(window: Window, models: list[ModelFile], trusted_types: list[str], side: str = "holdout",
                   fraction: float = 0.0, outputs_dir: str | None = None,
                   threads: int = 0) -> tuple[pd.Series, dict[str, dict[str, np.ndarray]]]:
    """``partition_outputs`` of every partition, in window order, joined. On a Dask cluster
    (a step running on a worker) the partitions are scored where they are, one task each,
    and only the outputs travel; elsewhere one after the other in this process. Either way
    one partition's rows are in memory at a time."""
    args = dict(schema=window.schema, models=models, trusted_types=trusted_types, side=side,
                fraction=fraction, outputs_dir=outputs_dir)
    with cluster_client(required=False) as client:
        if client is not None and len(window.parquet_paths) > 1:
            futures = client.map(partition_outputs, window.parquet_paths, **args, threads=1, pure=False)
            results = client.gather(futures)
        else:
            results = [partition_outputs(path, **args, threads=threads) for path in window.parquet_paths]
    results = [r for r in results if r is not None]
    if not results:
        return pd.Series([], dtype=object), {m.key: {} for m in models}
    y = pd.concat([r[0] for r in results], ignore_index=True)
    joined = {m.key: {name: np.concatenate([r[1][m.key][name] for r in results])
                      for name in results[0][1][m.key]} for m in models}
    return y, joined


def score_window(window: Window, models: list[ModelFile], trusted_types: list[str],
                 outputs_dir: str | None = None, threads: int = 0, side: str = "holdout",
                 fraction: float = 0.0) -> tuple[int, dict[str, dict[str, float]]]:
    """(rows scored, the metrics of each model by key) over the ``side`` rows of the
    window: equal to ``score`` on their concatenation (see ``window_outputs``)."""
    y, outputs = window_outputs(window, models, trusted_types, side, fraction, outputs_dir, threads)
    if y.empty:
        return 0, {m.key: {} for m in models}
    return len(y), {m.key: metrics(outputs[m.key], y, window.schema, classes_of(loaded(m, tuple(trusted_types))))
                    for m in models}


def kept_outputs_path(outputs_dir: str | Path, model_key: str, parquet_path: str) -> Path:
    """Where a model's outputs on one partition's holdout rows are kept."""
    return Path(outputs_dir) / model_key / f"{Path(parquet_path).stem}.npz"


def load_outputs(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, KeyError):
        return None  # missing or unreadable: compute again


def save_outputs(path: Path, outputs: dict[str, np.ndarray]) -> None:
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


def _scores_and_predictions(estimator, X):
    """Class scores (probabilities, or the decision function) and predicted labels."""
    if hasattr(estimator, "predict_proba"):
        scores = estimator.predict_proba(X)
    elif hasattr(estimator, "decision_function"):
        scores = estimator.decision_function(X)
    else:
        return None, estimator.predict(X)
    if predicts_highest_probability(estimator):
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


def check_score(model, first_rows: pd.DataFrame, schema: ResolvedSchema, metric: str,
                whole_window: Callable[[], float]) -> float:
    """The metric on the first holdout rows: what the post-deploy check reproduces. When
    they cannot carry the metric (one class for roc_auc), the metric on the whole holdout."""
    value = score(model, first_rows, schema).get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = whole_window()
    return float(value)
