"""The metric of a scoring batch estimated before its labels arrive, from the model's own
confidence (confidence-based performance estimation, CBPE, as NannyML calls it).

For a binary classifier whose probabilities are calibrated, a row predicted with probability
p of the positive class is a true positive with probability p at any threshold under p, a
false positive with probability 1 - p. Summing these expectations over the rows gives the
expected confusion matrix at every threshold, hence an expected ROC curve and its AUC, and
the expected accuracy (the mean probability of the predicted class). It is an estimate, and
only as good as the calibration: the labels run checks it against the production metric of
the same rows once their labels come (``labels.production_metrics``: ``estimated`` beside
``value`` for each scoring file).
"""

from __future__ import annotations

import numpy as np


def estimated_metrics(positive: np.ndarray) -> dict[str, float]:
    """Expected roc_auc and accuracy of a binary classifier from its probabilities of the
    positive class; {} when they cannot be estimated (no rows, or no uncertainty left)."""
    p = np.asarray(positive, dtype=float)
    p = p[np.isfinite(p)]
    if len(p) == 0:
        return {}
    order = np.argsort(-p, kind="stable")
    ranked = p[order]
    # Thresholds at each distinct probability, highest first: the expected true and false
    # positives of predicting "positive" for every row at or above it.
    last_of_value = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    tp, fp = np.cumsum(ranked)[last_of_value], np.cumsum(1 - ranked)[last_of_value]
    positives, negatives = ranked.sum(), (1 - ranked).sum()
    estimates = {"accuracy": float(np.mean(np.maximum(p, 1 - p)))}
    if positives > 0 and negatives > 0:
        tpr, fpr = np.r_[0.0, tp / positives], np.r_[0.0, fp / negatives]
        estimates["roc_auc"] = float(np.trapezoid(tpr, fpr))
    return estimates
