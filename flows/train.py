"""Training: fit the configured Pipeline on the window's training rows."""

from __future__ import annotations

import importlib
import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from flows.data import Window, model_threads
from flows.encoders import FeatureMatrix
from flows.errors import ConfigError, TrainingError
from flows.evaluate import score
from flows.files import sha256_bytes, write_atomically
from flows.records import ResolvedSchema, TrainResult
from flows.specs import ESTIMATORS, ModelSpec

# Categories recorded per column with a version (what a prediction server publishes as the
# values a client may send); a column with more keeps its most frequent ones.
MAX_RECORDED_CATEGORIES = 1000


def _import(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def build_estimator(spec: ModelSpec, task: str, defaults: dict[str, Any] | None = None):
    """The final estimator: the menu's class with spec.params (over ``defaults``, and
    random_state where it has one), or the object returned by the user's ``module:function``
    factory."""
    if spec.factory:
        try:
            factory = _import(spec.factory)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"model.factory {spec.factory!r} cannot be imported ({exc}); "
                              "check the module is on the path") from None
        estimator = factory(**spec.params)
        if not (hasattr(estimator, "fit") and hasattr(estimator, "predict")):
            raise ConfigError(f"model.factory {spec.factory!r} returned {type(estimator).__name__}, "
                              "not a scikit-learn estimator (it needs fit and predict)")
        return estimator
    cls = _import(ESTIMATORS[spec.estimator][task])
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [k for k in spec.params if k not in accepted]
    if unknown:
        raise ConfigError(f"model.params {', '.join(unknown)} not accepted by {cls.__name__}; "
                          f"it takes {', '.join(p for p in accepted if p != 'self')}")
    params = {**(defaults or {}), **spec.params}
    if "random_state" in accepted and "random_state" not in params:
        params["random_state"] = spec.random_state
    return cls(**params)


def build_pipeline(spec: ModelSpec, schema: ResolvedSchema) -> Pipeline:
    """Histogram gradient boosting: one float32 matrix with categories as codes, and the
    estimator's native categorical support. Other estimators: numeric columns imputed
    (median) and scaled, categorical ones imputed (most frequent) and one-hot encoded."""
    if spec.factory is None and spec.estimator == "hist_gradient_boosting":
        prepare = FeatureMatrix(schema.numeric, schema.categorical)
        return Pipeline([
            ("prepare", prepare),
            ("model", build_estimator(spec, schema.task, {"categorical_features": prepare.categorical_mask()})),
        ])
    transformers = []
    if schema.numeric:
        transformers.append(("numeric", Pipeline([
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]), schema.numeric))
    if schema.categorical:
        transformers.append(("categorical", Pipeline([
            ("impute", SimpleImputer(strategy="most_frequent", keep_empty_features=True)),
            # Bounded width: rare categories share one column, unseen ones are ignored.
            ("onehot", OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=64,
                                     sparse_output=False)),
        ]), schema.categorical))
    return Pipeline([
        ("prepare", ColumnTransformer(transformers, remainder="drop")),
        ("model", build_estimator(spec, schema.task)),
    ])


def training_classes(y: pd.Series, task: str) -> list[Any] | None:
    """The sorted classes of a classification target; TrainingError when there is one."""
    if task != "classification":
        return None
    classes = sorted(y.unique().tolist())
    if len(classes) < 2:
        raise TrainingError(f"only one class ({classes[0]!r}) in the training window; "
                            "add data with at least two classes")
    return classes


def prepared_training_rows(pipeline: Pipeline, window: Window, spec: ModelSpec,
                           validate: bool) -> tuple[Any, np.ndarray, list[Any] | None, dict[str, list[str]]]:
    """Fit the pipeline's preparation on the training rows (outside the validation split
    when ``validate``) and return (prepared matrix, target, classes, the categories seen).
    The frame is read here and dropped on return: only the matrix is alive while the
    estimator fits."""
    schema = window.schema
    frame = window.training_rows(validation=False if validate else None, fraction=spec.validation_fraction)
    if frame.empty:
        raise TrainingError("no training rows in the window (every row fell in the holdout); add data")
    classes = training_classes(frame[schema.target], schema.task)
    y = frame[schema.target].to_numpy()
    with model_threads(spec.threads):
        matrix = pipeline.steps[0][1].fit_transform(frame[schema.features], y)
    return matrix, y, classes, seen_categories(frame, schema.categorical)


def train_candidate(window: Window, spec: ModelSpec, out_path: str | Path, validate: bool = False) -> TrainResult:
    """Fit the pipeline on the non-holdout rows of the window and save it with skops at
    ``out_path`` (atomically; its sha256 is taken from the bytes written). With
    ``validate`` (a model search), the validation split is left out of fitting and scored."""
    schema = window.schema
    pipeline = build_pipeline(spec, schema)
    started = time.perf_counter()
    matrix, y, classes, categories = prepared_training_rows(pipeline, window, spec, validate)
    train_rows = len(y)
    estimator = pipeline.steps[-1][1]
    with model_threads(spec.threads):
        estimator.fit(matrix, y)
    del matrix, y
    fit_seconds = time.perf_counter() - started

    validation, validation_rows = None, 0
    if validate:
        rows = window.training_rows(validation=True, fraction=spec.validation_fraction)
        validation_rows = len(rows)
        with model_threads(spec.threads):
            validation = score(pipeline, rows, schema) if validation_rows else {}
    data = sio.dumps(pipeline)
    out = write_atomically(out_path, data)
    return TrainResult(
        model_path=str(out), model_sha256=sha256_bytes(data),
        estimator=f"{type(estimator).__module__}:{type(estimator).__name__}",
        params={k: _plain(v) for k, v in estimator.get_params(deep=False).items()},
        train_rows=train_rows, fit_seconds=round(fit_seconds, 3),
        features=schema.features, categorical=schema.categorical, classes=classes,
        categories=categories,
        validation=validation, validation_rows=validation_rows,
    )


def seen_categories(frame: pd.DataFrame, columns: list[str]) -> dict[str, list[str]]:
    """The values of each text column present in ``frame`` (sorted), for the record."""
    seen = {}
    for column in columns:
        counts = frame[column].value_counts()  # missing values are not counted
        counts = counts[counts > 0]  # a categorical also lists categories absent from these rows
        seen[column] = sorted(str(v) for v in counts.index[:MAX_RECORDED_CATEGORIES])
    return seen


def _plain(value: Any) -> Any:
    """Parameters as JSON-friendly values (estimator objects by name)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)
