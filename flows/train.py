"""Training: fit the configured Pipeline on the window's training rows."""

from __future__ import annotations

import importlib
import inspect
import time
from pathlib import Path
from typing import Any

import pandas as pd
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from flows.data import Window, model_threads
from flows.errors import ConfigError, TrainingError
from flows.files import sha256_bytes, write_atomically
from flows.records import ResolvedSchema, TrainResult
from flows.specs import ESTIMATORS, ModelSpec

# Categories recorded per column with a version (what a prediction server publishes as the
# values a client may send); a column with more keeps its most frequent ones.
MAX_RECORDED_CATEGORIES = 1000


def _import(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def build_estimator(spec: ModelSpec, task: str):
    """The final estimator: the menu's class with spec.params (and random_state where it
    has one), or the object returned by the user's ``module:function`` factory."""
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
    params = dict(spec.params)
    if "random_state" in accepted and "random_state" not in params:
        params["random_state"] = spec.random_state
    return cls(**params)


def build_pipeline(spec: ModelSpec, schema: ResolvedSchema) -> Pipeline:
    """Numeric: median imputation + scaling; categorical: most-frequent imputation +
    one-hot (unknown categories ignored); then the estimator."""
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


def train_candidate(window: Window, spec: ModelSpec, out_path: str | Path) -> TrainResult:
    """Fit the pipeline on the non-holdout rows of the window and save it with skops at
    ``out_path`` (atomically; its sha256 is taken from the bytes written)."""
    schema = window.schema
    frame = window.training_rows()
    if frame.empty:
        raise TrainingError("no training rows in the window (every row fell in the holdout); add data")
    y = frame[schema.target]
    classes = None
    if schema.task == "classification":
        classes = sorted(y.unique().tolist())
        if len(classes) < 2:
            raise TrainingError(f"only one class ({classes[0]!r}) in the training window; "
                                "add data with at least two classes")
    pipeline = build_pipeline(spec, schema)
    started = time.perf_counter()
    with model_threads(spec.threads):
        pipeline.fit(frame[schema.features], y)
    fit_seconds = time.perf_counter() - started

    data = sio.dumps(pipeline)
    out = write_atomically(out_path, data)
    estimator = pipeline.named_steps["model"]
    return TrainResult(
        model_path=str(out), model_sha256=sha256_bytes(data),
        estimator=f"{type(estimator).__module__}:{type(estimator).__name__}",
        params={k: _plain(v) for k, v in estimator.get_params(deep=False).items()},
        train_rows=len(frame), fit_seconds=round(fit_seconds, 3),
        features=schema.features, categorical=schema.categorical, classes=classes,
        categories=seen_categories(frame, schema.categorical),
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
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)
