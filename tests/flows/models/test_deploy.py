"""Deployment: the post-deploy check and the rollback."""

from __future__ import annotations

from pathlib import Path

import pytest
from flow_fixtures import (
    CLASSIFY,
    TRAINED,
    registry_of,
)

from core.errors import (
    DeployError,
)
from core.files import sha256_file
from core.records import TrainResult
from core.specs import EvaluationSpec
from flows.data.window import Window
from flows.judging.evaluate import evaluate_against_champion
from flows.models.deploy import post_deploy_check, rollback


def test_post_deploy_check_passes_then_catches_a_different_model(tmp_path: Path, trained) -> None:
    model, paths = trained
    registry = registry_of(tmp_path / "registry", model, 1)
    window = Window(paths, CLASSIFY)
    candidate = TrainResult.model_validate({**TRAINED, "model_path": str(model), "model_sha256": sha256_file(model)})
    result = evaluate_against_champion(candidate, None, window, EvaluationSpec(), registry, [])
    registry.promote("v0001")
    post_deploy_check(registry, "v0001", window, result, [])
    with pytest.raises(DeployError, match="current is v0001, expected v0002"):
        post_deploy_check(registry, "v0002", window, result, [])
    with pytest.raises(DeployError, match="evaluation measured"):
        post_deploy_check(registry, "v0001", window, result.model_copy(update={"check_value": result.check_value - 0.01}), [])


def test_rollback_restores_the_previous_current(tmp_path: Path, trained) -> None:
    model, _ = trained
    registry = registry_of(tmp_path / "registry", model, 2)
    registry.promote("v0001")
    previous = registry.promote("v0002")
    rollback(registry, previous, "v0002")
    assert registry.current_version() == "v0001" and registry.get("v0002").decision == "deploy_failed"
    fresh = registry_of(tmp_path / "fresh", model, 1)
    fresh.promote("v0001")
    rollback(fresh, None, "v0001")
    assert fresh.current_version() is None
