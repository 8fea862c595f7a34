"""The paired comparison of candidate and champion, and the gate that judges by it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.records import ResolvedSchema
from core.specs import EvaluationSpec
from flows.judging.compare import paired_comparison, row_statistics
from flows.judging.evaluate import decide
from flows.models.scoring import metrics

CLASSES = ResolvedSchema(target="y", task="classification", numeric=["x"], categorical=[], max_bad_row_fraction=0.1)
REGRESS = CLASSES.model_copy(update={"task": "regression"})


def binary(n: int = 4000, seed: int = 0, noise: float = 0.0):
    """Labels, and the outputs of a model whose scores carry them (plus ``noise``)."""
    rng = np.random.default_rng(seed)
    y = pd.Series(rng.integers(0, 2, n)).astype(str)
    score = np.clip(0.35 + 0.3 * y.astype(int) + rng.normal(0, 0.2 + noise, n), 0, 1)
    return y, {"predicted": np.where(score > 0.5, "1", "0"), "scores": np.column_stack([1 - score, score])}


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "f1", "roc_auc"])
def test_row_statistics_give_back_the_metric_of_every_row(metric: str) -> None:
    y, outputs = binary()
    rows, value = row_statistics(metric, outputs, y, CLASSES, ["0", "1"])
    assert value(rows.sum(axis=0, keepdims=True))[0] == pytest.approx(metrics(outputs, y, CLASSES, ["0", "1"])[metric])


def test_row_statistics_of_multiclass_and_regression_metrics() -> None:
    rng = np.random.default_rng(1)
    y = pd.Series(rng.integers(0, 3, 3000)).astype(str)
    proba = rng.dirichlet([1, 1, 1], 3000)
    proba[np.arange(3000), y.astype(int)] += 0.6
    proba /= proba.sum(axis=1, keepdims=True)
    outputs = {"predicted": np.array(["0", "1", "2"])[proba.argmax(axis=1)], "scores": proba}
    expected = metrics(outputs, y, CLASSES, ["0", "1", "2"])
    for metric in ("accuracy", "balanced_accuracy", "f1", "roc_auc"):
        rows, value = row_statistics(metric, outputs, y, CLASSES, ["0", "1", "2"])
        assert value(rows.sum(axis=0, keepdims=True))[0] == pytest.approx(expected[metric]), metric
    truth = pd.Series(rng.normal(size=3000))
    outputs = {"predicted": truth.to_numpy() + rng.normal(0, 0.5, 3000)}
    expected = metrics(outputs, truth, REGRESS, [])
    for metric in ("r2", "rmse", "mae"):
        rows, value = row_statistics(metric, outputs, truth, REGRESS, [])
        assert value(rows.sum(axis=0, keepdims=True))[0] == pytest.approx(expected[metric]), metric


def compare(candidate, champion, y, metric="roc_auc", must_show="not_worse"):
    stats = [row_statistics(metric, o, y, CLASSES, ["0", "1"]) for o in (candidate, champion)]
    values = [metrics(o, y, CLASSES, ["0", "1"])[metric] for o in (candidate, champion)]
    return paired_comparison(metric, values[0] - values[1], *stats, 0.95, must_show), values


def test_the_same_model_differs_by_nothing_and_the_interval_is_seeded() -> None:
    y, outputs = binary()
    same, _ = compare(outputs, outputs, y)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    _, noisier = binary(noise=0.1)
    first, _ = compare(noisier, outputs, y)
    again, _ = compare(noisier, outputs, y)
    assert first == again and first.low < first.difference < first.high < 0


def test_a_difference_within_noise_is_not_worse_but_not_better() -> None:
    """The run the gate was fooled by: roc_auc 0.005 below the champion, tolerance 0."""
    y, _ = binary(n=3000, seed=2)

    def model(seed: int) -> dict:  # two models as good as each other, with their own errors
        score = np.clip(0.35 + 0.3 * y.astype(int) + np.random.default_rng(seed).normal(0, 0.2, len(y)), 0, 1)
        return {"predicted": np.where(score > 0.5, "1", "0"), "scores": np.column_stack([1 - score, score])}

    comparison, (value, champ) = compare(model(104), model(100), y)
    assert -0.006 < comparison.difference < -0.004 and comparison.low < 0 < comparison.high

    # Non-inferiority is not shown with no margin at all: the interval reaches below 0.
    spec = EvaluationSpec(threshold=0.6, tolerance=0.0)
    gate = decide({"roc_auc": value}, {"roc_auc": champ}, spec, "classification", len(y), "v0001", comparison)
    assert not gate.deploy and "not shown non-inferior" in gate.reason and "95% interval" in gate.reason
    # A margin the interval's lower bound stays above shows it.
    wide = EvaluationSpec(threshold=0.6, tolerance=round(-comparison.low + 0.001, 4))
    gate = decide({"roc_auc": value}, {"roc_auc": champ}, wide, "classification", len(y), "v0001", comparison)
    assert gate.deploy and "shown not worse by more than the margin" in gate.reason

    better = EvaluationSpec(threshold=0.6, must_show="better")
    comparison = comparison.model_copy(update={"must_show": "better"})
    refused = decide({"roc_auc": value}, {"roc_auc": champ}, better, "classification", len(y), "v0001", comparison)
    assert not refused.deploy and "not shown better" in refused.reason


def test_a_clear_difference_decides_both_ways() -> None:
    y, good = binary(seed=4)
    _, poor = binary(seed=4, noise=0.3)
    worse, (value, champ) = compare(poor, good, y)
    assert worse.high < 0
    refused = decide({"roc_auc": value}, {"roc_auc": champ}, EvaluationSpec(threshold=0.5), "classification",
                     len(y), "v0001", worse)
    assert not refused.deploy and "worse than the champion by more than the margin 0.0100" in refused.reason
    better, (value, champ) = compare(good, poor, y, must_show="better")
    assert better.low > 0
    assert decide({"roc_auc": value}, {"roc_auc": champ}, EvaluationSpec(threshold=0.5, must_show="better"),
                  "classification", len(y), "v0001", better).deploy


def test_lower_is_better_metrics_are_compared_the_right_way_round() -> None:
    rng = np.random.default_rng(5)
    truth = pd.Series(rng.normal(size=3000))
    close, far = ({"predicted": truth.to_numpy() + rng.normal(0, s, 3000)} for s in (0.3, 0.6))
    stats = [row_statistics("rmse", o, truth, REGRESS, []) for o in (close, far)]
    values = [metrics(o, truth, REGRESS, [])["rmse"] for o in (close, far)]
    comparison = paired_comparison("rmse", values[0] - values[1], *stats, 0.95, "better")
    assert comparison.high < 0  # the candidate's error is lower
    spec = EvaluationSpec(metric="rmse", threshold=1.0, must_show="better")
    assert decide({"rmse": values[0]}, {"rmse": values[1]}, spec, "regression", 3000, "v0001", comparison).deploy
