"""Training: the Pipeline fitted on the window's training rows, as a plain function on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flow_fixtures import (
    CLASSIFY,
    FAST,
    REGRESS,
    load,
    partitions,
)

from core.errors import (
    ConfigError,
    TrainingError,
)
from core.files import sha256_file
from core.records import FileRef
from core.specs import ModelSpec
from flows.data.preprocess import plan_partitions, preprocess_partition
from flows.data.window import Window
from flows.models.scoring import score
from flows.training.train import build_estimator, early_stopping_split, train_candidate
from service.sample import sample_frame


def test_training_is_deterministic_and_scores_well(tmp_path: Path) -> None:
    paths = partitions(tmp_path, CLASSIFY)
    spec = ModelSpec(estimator="random_forest", params={"n_estimators": 20})
    first = train_candidate(Window(paths, CLASSIFY), spec, tmp_path / "a.skops")
    second = train_candidate(Window(paths, CLASSIFY), spec, tmp_path / "b.skops")
    assert first.train_rows == second.train_rows and 3000 < first.train_rows < 3400
    assert first.classes == ["0", "1"] and first.params["random_state"] == 0
    holdout = pd.concat(pd.read_parquet(p) for p in paths)
    holdout = holdout[holdout["__holdout"]]
    a, b = load(first), load(second)
    assert score(a, holdout, CLASSIFY) == score(b, holdout, CLASSIFY)
    assert score(a, holdout, CLASSIFY)["roc_auc"] > 0.75


def test_early_stopping_rows_are_set_apart_as_the_estimator_would_and_placed_last(tmp_path: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    y = np.array([1] * 4000 + [0] * 16000)
    order, fit_rows = early_stopping_split(HistGradientBoostingClassifier(random_state=0), y, "classification")
    assert sorted(order.tolist()) == list(range(20000)) and fit_rows == 18000  # validation_fraction 0.1
    held = y[order[fit_rows:]]
    assert held.sum() == 400  # stratified: a fifth of them positive, as in the whole
    again, _ = early_stopping_split(HistGradientBoostingClassifier(random_state=0), y, "classification")
    assert (again == order).all()
    # No held-out rows where the estimator would not stop early on a fraction of them.
    assert early_stopping_split(HistGradientBoostingClassifier(), y[:10500], "classification") == (None, 10500)
    assert early_stopping_split(HistGradientBoostingClassifier(early_stopping=False), y, "classification") == \
        (None, 20000)
    assert early_stopping_split(HistGradientBoostingClassifier(validation_fraction=None), y, "classification") == \
        (None, 20000)

    # Too few rows of a class to hold some out: no early stopping, said in the params.
    tiny = HistGradientBoostingClassifier(early_stopping=True)
    assert early_stopping_split(tiny, np.array([1] + [0] * 40), "classification") == (None, 41)
    assert tiny.early_stopping is False

    # The default estimator stops early on its held-out rows.
    paths = partitions(tmp_path, CLASSIFY, rows=16000)
    result = train_candidate(Window(paths, CLASSIFY), ModelSpec(), tmp_path / "m.skops")
    estimator = load(result).steps[-1][1]
    assert result.train_rows > 12000 and len(estimator.validation_score_) == estimator.n_iter_ + 1
    assert estimator.n_iter_ < estimator.max_iter  # it stopped before max_iter
    assert result.params["max_depth"] == 3 and result.params["early_stopping"] is True


def test_unknown_estimator_parameter_names_what_is_accepted() -> None:
    with pytest.raises(ConfigError, match=r"model.params max_depht not accepted by LogisticRegression"):
        build_estimator(ModelSpec(estimator="logistic_regression", params={"max_depht": 3}), "classification")
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_estimator(ModelSpec(factory="no_such_module:make"), "classification")


def test_one_class_window_cannot_train(tmp_path: Path) -> None:
    frame = sample_frame(500, 3)
    frame["churned"] = 1
    path = tmp_path / "one.csv"
    frame.to_csv(path, index=False)
    ref = FileRef(file_id=1, name="one.csv", path=str(path), sha256=sha256_file(path), size=path.stat().st_size)
    summary = preprocess_partition(plan_partitions(ref, 200_000)[0], CLASSIFY, tmp_path / "c", 0.2)
    with pytest.raises(TrainingError, match="only one class"):
        train_candidate(Window([summary.parquet_path], CLASSIFY), FAST, tmp_path / "m.skops")


def test_regression_metrics_and_multiclass_auc(tmp_path: Path) -> None:
    paths = partitions(tmp_path, REGRESS)
    result = train_candidate(Window(paths, REGRESS), ModelSpec(estimator="ridge"), tmp_path / "r.skops")
    holdout = pd.concat(pd.read_parquet(p) for p in paths)
    scores = score(load(result), holdout[holdout["__holdout"]], REGRESS)
    assert set(scores) == {"r2", "rmse", "mae"} and scores["r2"] > 0.8 and 0 < scores["mae"] < scores["rmse"]

    multi = CLASSIFY.model_copy(update={"target": "plan", "categorical": ["region"]})
    paths = partitions(tmp_path / "multi", multi, seed=2)
    result = train_candidate(Window(paths, multi), FAST, tmp_path / "m.skops")
    holdout = pd.concat(pd.read_parquet(p) for p in paths)
    scores = score(load(result), holdout[holdout["__holdout"]], multi)
    assert set(scores) == {"accuracy", "balanced_accuracy", "f1", "roc_auc"}
    assert 0.4 < scores["roc_auc"] <= 1.0
