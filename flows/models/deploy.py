"""Deployment: switch ``current`` to a new version, check it, roll back if anything fails."""

from __future__ import annotations

import math

from core.errors import DeployError, RetrainError
from core.records import EvaluationResult
from core.specs import PipelineSpec
from flows.data.window import Window, model_threads
from flows.models.hooks import run_deploy_hooks
from flows.models.registry import ModelRegistry
from flows.models.scoring import check_score, score_window


def deploy_version(registry: ModelRegistry, version: str, window: Window, evaluation: EvaluationResult,
                   pipeline: PipelineSpec, lease: str, previous: str | None) -> str | None:
    """Switch ``current`` from ``previous`` (what it was before the deploy's first attempt)
    to ``version`` (only while the run ``lease`` holds the registry), check what is now on
    disk, run the deploy hooks; on any failure switch back to ``previous``, so that a retry
    (or the end of the retries) starts from the old champion. An attempt that finds
    ``version`` already current (an earlier attempt switched, then failed to report its
    result) checks it again rather than taking it for the champion. Returns ``previous``."""
    switch_current(registry, version, lease)
    try:
        post_deploy_check(registry, version, window, evaluation, pipeline.model.trusted_types,
                          pipeline.model.threads)
        run_deploy_hooks(pipeline.deploy, version, registry.get(version).path)
    except Exception:
        rollback(registry, previous, version)
        raise
    return previous


def post_deploy_check(registry: ModelRegistry, version: str, window: Window,
                      evaluation: EvaluationResult, trusted_types: list[str], threads: int = 0) -> None:
    """Load ``current`` from disk (sha256 checked), make sure it is ``version``, score the
    first holdout rows and compare with what evaluation measured on the same rows."""
    current = registry.current_version()
    if current != version:
        raise DeployError(f"post-deploy check: current is {current}, expected {version}")
    try:
        model = registry.load_model(current, trusted_types)
    except RetrainError as exc:
        raise DeployError(f"post-deploy check: {version} cannot be loaded: {exc}") from None
    # Only the partitions that hold the first rows of the holdout are read.
    first_rows = window.holdout_rows(limit=evaluation.check_rows)
    metric, expected = evaluation.metric, evaluation.check_value
    deployed = registry.model_file(version)

    def whole_window() -> float:  # as evaluation did when the first rows cannot carry the metric
        return score_window(window, [deployed], trusted_types, threads=threads)[1][deployed.key].get(metric, float("nan"))

    with model_threads(threads):  # as in evaluation, so the numbers can match exactly
        value = check_score(model, first_rows, window.schema, metric, whole_window)
    if expected is None or math.isnan(value) or abs(value - expected) > 1e-9:
        raise DeployError(f"post-deploy check: deployed {version} scores {metric} {value:.6f} on "
                          f"{len(first_rows)} holdout rows, evaluation measured {expected}")


def switch_current(registry: ModelRegistry, version: str, holder: str) -> str | None:
    """Promote ``version`` if the run ``holder`` still holds the registry's deploy lease;
    returns the previous current version for rollback."""
    current_holder = registry.lease_holder()
    if current_holder != holder:
        raise DeployError(f"not deploying {version}: its run {holder} no longer holds the registry "
                          f"(lease: {current_holder or 'released'}); the daemon that started it stopped "
                          "or another run took over")
    if registry.current_version() == version:  # an earlier attempt switched already
        return version
    return registry.promote(version)


def undo_switch(registry: ModelRegistry, version: str, previous: str | None) -> str:
    """After a deploy that failed where its attempts could not roll back (their result was
    lost, e.g. with the Prefect API): ``current`` must not stay ``version``. Returns what
    became of it, for the version's reason."""
    if registry.current_version() != version:
        return f"each attempt was rolled back (current is {registry.current_version() or 'unset'})"
    rollback(registry, previous, version)
    return f"rolled back to {previous}" if previous else "rolled back: no version is current"


def rollback(registry: ModelRegistry, previous: str | None, failed: str) -> None:
    """Put ``current`` back to ``previous`` (or remove it when there was none) and mark
    ``failed`` as deploy_failed."""
    if previous is None:
        registry.unset_current()
    else:
        registry.promote(previous)
    registry.update(failed, decision="deploy_failed")
