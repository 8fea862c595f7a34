"""The metric estimated from a calibrated model's confidence, checked on labels drawn from
those very probabilities (the truth is known: the estimate must land near it)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from flows.production.estimate import estimated_metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_estimate_of_a_calibrated_model_lands_near_the_truth(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-rng.normal(0, 1.5, 50_000)))
    y = rng.random(len(p)) < p  # the labels the probabilities promise
    estimated = estimated_metrics(p)
    assert estimated["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=0.01)
    assert estimated["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5), abs=0.01)


def test_an_overconfident_model_is_estimated_too_well_which_the_labels_then_show() -> None:
    rng = np.random.default_rng(3)
    true_p = 1 / (1 + np.exp(-rng.normal(0, 1.0, 50_000)))
    y = rng.random(len(true_p)) < true_p
    overconfident = 1 / (1 + np.exp(-4 * np.log(true_p / (1 - true_p))))
    assert estimated_metrics(overconfident)["accuracy"] > accuracy_score(y, overconfident >= 0.5) + 0.1


def test_no_rows_or_no_uncertainty_gives_what_can_be_said() -> None:
    assert estimated_metrics(np.array([])) == {}
    assert "roc_auc" not in estimated_metrics(np.ones(10))
