"""The gate: threshold and champion, judged on the same holdout rows."""

from __future__ import annotations

from pathlib import Path

from flow_fixtures import (
    CLASSIFY,
    FAST,
    partitions,
    register,
)

from core.specs import EvaluationSpec
from flows.data.window import Window
from flows.judging.evaluate import decide, evaluate_against_champion
from flows.models.registry import ModelRegistry
from flows.training.train import train_candidate


def test_gate_threshold_and_tolerance_at_the_edge() -> None:
    spec = EvaluationSpec(threshold=0.7, tolerance=0.02)
    first = decide({"roc_auc": 0.75}, None, spec, "classification", 100)
    assert first.deploy and "no champion" in first.reason
    assert not decide({"roc_auc": 0.69}, None, spec, "classification", 100).deploy
    # Exactly at champion - tolerance is "not worse"; a hair below is.
    edge = decide({"roc_auc": 0.78}, {"roc_auc": 0.80}, spec, "classification", 100, "v0001")
    assert edge.deploy, edge.reason
    below = decide({"roc_auc": 0.7799}, {"roc_auc": 0.80}, spec, "classification", 100, "v0001")
    assert not below.deploy and not below.not_worse_than_champion and below.passed_threshold
    assert "worse than the champion" in below.reason and "v0001 0.8000" in below.reason
    nan = decide({"roc_auc": float("nan")}, None, spec, "classification", 100)
    assert not nan.deploy and "could not be computed" in nan.reason


def test_gate_lower_is_better_for_errors() -> None:
    spec = EvaluationSpec(metric="rmse", threshold=10.0, tolerance=0.5)
    assert decide({"rmse": 9.0}, {"rmse": 8.6}, spec, "regression", 50, "v0002").deploy
    worse = decide({"rmse": 9.2}, {"rmse": 8.6}, spec, "regression", 50, "v0002")
    assert not worse.deploy and "9.2000 > champion v0002 8.6000 + margin 0.5000" in worse.reason
    too_high = decide({"rmse": 10.5}, None, spec, "regression", 50)
    assert not too_high.deploy and "rmse 10.5000 > threshold 10.0000" in too_high.reason


def test_candidate_and_champion_scored_on_the_same_rows(tmp_path: Path) -> None:
    paths = partitions(tmp_path, CLASSIFY)
    window = Window(paths, CLASSIFY)
    good = train_candidate(window, FAST, tmp_path / "good.skops")
    noisy_paths = partitions(tmp_path / "noisy", CLASSIFY, seed=5, noise=0.5)
    noisy = train_candidate(Window(noisy_paths, CLASSIFY), FAST, tmp_path / "noisy.skops")
    spec = EvaluationSpec(threshold=0.6)
    registry = ModelRegistry(tmp_path / "registry")
    champion = register(registry, good.model_path)
    result = evaluate_against_champion(noisy, champion, window, spec, registry, [])
    assert not result.deploy and result.champion["roc_auc"] > result.candidate["roc_auc"]
    same = evaluate_against_champion(good, champion, window, spec, registry, [])
    assert same.deploy and same.candidate == same.champion
    assert same.check_rows == min(1000, same.holdout_rows) and same.check_value is not None
