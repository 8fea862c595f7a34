"""Watching the deployed model on every batch, before any training.

- **Live metric**: the champion scores every row of the batch's new files (rows it has
  never seen, holdout or not), with every metric of the task.
- **Drift**: those rows against small reference statistics of the champion's training rows,
  stored with the version when it was trained (``reference_statistics``): per numeric
  column the edges of its deciles and the share of rows in each bin, per categorical
  column the shares of its most frequent categories; the same for the label. The drift of
  a column is its population stability index (PSI) over those bins,
  sum((new - ref) * ln(new / ref)): 0 for the same distribution; by a common rule of thumb
  below 0.1 is stable, above 0.25 a real shift. Missing values are a bin of their own, so
  a column that starts arriving empty drifts too.

Plain code: the flow's monitor task calls ``monitor_champion``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from core.errors import RegistryIntegrityError, first_line
from core.records import DriftReport, LiveMetric, ModelVersion, ResolvedSchema
from flows.data.preprocess import HOLDOUT_COLUMN
from flows.data.window import Window, load_partitions, model_threads
from flows.models.registry import ModelRegistry
from flows.models.scoring import (
    classes_of,
    kept_outputs_path,
    loaded,
    metrics,
    model_outputs,
    save_outputs,
)

BINS = 10  # quantile bins per numeric column
MAX_CATEGORIES = 20  # categories kept per categorical column; the rest share one bin
FLOOR = 1e-4  # shares below this count as this much: an empty bin must not make the PSI infinite


# -- reference statistics (stored with a version) -----------------------------------------------

def reference_statistics(window: Window) -> dict[str, Any]:
    """Reference statistics of the window's training rows (outside the holdout), read one
    column at a time: a few hundred numbers, whatever the window's size."""
    schema = window.schema
    columns, rows = {}, 0
    for name in window.columns:
        values = window.training_column(name)
        categorical = name in schema.categorical or (name == schema.target and schema.task == "classification")
        columns[name] = _categorical_reference(values) if categorical else _numeric_reference(values)
        rows = len(values)
    return {"statistic": "psi", "rows": rows, "columns": columns}


def _numeric_reference(values: pd.Series) -> dict[str, Any]:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    present = numbers[~np.isnan(numbers)]
    edges = np.unique(np.quantile(present, np.linspace(0, 1, BINS + 1)[1:-1])) if len(present) else np.array([])
    return {"kind": "numeric", "edges": edges.tolist(), "shares": _numeric_shares(numbers, edges).tolist()}


def _numeric_counts(numbers: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Rows in each bin between the edges, then the missing values."""
    missing = np.isnan(numbers)
    counts = np.bincount(np.searchsorted(edges, numbers[~missing], side="right"), minlength=len(edges) + 1)
    return np.append(counts, missing.sum())


def _numeric_shares(numbers: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of rows in each bin between the edges, then the share of missing values."""
    return _numeric_counts(numbers, edges) / max(len(numbers), 1)


def _categorical_reference(values: pd.Series) -> dict[str, Any]:
    counts = _text_counts(values)
    frequent = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:MAX_CATEGORIES]
    categories = sorted(name for name, _ in frequent)
    return {"kind": "categorical", "categories": categories,
            "shares": _categorical_shares(values, categories).tolist()}


def _categorical_counts(values: pd.Series, categories: list[str]) -> np.ndarray:
    """Rows of each category, then of every other category, then missing values."""
    counts = _text_counts(values)
    present = int(counts.sum())
    known = np.array([counts.get(c, 0) for c in categories], dtype=float)
    return np.append(known, [present - known.sum(), len(values) - present])


def _categorical_shares(values: pd.Series, categories: list[str]) -> np.ndarray:
    """Share of rows of each category, then of every other category, then of missing values."""
    return _categorical_counts(values, categories) / max(len(values), 1)


def _text_counts(values: pd.Series) -> pd.Series:
    """Rows per value, keyed by the value as text, missing values left out. Counted in the
    column's own dtype (a categorical's codes, numbers) and only the distinct values turned
    into text: no string object per row (a window's column would be tens of MB of them)."""
    counts = values.value_counts(dropna=True)
    counts = counts[counts > 0]  # a categorical also lists the categories absent from these rows
    counts.index = counts.index.map(str)
    return counts.groupby(level=0).sum()


# -- drift ----------------------------------------------------------------------------------------

def psi(reference: np.ndarray, new: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins."""
    p = np.maximum(np.asarray(reference, dtype=float), FLOOR)
    q = np.maximum(np.asarray(new, dtype=float), FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def drift_report(frame: pd.DataFrame, reference: dict[str, Any], schema: ResolvedSchema) -> DriftReport:
    """The drift of every feature of ``frame`` (and of its label) from ``reference``,
    largest first. Features the reference does not know are left out."""
    return drift_of_counts(drift_counts(frame, reference, schema), len(frame), reference, schema)


def drift_counts(frame: pd.DataFrame, reference: dict[str, Any], schema: ResolvedSchema) -> dict[str, list[float]]:
    """The rows of ``frame`` in each of the reference's bins, per column it knows (features,
    label). Counts of parts add up to those of the whole: rows scored part by part on
    several workers are never gathered to measure their drift."""
    columns = reference.get("columns", {})
    names = [n for n in (*schema.features, schema.target) if n in columns and n in frame]
    return {name: _bin_counts(frame[name], columns[name]).tolist() for name in names}


def add_drift_counts(counts: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """The bin counts of several parts of the same rows' columns, added up."""
    total: dict[str, np.ndarray] = {}
    for part in counts:
        for name, values in part.items():
            total[name] = total.get(name, 0) + np.asarray(values, dtype=float)
    return {name: values.tolist() for name, values in total.items()}


def drift_of_counts(counts: dict[str, list[float]], rows: int, reference: dict[str, Any],
                    schema: ResolvedSchema) -> DriftReport:
    """The drift report of ``rows`` rows whose bin counts (``drift_counts``) are ``counts``."""
    columns = reference.get("columns", {})

    def drift(name: str) -> float:
        return round(psi(np.asarray(columns[name]["shares"]), np.asarray(counts[name]) / max(rows, 1)), 6)

    scores = {name: drift(name) for name in schema.features if name in counts}
    label = drift(schema.target) if schema.target in counts else None
    ordered = dict(sorted(scores.items(), key=lambda item: -item[1]))
    return DriftReport(statistic=reference.get("statistic", "psi"), scores=ordered, label=label, rows=rows)


def _bin_counts(values: pd.Series, ref: dict[str, Any]) -> np.ndarray:
    if ref["kind"] == "numeric":
        numbers = pd.to_numeric(values.astype(object) if isinstance(values.dtype, pd.CategoricalDtype) else values,
                                errors="coerce").to_numpy(dtype=float)
        return _numeric_counts(numbers, np.asarray(ref["edges"], dtype=float))
    return _categorical_counts(values, ref["categories"])


# -- the monitor step ------------------------------------------------------------------------------

def monitor_champion(champion: ModelVersion, file_ids: list[int], paths: list[str], schema: ResolvedSchema,
                     metric: str, min_live_rows: int, registry: ModelRegistry, trusted_types: list[str],
                     threads: int = 0, outputs_dir: str | None = None
                     ) -> tuple[LiveMetric | None, DriftReport | None, str]:
    """(live metric, drift, a note when the champion cannot score these rows): the champion
    scored on every row of ``paths`` (the partitions of ``file_ids``), and their drift from
    its reference statistics. Its outputs on the holdout rows are kept in ``outputs_dir``,
    where evaluation looks for them, so a run that goes on to train scores them only once."""
    frames = [(path, load_partitions([path], [*schema.features, schema.target, HOLDOUT_COLUMN]))
              for path in paths]
    frames = [(path, frame) for path, frame in frames if len(frame)]
    if not frames:
        return None, None, ""
    try:
        model_file = registry.model_file(champion.version)
        with model_threads(threads):
            model = loaded(model_file, tuple(trusted_types))  # kept loaded for the next batches
            outputs = [_outputs_keeping_holdout(model, model_file.key, path, frame, schema, outputs_dir)
                       for path, frame in frames]
    except (KeyError, ValueError, RegistryIntegrityError) as exc:
        return None, None, f"champion {champion.version} cannot score the new rows: {first_line(exc)}"
    joined = {key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]}
    rows = pd.concat([frame for _, frame in frames], ignore_index=True)
    values = metrics(joined, rows[schema.target].astype(object), schema, classes_of(model))
    value = values.get(metric)
    live = LiveMetric(version=champion.version, metric=metric,
                      value=None if value is None or np.isnan(value) else value, rows=len(rows),
                      metrics=values, file_ids=file_ids, enough=len(rows) >= min_live_rows)
    reference = champion.lineage.get("reference")
    drift = drift_report(rows, reference, schema) if reference else None
    return live, drift, ""


def _outputs_keeping_holdout(model, model_key: str, path: str, frame: pd.DataFrame,
                             schema: ResolvedSchema, outputs_dir: str | None) -> dict[str, np.ndarray]:
    outputs = model_outputs(model, frame, schema)
    if outputs_dir:
        kept = kept_outputs_path(outputs_dir, model_key, path)
        if not kept.exists():
            holdout = frame[HOLDOUT_COLUMN].to_numpy(dtype=bool)
            save_outputs(kept, {key: value[holdout] for key, value in outputs.items()})
    return outputs
