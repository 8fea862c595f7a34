"""The model search as plain functions: candidates cross-validated on folds of the training
rows, the best chosen, the holdout never used to choose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import TrainingError
from core.files import sha256_file
from core.records import FileRef, ResolvedSchema
from core.specs import DEFAULT_CANDIDATES, ModelSpec, PipelineSpec
from flows.data.preprocess import plan_partitions, preprocess_partition
from flows.data.window import Window, is_validation, validation_position
from flows.training.search import choose, cross_validate, fold_of_rows, start_order

# The label is 1 when |x| > 1: a tree model finds it, a linear model cannot (AUC ~0.5).
SCHEMA = ResolvedSchema(target="label", task="classification", numeric=["x", "noise"], categorical=["group"],
                        max_bad_row_fraction=0.05)


@pytest.fixture(scope="module")
def window(tmp_path_factory) -> Window:
    folder = tmp_path_factory.mktemp("search")
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1.2, 4000)
    frame = pd.DataFrame({"x": x.round(3), "noise": rng.normal(size=4000).round(3),
                          "group": rng.choice(["a", "b"], 4000), "label": (np.abs(x) > 1).astype(int)})
    csv = folder / "ring.csv"
    frame.to_csv(csv, index=False)
    ref = FileRef(file_id=1, name=csv.name, path=str(csv), sha256=sha256_file(csv), size=csv.stat().st_size)
    return Window([preprocess_partition(plan_partitions(ref, 200_000)[0], SCHEMA, folder / "cache", 0.2).parquet_path],
                  SCHEMA)


def test_the_clearly_better_candidate_is_chosen_by_cross_validation(window: Window) -> None:
    spec = ModelSpec(threads=1, candidates=[{"estimator": "logistic_regression"},
                                            {"estimator": "hist_gradient_boosting", "params": {"max_iter": 30}}])
    specs = spec.candidate_specs()
    best, scores = choose(specs, [cross_validate(window, s) for s in specs], "roc_auc")
    linear, boosted = scores
    assert (best, linear.estimator, linear.chosen, boosted.estimator, boosted.chosen) == \
        (1, "logistic_regression", False, "hist_gradient_boosting", True)
    assert boosted.validation["roc_auc"] > 0.95 > 0.7 > linear.validation["roc_auc"]
    # Validated on the training rows only: the holdout is no part of the choice.
    assert boosted.validation_rows == len(window.training_rows()) < len(window.training_rows()) + \
        len(window.holdout_rows())


def test_the_folds_cut_the_training_rows_evenly_and_the_first_is_the_validation_split(window: Window) -> None:
    training = window.training_rows()
    fold = fold_of_rows(validation_position(training, window.columns), 4)
    sizes = np.bincount(fold, minlength=4)
    assert len(sizes) == 4 and sizes.min() > 0.2 * len(training) and sizes.max() < 0.3 * len(training)
    assert ((fold == 0) == is_validation(training, window.columns, 0.25)).all()


def test_a_window_of_numbers_alone_has_a_validation_split(tmp_path: Path) -> None:
    # No text column, not even the target: the split must not fall back on the holdout's hash.
    schema = ResolvedSchema(target="y", task="regression", numeric=["a", "b"], categorical=[],
                            max_bad_row_fraction=0.05)
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"a": rng.normal(size=3000).round(3), "b": rng.integers(0, 9, 3000)})
    frame["y"] = (frame.a * 2 + frame.b + rng.normal(size=3000)).round(3)
    csv = tmp_path / "numbers.csv"
    frame.to_csv(csv, index=False)
    ref = FileRef(file_id=1, name=csv.name, path=str(csv), sha256=sha256_file(csv), size=csv.stat().st_size)
    window = Window([preprocess_partition(plan_partitions(ref, 200_000)[0], schema, tmp_path / "cache",
                                          0.2).parquet_path], schema)
    training = len(window.training_rows())
    validation = len(window.training_rows(validation=True, fraction=0.25))
    assert 0.2 * training < validation < 0.3 * training


def test_failed_candidates_are_recorded_and_all_failing_raises(window: Window) -> None:
    spec = ModelSpec(threads=1, candidates=[{"estimator": "hist_gradient_boosting"}, {"estimator": "logistic_regression"}])
    specs = spec.candidate_specs()
    ok = cross_validate(window, specs[1])
    best, scores = choose(specs, [TrainingError("only one class (0) in the training window"), ok], "roc_auc")
    assert best == 1 and [c.error for c in scores] == ["only one class (0) in the training window", None]
    with pytest.raises(TrainingError, match="only one class"):
        choose(specs, [TrainingError("only one class (0) in the training window"), ValueError("x")], "roc_auc")
    # Validation scores that say nothing (no validation rows) choose nothing either.
    empty = ok.model_copy(update={"validation": {}})
    with pytest.raises(TrainingError, match="no candidate of the model search has a validation roc_auc"):
        choose(specs, [empty, empty], "roc_auc")


def test_default_candidate_lists_are_valid_and_the_default_config_has_none() -> None:
    assert PipelineSpec().model.candidates == []
    for task, candidates in DEFAULT_CANDIDATES.items():
        spec = PipelineSpec.model_validate({"schema": {"task": task, "target": "y"}, "model": {"candidates": candidates}})
        assert len(spec.model.candidate_specs()) == len(candidates) >= 2
    with pytest.raises(ValueError, match=r"model.candidates\[0\].estimator 'logistic_regression' has no regression"):
        PipelineSpec.model_validate({"schema": {"task": "regression", "target": "y"},
                                     "model": {"candidates": [{"estimator": "logistic_regression"}]}})


def test_candidates_start_longest_first_by_the_last_search_and_untimed_ones_before_all() -> None:
    specs = ModelSpec.model_validate({"candidates": DEFAULT_CANDIDATES["classification"]}).candidate_specs()
    previous = [{"estimator": s.estimator, "params": s.params, "fit_seconds": seconds}
                for s, seconds in zip(specs, [2.2, 4.0, 0.8, 3.9])]
    assert start_order(specs, [0, 1, 2, 3], previous) == [1, 3, 0, 2]
    assert start_order(specs, [0, 1, 2, 3], None) == [0, 1, 2, 3]  # no record: config order
    # A configuration changed since (not timed) goes first; a failed record counts as untimed.
    changed = [dict(p) for p in previous]
    changed[2]["params"] = {"C": 0.5}
    changed[0] = {**changed[0], "error": "boom", "fit_seconds": 0.0}
    assert start_order(specs, [0, 1, 2, 3], changed) == [0, 2, 1, 3]
