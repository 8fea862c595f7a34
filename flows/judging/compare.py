"""Candidate against champion on the same rows: a paired bootstrap of the metric's difference.

A difference of 0.004 in roc_auc between two models on a few thousand rows is often noise.
The gate therefore looks at an interval of the difference, not at the difference alone.

Every metric of the task is a function of sums of per-row statistics (accuracy: the correct
rows; f1: true positives, false positives, false negatives; r2: squared errors, y and y²;
roc_auc: each row's placement value among the other class, the linearisation DeLong's test
of paired AUCs rests on). The rows are dealt into ``BLOCKS`` random blocks (seeded), and the
blocks are resampled with replacement, the same resample for both models: that is the
pairing. The cost depends on the number of blocks and resamples, not on the holdout's size.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from core.records import PairedComparison, ResolvedSchema

BLOCKS = 1000
SAMPLES = 2000
SEED = 0  # the same models on the same rows always give the same interval

# Per-row statistics (n rows x k) and the metric from their sums (B resamples x k -> B).
Statistics = tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]


def paired_comparison(metric: str, difference: float, candidate: Statistics, champion: Statistics,
                      confidence: float, must_show: str, samples: int = SAMPLES,
                      seed: int = SEED) -> PairedComparison:
    """The bootstrap interval of (candidate - champion) at ``confidence``; ``difference``
    is the exact difference of the two models' metrics on all the rows."""
    (cand_rows, cand_value), (champ_rows, champ_value) = candidate, champion
    n = len(cand_rows)
    rng = np.random.default_rng(seed)
    blocks = min(n, BLOCKS)
    block_of = np.empty(n, dtype=np.int64)
    block_of[rng.permutation(n)] = np.arange(n) % blocks
    counts = _resample_counts(rng, blocks, samples)
    with np.errstate(divide="ignore", invalid="ignore"):
        diffs = (cand_value(counts @ _block_sums(cand_rows, block_of, blocks))
                 - champ_value(counts @ _block_sums(champ_rows, block_of, blocks)))
    diffs = diffs[np.isfinite(diffs)]
    tail = (1.0 - confidence) / 2
    low, high = (np.quantile(diffs, [tail, 1.0 - tail]) if len(diffs) else (np.nan, np.nan))
    return PairedComparison(metric=metric, difference=float(difference), low=float(low), high=float(high),
                            confidence=confidence, samples=samples, must_show=must_show)


def _resample_counts(rng: np.random.Generator, blocks: int, samples: int) -> np.ndarray:
    """How often each block is drawn in each resample (samples x blocks)."""
    drawn = rng.integers(0, blocks, size=(samples, blocks)) + blocks * np.arange(samples)[:, None]
    return np.bincount(drawn.ravel(), minlength=samples * blocks).reshape(samples, blocks).astype(float)


def _block_sums(rows: np.ndarray, block_of: np.ndarray, blocks: int) -> np.ndarray:
    return np.stack([np.bincount(block_of, weights=rows[:, j], minlength=blocks)
                     for j in range(rows.shape[1])], axis=1)


def row_statistics(metric: str, outputs: dict[str, np.ndarray], y: pd.Series, schema: ResolvedSchema,
                   model_classes: list[str]) -> Statistics | None:
    """A metric as sums of per-row statistics of one model's outputs (see the module's
    docstring); None when the metric cannot be computed on these rows."""
    predicted = outputs["predicted"]
    if schema.task == "regression":
        return _regression(metric, np.asarray(predicted, dtype=float), y.astype(float).to_numpy())
    y_text = y.astype(str).to_numpy()
    if metric == "accuracy":
        return _columns(predicted == y_text), lambda s: s[:, 0] / s[:, 1]
    if metric == "balanced_accuracy":
        labels = np.unique(y_text)
        return _per_label([(predicted == y_text) & (y_text == c) for c in labels],
                          [y_text == c for c in labels])
    if metric == "f1":
        return _f1(predicted, y_text, sorted(set(model_classes)) if model_classes else sorted(set(y_text)))
    if metric == "roc_auc" and "scores" in outputs:
        return _roc_auc(outputs["scores"], model_classes, y_text)
    return None


def chance_outputs(y: pd.Series, schema: ResolvedSchema, model_classes: list[str]) -> dict[str, np.ndarray]:
    """The outputs of a model that learned nothing, on the rows of ``y``: scikit-learn's
    DummyClassifier(strategy="prior") / DummyRegressor() fitted on these very rows (the
    share of each class as every row's scores and the most frequent class as its
    prediction; the mean as every prediction). Knowing the rows' own balance and mean is
    the best such a model can do, so beating it is a fair test of "better than chance"."""
    n = len(y)
    if schema.task == "regression":
        return {"predicted": np.full(n, float(y.astype(float).mean()) if n else 0.0)}
    y_text = y.astype(str).to_numpy()
    classes = model_classes or sorted(set(y_text))
    shares = np.array([(y_text == c).mean() if n else 0.0 for c in classes])
    scores = np.tile(shares, (n, 1))
    return {"predicted": np.full(n, classes[int(np.argmax(shares))], dtype=object).astype(str),
            "scores": scores}


def _columns(*columns) -> np.ndarray:
    """Per-row statistics as a float matrix, with a last column of ones (the row count)."""
    return np.column_stack([*(np.asarray(c, dtype=float) for c in columns), np.ones(len(columns[0]))])


def _regression(metric: str, predicted: np.ndarray, y: np.ndarray) -> Statistics | None:
    error = predicted - y
    if metric == "rmse":
        return _columns(error ** 2), lambda s: np.sqrt(s[:, 0] / s[:, 1])
    if metric == "mae":
        return _columns(np.abs(error)), lambda s: s[:, 0] / s[:, 1]
    if metric == "r2":
        return _columns(error ** 2, y, y ** 2), lambda s: 1 - s[:, 0] / (s[:, 2] - s[:, 1] ** 2 / s[:, 3])
    return None


def _per_label(hits: list[np.ndarray], totals: list[np.ndarray]) -> Statistics:
    """The mean over labels of hits/total (labels absent from a resample left out)."""
    k = len(hits)

    def value(s: np.ndarray) -> np.ndarray:
        total = s[:, k:2 * k]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(total > 0, s[:, :k] / total, np.nan)
        return np.nanmean(ratio, axis=1)

    return _columns(*hits, *totals), value


def _f1(predicted: np.ndarray, y: np.ndarray, classes: list[str]) -> Statistics:
    """Binary: the f1 of the positive class (the last of the sorted classes); multiclass:
    the mean f1 over the labels seen, as in ``flows.judging.evaluate.metrics``."""
    labels = [classes[-1]] if len(classes) == 2 else sorted(set(y) | set(predicted))
    k = len(labels)
    stats = []
    for label in labels:
        stats += [(predicted == label) & (y == label), (predicted == label) & (y != label),
                  (predicted != label) & (y == label)]

    def value(s: np.ndarray) -> np.ndarray:
        tp, fp, fn = s[:, 0:3 * k:3], s[:, 1:3 * k:3], s[:, 2:3 * k:3]
        denominator = 2 * tp + fp + fn
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denominator > 0, 2 * tp / denominator, 0.0).mean(axis=1)

    return _columns(*stats), value


def _roc_auc(scores: np.ndarray, model_classes: list[str], y: np.ndarray) -> Statistics | None:
    """Binary: the AUC of the second class's score; multiclass: the mean one-vs-rest AUC of
    the classes present (probabilities renormalised over them), as ``flows.judging.evaluate`` does."""
    if len(model_classes) == 2:
        column = scores[:, 1] if scores.ndim == 2 else scores
        return _auc_parts([(column, y == model_classes[1])])
    if scores.ndim != 2 or set(y) - set(model_classes):
        return None
    present = [i for i, c in enumerate(model_classes) if c in set(y)]
    if len(present) < 2:
        return None
    proba = scores[:, present] / scores[:, present].sum(axis=1, keepdims=True)
    return _auc_parts([(proba[:, j], y == model_classes[i]) for j, i in enumerate(present)])


def _auc_parts(pairs: list[tuple[np.ndarray, np.ndarray]]) -> Statistics | None:
    """The mean AUC of (score, is_positive) pairs, each linearised: AUC* ~ mean* over the
    positives of their placement among the negatives + mean* over the negatives of theirs
    among the positives - AUC."""
    columns, aucs = [], []
    for score, positive in pairs:
        n1, n0 = int(positive.sum()), int((~positive).sum())
        if n1 == 0 or n0 == 0:
            return None
        placement = np.empty(len(score))
        placement[positive] = _share_below(score[positive], np.sort(score[~positive]))
        placement[~positive] = 1.0 - _share_below(score[~positive], np.sort(score[positive]))
        aucs.append(placement[positive].mean())
        columns += [placement * positive, positive, placement * ~positive, ~positive]
    k = len(pairs)
    auc = np.array(aucs)

    def value(s: np.ndarray) -> np.ndarray:
        parts = s[:, :4 * k].reshape(len(s), k, 4)
        return (parts[:, :, 0] / parts[:, :, 1] + parts[:, :, 2] / parts[:, :, 3] - auc).mean(axis=1)

    return _columns(*columns), value


def _share_below(values: np.ndarray, others_sorted: np.ndarray) -> np.ndarray:
    """For each value: the share of ``others`` below it, ties counted half."""
    below = np.searchsorted(others_sorted, values, side="left")
    not_above = np.searchsorted(others_sorted, values, side="right")
    return (below + not_above) / (2.0 * len(others_sorted))
