"""Predictions of a model on prepared rows: what its own predict() says, with its probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flow_fixtures import CLASSIFY, load, partitions

from core.specs import ModelSpec
from flows.data.window import Window
from flows.models.predict import predict_frame
from flows.training.train import train_candidate


@pytest.mark.parametrize("estimator", ["hist_gradient_boosting", "logistic_regression"])
def test_predictions_are_the_models_own_beside_its_probabilities(tmp_path: Path, estimator: str) -> None:
    window = Window(partitions(tmp_path / "data", CLASSIFY, rows=3000, seed=4), CLASSIFY)
    model = load(train_candidate(window, ModelSpec(estimator=estimator), tmp_path / "model.skops"))
    rows = window.holdout_rows()[CLASSIFY.features]
    result = predict_frame(model, rows, "classification")
    assert list(result["prediction"]) == list(model.predict(rows))
    proba = model.predict_proba(rows)
    assert list(result.columns) == ["prediction", *(f"probability_{c}" for c in model.classes_)]
    np.testing.assert_array_equal(result[[f"probability_{c}" for c in model.classes_]].to_numpy(), proba)
