"""Evaluation: score candidate and champion on the same holdout rows; the gate."""

from __future__ import annotations

import pandas as pd

from flows.records import EvaluationResult, ResolvedSchema
from flows.specs import EvaluationSpec


def score(model, frame: pd.DataFrame, schema: ResolvedSchema) -> dict[str, float]:
    """All metrics of the task on ``frame``. Classification: accuracy, balanced_accuracy,
    f1 (binary: of the positive class, the second of the sorted classes; multiclass:
    macro), roc_auc (binary or one-vs-rest multiclass; omitted when only one class is
    present or the model has no scores). Regression: r2, rmse, mae."""
    raise NotImplementedError


def decide(candidate: dict[str, float], champion: dict[str, float] | None,
           spec: EvaluationSpec, task: str, holdout_rows: int,
           champion_version: str | None = None) -> EvaluationResult:
    """The gate: deploy when the candidate meets the threshold AND is not worse than the
    champion by more than the tolerance (direction by metric: rmse/mae lower is better).
    ``reason`` states the numbers, e.g. "roc_auc 0.91 >= threshold 0.60 and >= champion
    v0003 0.89 - tolerance 0.00"."""
    raise NotImplementedError


def evaluate_against_champion(candidate_path: str, champion_path: str | None,
                              champion_version: str | None, parquet_paths: list[str],
                              schema: ResolvedSchema, spec: EvaluationSpec,
                              trusted_types: list[str], check_rows: int = 1000) -> EvaluationResult:
    """Load both models (skops, trusted types only), score them on the holdout rows of the
    window, decide. A champion that cannot score the window (other columns) is reported
    in ``reason`` and treated as absent. Also records the candidate's metric on the first
    ``check_rows`` holdout rows (check_rows/check_value) for the post-deploy check. Raises TrainingError when the holdout has fewer
    than spec.min_holdout_rows rows."""
    raise NotImplementedError
