"""What a run shows in the Prefect UI: its summary, and the history of every version (a
chart and a table), as artifacts of the flow run."""

from __future__ import annotations

import base64
import json

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from core.records import (
    EvaluationResult,
    LabelsReport,
    ProductionMetric,
    RunOutcome,
    TrainResult,
)
from core.specs import METRICS
from flows.models.registry import ModelRegistry


def publish_summary(outcome: RunOutcome, evaluation: EvaluationResult | None,
                    trained: TrainResult | None = None) -> None:
    create_markdown_artifact(key="retrain-summary", markdown=summary_markdown(outcome, evaluation, trained),
                             description=f"retrain: {outcome.decision}")


def publish_monitoring(outcome: RunOutcome) -> None:
    """The deployed model on this batch's new rows (live metric, drift) and the policy's
    verdict, as the run's ``retrain-live`` artifact."""
    if outcome.live is None and outcome.policy is None:
        return
    create_markdown_artifact(key="retrain-live", markdown="\n".join(monitoring_lines(outcome)) + "\n",
                             description="the deployed model on the new rows, and the policy's verdict")


def publish_production(production: list[ProductionMetric], labels: LabelsReport) -> None:
    """The production metric of every version with labelled predictions (overall and per
    period) and what became of the labels, as the run's ``retrain-production`` artifact."""
    rows = [{"version": m.version, "period": "all", "metric": m.metric, "value": m.value, "rows": m.rows,
             "label delay (h, median)": m.label_delay_hours.get("median")} for m in production]
    rows += [{"version": m.version, "period": period, "metric": m.metric, "value": p.get("value"),
              "rows": p.get("rows"), "label delay (h, median)": None}
             for m in production for period, p in m.periods.items()]
    counts = (f"{labels.joined:,} of {labels.rows:,} labels joined; unknown ids {labels.unknown_ids:,}, "
              f"duplicate ids {labels.duplicate_ids:,}, already labelled {labels.relabelled:,}, "
              f"unparseable {labels.unparseable:,}")
    create_table_artifact(key="retrain-production", table=rows,
                          description=f"the metric of what each version served, from late labels ({counts})")


def publish_history(registry: ModelRegistry, threshold: float) -> None:
    """Attach the history of every version to this run: the chart of the gate's metric
    (a PNG inside a markdown artifact) and the metrics table. A chart that cannot be drawn
    is logged, never a reason to fail a run whose model is already decided."""
    from flows.reporting.report import metrics_table, render_png

    versions = registry.versions()
    try:
        png = render_png(versions, threshold, registry.current_version(), dpi=80)
        create_markdown_artifact(
            key="retrain-history",
            markdown=f"# Every trained version\n\n![metric of every version](data:image/png;base64,"
                     f"{base64.b64encode(png).decode()})\n",
            description="the gate's metric of every trained version over time")
        create_table_artifact(key="retrain-versions", table=metrics_table(versions),
                              description="metrics and decision of every trained version")
    except Exception as exc:
        get_run_logger().warning("history artifacts not created: %s", exc)


def summary_markdown(outcome: RunOutcome, evaluation: EvaluationResult | None,
                     trained: TrainResult | None = None) -> str:
    """The run's artifact: files, rows, metrics and the decision, readable in the Prefect UI."""
    lines = [f"# Retrain: {outcome.decision}", "", f"**Why:** {outcome.reason}", ""]
    if outcome.model_version:
        lines += [f"**Model version:** `{outcome.model_version}`", ""]
    lines += ["## Files of this batch", "", "| file | status | rows used | rows dropped | reason |",
              "|---|---|---:|---:|---|"]
    for f in outcome.files:
        status = "accepted" if f.accepted else "rejected"
        why = f.rejection.reason if f.rejection else ""
        lines.append(f"| {f.name} | {status} | {f.rows} | {f.rejected_rows} | {why} |")
    lines += ["", f"Training window: {outcome.window_files} files, {outcome.train_rows} training rows, "
              f"{outcome.holdout_rows} holdout rows.", ""]
    lines += monitoring_lines(outcome)
    if evaluation is not None:
        lines += _metrics_lines(evaluation)
        lines += _parts_lines(evaluation)
    if trained is not None and trained.candidates:
        lines += _candidate_lines(trained, evaluation.metric if evaluation else None)
    if outcome.stage_seconds:
        lines += ["", "Time per stage: " + ", ".join(f"{stage} {seconds:.2f}s" for stage, seconds
                                                    in outcome.stage_seconds.items()) + "."]
    return "\n".join(lines) + "\n"


def _parts_lines(evaluation: EvaluationResult) -> list[str]:
    """Markdown: candidate - champion on each part of the holdout, and the signal check."""
    lines: list[str] = []
    if evaluation.slices:
        lines += ["", f"## Parts of the holdout (margin {evaluation.tolerance:.4f})", "",
                  "| part | rows | candidate | champion | difference | interval | verdict |", "|---|---:|---:|---:|---:|---|---|"]
        for part in evaluation.slices:
            c = part.comparison
            lines.append(f"| {part.name} | {part.rows:,} | {_num(part.candidate)} | {_num(part.champion)} | "
                         + (f"{c.difference:+.4f} | {c.low:+.4f} to {c.high:+.4f}" if c else " | ")
                         + f" | {part.verdict} |")
    if evaluation.signal is not None:
        lines += ["", f"**Signal in the new rows:** {evaluation.signal.verdict}: {evaluation.signal.reason}"]
    return lines


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def monitoring_lines(outcome: RunOutcome) -> list[str]:
    """Markdown: the live metric, the largest drifts and the policy's verdict."""
    lines: list[str] = []
    live, drift, policy = outcome.live, outcome.drift, outcome.policy
    if live is not None:
        judged = "" if live.enough else " (too few rows to judge; scored again with the next batches)"
        lines += [f"## Live metric of the deployed model `{live.version}`", "",
                  f"On {live.rows:,} rows it had never seen (files {', '.join(map(str, live.file_ids))})"
                  f"{judged}:", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {name}{' (gate)' if name == live.metric else ''} | {value:.4f} |"
                  for name, value in live.metrics.items()]
        lines.append("")
    if drift is not None and drift.scores:
        lines += [f"## Drift from its training rows ({drift.statistic})", "", "| feature | drift |", "|---|---:|"]
        lines += [f"| {name} | {score:.3f} |" for name, score in list(drift.scores.items())[:10]]
        if drift.label is not None:
            lines.append(f"| (label) | {drift.label:.3f} |")
        lines.append("")
    if policy is not None:
        verdict = "retrain" if policy.retrain else "keep"
        text = f"**Policy:** {verdict} ({', '.join(policy.triggers) or 'no trigger'}): {policy.reason}"
        if policy.when_needed:
            text += f"; with `when_needed` it would {policy.when_needed}"
        lines += [text, ""]
    return lines


def _metrics_lines(evaluation: EvaluationResult) -> list[str]:
    better = "higher" if METRICS[evaluation.metric][1] else "lower"
    lines = [f"## Metrics (gate on `{evaluation.metric}`, {better} is better; threshold "
             f"{evaluation.threshold}, margin {evaluation.tolerance:.4f})", "",
             "| metric | candidate | champion |", "|---|---:|---:|"]
    champion = evaluation.champion or {}
    for name, value in evaluation.candidate.items():
        other = champion.get(name)
        lines.append(f"| {name} | {value:.4f} | {'' if other is None else f'{other:.4f}'} |")
    if evaluation.champion_version:
        lines += ["", f"Champion: `{evaluation.champion_version}`."]
    c = evaluation.comparison
    if c is not None:
        lines += ["", f"Paired comparison on the same {evaluation.holdout_rows:,} holdout rows: {c.metric} "
                  f"difference {c.difference:+.4f}, {c.confidence:.0%} interval {c.low:+.4f} to {c.high:+.4f} "
                  f"({c.samples} bootstrap resamples); the candidate must show: {c.must_show}."]
    return lines


def _candidate_lines(trained: TrainResult, metric: str | None) -> list[str]:
    """The model search: every candidate's configuration and validation score."""
    lines = ["", f"## Model search (cross-validated on {trained.validation_rows} training rows, never the holdout)",
             "", f"| candidate | params | validation {metric or ''} | validation seconds | |", "|---|---|---:|---:|---|"]
    for c in trained.candidates:
        value = (c.validation or {}).get(metric) if metric else None
        shown = "" if value is None else f"{value:.4f}"
        mark = "chosen" if c.chosen else (f"failed: {c.error}" if c.error else "")
        lines.append(f"| {c.estimator} | `{json.dumps(c.params, sort_keys=True)}` | {shown} | {c.fit_seconds:.2f} | {mark} |")
    return lines
