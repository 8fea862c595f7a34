"""Training: fit the configured Pipeline on the window's training rows."""

from __future__ import annotations

import importlib
import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from core.errors import ConfigError, TrainingError
from core.files import sha256_bytes, write_atomically
from core.records import ResolvedSchema, TrainResult
from core.specs import ESTIMATORS, ModelSpec
from flows.data.window import Window, model_threads
from flows.encoders import FeatureMatrix

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


@dataclass
class PreparedRows:
    """The training rows as the estimator takes them. The first ``fit_rows`` rows are fitted
    on; the rest, when there are any, are the estimator's own early-stopping rows."""

    matrix: Any
    y: np.ndarray
    classes: list[Any] | None
    categories: dict[str, list[str]]
    fit_rows: int

    def fit(self, estimator) -> None:
        k = self.fit_rows
        if k == len(self.y):
            estimator.fit(self.matrix, self.y)
        else:
            estimator.fit(self.matrix[:k], self.y[:k], X_val=self.matrix[k:], y_val=self.y[k:])


def prepared_training_rows(pipeline: Pipeline, window: Window, spec: ModelSpec) -> PreparedRows:
    """Fit the pipeline's preparation on the training rows and prepare them. The frame is
    read here and dropped on return: only the matrix is alive while the estimator fits."""
    frame = window.training_rows()
    if frame.empty:
        raise TrainingError("no training rows in the window (every row fell in the holdout); add data")
    return prepare_rows(pipeline, frame, window.schema, spec.threads)


def prepare_rows(pipeline: Pipeline, frame: pd.DataFrame, schema: ResolvedSchema, threads: int) -> PreparedRows:
    """Fit the pipeline's preparation on ``frame`` and prepare its rows for the estimator."""
    classes = training_classes(frame[schema.target], schema.task)
    categories = seen_categories(frame, schema.categorical)
    y = frame[schema.target].to_numpy()
    prepare = pipeline.steps[0][1]
    with model_threads(threads):
        if not isinstance(prepare, FeatureMatrix):
            return PreparedRows(prepare.fit_transform(frame[schema.features], y), y, classes, categories, len(y))
        prepare.fit(frame)
        order, fit_rows = early_stopping_split(pipeline.steps[-1][1], y, schema.task)
        matrix = prepare.matrix(frame, order)
    return PreparedRows(matrix, y if order is None else y[order], classes, categories, fit_rows)


def early_stopping_split(estimator, y: np.ndarray, task: str) -> tuple[np.ndarray | None, int]:
    """HistGradientBoosting's early-stopping rows, set apart here as it would set them apart
    itself (a random fraction, stratified for classification), and placed last in the
    matrix: the estimator is given both sides as views of one matrix instead of copying
    them apart. Returns (row order, rows to fit on), or (None, every row) when it would not
    stop early on a held-out fraction."""
    n, fraction, stops = len(y), estimator.validation_fraction, estimator.early_stopping
    # "auto" stops early above 10,000 rows: the rows it is given to fit on, here.
    if stops is False or not fraction or (stops == "auto" and n <= 10_000):
        return None, n
    if task == "classification" and not stratifiable(y, fraction):
        # Too few rows of a class to hold some out on both sides (scikit-learn would refuse
        # to fit): fit every iteration on every row, as recorded in the version's params.
        estimator.set_params(early_stopping=False)
        return None, n
    fit, held = train_test_split(np.arange(n), test_size=fraction, random_state=estimator.random_state,
                                 stratify=y if task == "classification" else None)
    if stops == "auto" and len(fit) <= 10_000:
        return None, n
    return np.concatenate([fit, held]), len(fit)


def stratifiable(y: np.ndarray, fraction: float) -> bool:
    """Whether a stratified split of ``fraction`` of ``y`` is possible: every class twice at
    least, and each side as many rows as there are classes."""
    _, counts = np.unique(y, return_counts=True)
    held = math.ceil(len(y) * fraction)
    return counts.min() >= 2 and held >= len(counts) and len(y) - held >= len(counts)


def train_candidate(window: Window, spec: ModelSpec, out_path: str | Path) -> TrainResult:
    """Fit the pipeline on the non-holdout rows of the window and save it with skops at
    ``out_path`` (atomically; its sha256 is taken from the bytes written)."""
    schema = window.schema
    pipeline = build_pipeline(spec, schema)
    started = time.perf_counter()
    prepared = prepared_training_rows(pipeline, window, spec)
    train_rows, classes, categories = len(prepared.y), prepared.classes, prepared.categories
    estimator = pipeline.steps[-1][1]
    with model_threads(spec.threads):
        prepared.fit(estimator)
    del prepared
    fit_seconds = time.perf_counter() - started
    data = sio.dumps(pipeline)
    out = write_atomically(out_path, data)
    return TrainResult(
        model_path=str(out), model_sha256=sha256_bytes(data),
        estimator=f"{type(estimator).__module__}:{type(estimator).__name__}",
        params={k: _plain(v) for k, v in estimator.get_params(deep=False).items()},
        train_rows=train_rows, fit_seconds=round(fit_seconds, 3),
        features=schema.features, categorical=schema.categorical, classes=classes,
        categories=categories,
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
