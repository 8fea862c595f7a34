"""Training: build the window from cached partitions and fit the configured Pipeline."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sklearn.pipeline import Pipeline

from flows.records import ResolvedSchema, TrainResult
from flows.specs import ModelSpec


def build_estimator(spec: ModelSpec, task: str):
    """The final estimator: the menu's class with spec.params (and random_state where it
    has one), or the object returned by the user's ``module:function`` factory.
    Raises ConfigError (one line) for an unknown parameter or a factory that cannot be
    imported or does not return a scikit-learn estimator."""
    raise NotImplementedError


def build_pipeline(spec: ModelSpec, schema: ResolvedSchema) -> Pipeline:
    """ColumnTransformer (numeric: median imputation + scaling; categorical: most-frequent
    imputation + one-hot, unknown categories ignored) followed by the estimator."""
    raise NotImplementedError


def train_candidate(parquet_paths: list[str], schema: ResolvedSchema, spec: ModelSpec,
                    out_path: str | Path) -> TrainResult:
    """Fit the pipeline on the non-holdout rows of the given partitions and save it with
    skops at ``out_path`` (temporary name + os.replace). Raises TrainingError when there
    are no training rows or (classification) a single class."""
    raise NotImplementedError


def training_frame(parquet_paths: list[str], schema: ResolvedSchema, holdout: bool) -> pd.DataFrame:
    """The rows of the window on one side of the holdout split."""
    raise NotImplementedError
