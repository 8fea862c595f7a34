"""Deployment: switch ``current`` to a new version, check it, roll back if the check fails."""

from __future__ import annotations

from flows.records import ResolvedSchema
from flows.registry import ModelRegistry


def post_deploy_check(registry: ModelRegistry, version: str, parquet_paths: list[str],
                      schema: ResolvedSchema, metric: str, expected: float, rows: int,
                      trusted_types: list[str]) -> None:
    """Load ``current`` from disk (through the symlink, sha256 checked), make sure it is
    ``version``, score the first ``rows`` holdout rows of the window (same order as
    evaluation) and compare with ``expected`` (EvaluationResult.check_value) within 1e-9;
    raise DeployError (one line) on any mismatch or failure."""
    raise NotImplementedError


def deploy_model(registry: ModelRegistry, version: str) -> str | None:
    """Promote ``version``; returns the previous current version for rollback."""
    raise NotImplementedError


def rollback(registry: ModelRegistry, previous: str | None, failed: str) -> None:
    """Put ``current`` back to ``previous`` (or remove it when there was none) and mark
    ``failed`` as deploy_failed."""
    raise NotImplementedError
