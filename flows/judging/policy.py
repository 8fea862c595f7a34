"""Retrain or keep: what the ``[policy]`` section makes of what the monitor found.

With ``retrain = "when_needed"`` a batch trains when any trigger holds, and the run records
which: ``no_champion``; ``operator`` (a run asked for, e.g. ``retrain run`` with no file);
``production_metric`` (judged first: what the champion actually served, joined with the
labels that arrived later, is below ``min_live_metric``, on at least ``min_live_rows``
labelled predictions); ``live_metric`` (the champion's live metric is below ``min_live_metric``, or the champion
cannot score the new rows); ``drift`` (a feature drifted more than ``max_drift``);
``new_rows`` (``max_new_rows`` rows arrived since the champion was trained); ``age`` (the
champion is older than ``max_age``). Otherwise the champion is kept.

The live metric and the drift are judged only on at least ``min_live_rows`` rows: fewer
rows give no verdict, and are scored again with the next batches.

With ``retrain = "always"`` every batch trains (trigger ``always``); the decision still
says what ``when_needed`` would have done, so an operator can see what switching would do.
Plain code, no Prefect.
"""

from __future__ import annotations

from datetime import datetime, timezone

from core.records import (
    DriftReport,
    LiveMetric,
    ModelVersion,
    PolicyDecision,
    ProductionMetric,
)
from core.specs import METRICS, PipelineSpec


def live_bar(spec: PipelineSpec) -> float:
    """The bar of the live metric: ``policy.min_live_metric``, by default the gate's threshold."""
    bar = spec.policy.min_live_metric
    return spec.evaluation.threshold if bar is None else bar


def decide_policy(spec: PipelineSpec, champion: ModelVersion | None, live: LiveMetric | None,
                  drift: DriftReport | None, monitor_note: str = "", new_rows: int = 0,
                  rows_since_champion: int = 0, requested_by: str | None = None,
                  now: datetime | None = None, production: ProductionMetric | None = None) -> PolicyDecision:
    """Retrain or keep this batch, with the triggers that hold and a one-line reason."""
    triggers: dict[str, str] = {}
    if champion is None:
        triggers["no_champion"] = "no model is deployed yet"
    if requested_by:
        triggers["operator"] = f"requested by {requested_by}"
    if champion is not None:
        triggers.update(_production_trigger(spec, champion, production))
        triggers.update(_champion_triggers(spec, champion, live, drift, monitor_note,
                                           rows_since_champion + new_rows, now or datetime.now(timezone.utc)))
    if triggers:
        reason, would = "; ".join(triggers.values()), "retrain: " + "; ".join(triggers.values())
    else:
        kept = _why_kept(spec, champion, live, drift)
        reason, would = f"kept {kept}", f"keep {kept}"
    if spec.policy.retrain == "always":
        return PolicyDecision(retrain=True, triggers=["always", *triggers], reason="policy.retrain is always",
                              when_needed=would)
    return PolicyDecision(retrain=bool(triggers), triggers=list(triggers), reason=reason)


def _production_trigger(spec: PipelineSpec, champion: ModelVersion,
                        production: ProductionMetric | None) -> dict[str, str]:
    """The champion's production metric (what it served, joined with late labels), judged
    first when there is one for it on at least policy.min_live_rows labelled rows."""
    if production is None or production.version != champion.version or not production.enough \
            or production.value is None or _meets(production.metric, production.value, live_bar(spec)):
        return {}
    op = "<" if METRICS[production.metric][1] else ">"
    return {"production_metric": f"production {production.metric} of {champion.version} {production.value:.3f} "
                                 f"on {production.rows:,} labelled predictions {op} {live_bar(spec):g}"}


def _champion_triggers(spec: PipelineSpec, champion: ModelVersion, live: LiveMetric | None,
                       drift: DriftReport | None, monitor_note: str, rows_since: int,
                       now: datetime) -> dict[str, str]:
    policy, found = spec.policy, {}
    if monitor_note:
        found["live_metric"] = monitor_note
    judged = live is not None and live.enough
    if judged and live.value is not None and not _meets(live.metric, live.value, live_bar(spec)):
        op = "<" if METRICS[live.metric][1] else ">"
        found["live_metric"] = (f"live {live.metric} of {champion.version} {live.value:.3f} on "
                                f"{live.rows:,} new rows {op} {live_bar(spec):g}")
    if judged and drift is not None and drift.scores and policy.max_drift is not None:
        feature, score = next(iter(drift.scores.items()))
        if score > policy.max_drift:
            found["drift"] = f"drift {score:.3f} ({feature}) > max_drift {policy.max_drift:g}"
    if policy.max_new_rows and rows_since >= policy.max_new_rows:
        found["new_rows"] = (f"{rows_since:,} rows arrived since {champion.version} was trained "
                             f">= max_new_rows {policy.max_new_rows:,}")
    age = (now - datetime.fromisoformat(champion.created_at)).total_seconds()
    if policy.max_age_seconds is not None and age > policy.max_age_seconds:
        found["age"] = f"{champion.version} is {_duration(age)} old > max_age {policy.max_age}"
    return found


def _meets(metric: str, value: float, bar: float) -> bool:
    return value >= bar if METRICS[metric][1] else value <= bar


def _why_kept(spec: PipelineSpec, champion: ModelVersion | None, live: LiveMetric | None,
              drift: DriftReport | None) -> str:
    """Why nothing triggers, with the numbers, after "kept": e.g. "v0003: accuracy 0.951 on
    5,000 new rows >= 0.92; largest drift 0.04 (income) <= 0.2"."""
    version = champion.version if champion else "the champion"
    if live is None:
        return f"{version}: no new rows to score"
    if not live.enough:
        return (f"{version}: {live.rows:,} new rows so far, fewer than policy.min_live_rows "
                f"{spec.policy.min_live_rows:,}; they are scored again with the next batches")
    if live.value is None:
        reason = f"{version}: {live.metric} could not be computed on {live.rows:,} new rows"
    else:
        op = ">=" if METRICS[live.metric][1] else "<="
        reason = f"{version}: {live.metric} {live.value:.3f} on {live.rows:,} new rows {op} {live_bar(spec):g}"
    if drift is not None and drift.scores:
        feature, score = next(iter(drift.scores.items()))
        bar = spec.policy.max_drift
        reason += f"; largest drift {score:.3f} ({feature})" + (
            f" <= {bar:g}" if bar is not None else " (policy.max_drift not set)")
    return reason


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
