"""Deployment: switch ``current`` to a new version, check it, roll back if the check fails."""

from __future__ import annotations

import math

from flows.errors import DeployError, RetrainError
from flows.evaluate import check_score
from flows.records import ResolvedSchema
from flows.registry import ModelRegistry


def post_deploy_check(registry: ModelRegistry, version: str, parquet_paths: list[str],
                      schema: ResolvedSchema, metric: str, expected: float | None, rows: int,
                      trusted_types: list[str], threads: int = 0) -> None:
    """Load ``current`` from disk (sha256 checked), make sure it is ``version``, score the
    first ``rows`` holdout rows and compare with what evaluation measured on the same rows."""
    from flows.train import model_threads, training_frame

    current = registry.current_version()
    if current != version:
        raise DeployError(f"post-deploy check: current is {current}, expected {version}")
    try:
        model = registry.load_model(current, trusted_types)
    except RetrainError as exc:
        raise DeployError(f"post-deploy check: {version} cannot be loaded: {exc}") from None
    # Only the partitions that hold the first ``rows`` holdout rows are read.
    first_rows = training_frame(parquet_paths, schema, holdout=True, limit=rows)
    with model_threads(threads):  # as in evaluation, so the numbers can match exactly
        value = check_score(model, first_rows, schema, metric,
                            lambda: training_frame(parquet_paths, schema, holdout=True))
    if expected is None or math.isnan(value) or abs(value - expected) > 1e-9:
        raise DeployError(f"post-deploy check: deployed {version} scores {metric} {value:.6f} on "
                          f"{len(first_rows)} holdout rows, evaluation measured {expected}")


def deploy_model(registry: ModelRegistry, version: str, holder: str) -> str | None:
    """Promote ``version`` if the run ``holder`` still holds the registry's deploy lease;
    returns the previous current version for rollback."""
    current_holder = registry.lease_holder()
    if current_holder != holder:
        raise DeployError(f"not deploying {version}: its run {holder} no longer holds the registry "
                          f"(lease: {current_holder or 'released'}); the daemon that started it stopped "
                          "or another run took over")
    return registry.promote(version)


def rollback(registry: ModelRegistry, previous: str | None, failed: str) -> None:
    """Put ``current`` back to ``previous`` (or remove it when there was none) and mark
    ``failed`` as deploy_failed."""
    if previous is None:
        registry.unset_current()
    else:
        registry.promote(previous)
    registry.update(failed, decision="deploy_failed")
