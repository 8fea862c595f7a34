"""What a run shows in the Prefect UI: its summary, and the history of every version (a
chart and a table), as artifacts of the flow run."""

from __future__ import annotations

import base64
import json

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.records import EvaluationResult, RunOutcome, TrainResult
from flows.registry import ModelRegistry
from flows.specs import METRICS


def publish_summary(outcome: RunOutcome, evaluation: EvaluationResult | None,
                    trained: TrainResult | None = None) -> None:
    create_markdown_artifact(key="retrain-summary", markdown=summary_markdown(outcome, evaluation, trained),
                             description=f"retrain: {outcome.decision}")


def publish_history(registry: ModelRegistry, threshold: float) -> None:
    """Attach the history of every version to this run: the chart of the gate's metric
    (a PNG inside a markdown artifact) and the metrics table. A chart that cannot be drawn
    is logged, never a reason to fail a run whose model is already decided."""
    from flows.report import metrics_table, render_png

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
    if evaluation is not None:
        lines += _metrics_lines(evaluation)
    if trained is not None and trained.candidates:
        lines += _candidate_lines(trained, evaluation.metric if evaluation else None)
    if outcome.stage_seconds:
        lines += ["", "Time per stage: " + ", ".join(f"{stage} {seconds:.2f}s" for stage, seconds
                                                    in outcome.stage_seconds.items()) + "."]
    return "\n".join(lines) + "\n"


def _metrics_lines(evaluation: EvaluationResult) -> list[str]:
    better = "higher" if METRICS[evaluation.metric][1] else "lower"
    lines = [f"## Metrics (gate on `{evaluation.metric}`, {better} is better; threshold "
             f"{evaluation.threshold}, tolerance {evaluation.tolerance})", "",
             "| metric | candidate | champion |", "|---|---:|---:|"]
    champion = evaluation.champion or {}
    for name, value in evaluation.candidate.items():
        other = champion.get(name)
        lines.append(f"| {name} | {value:.4f} | {'' if other is None else f'{other:.4f}'} |")
    if evaluation.champion_version:
        lines += ["", f"Champion: `{evaluation.champion_version}`."]
    return lines


def _candidate_lines(trained: TrainResult, metric: str | None) -> list[str]:
    """The model search: every candidate's configuration and validation score."""
    lines = ["", f"## Model search ({trained.validation_rows} validation rows, never the holdout)", "",
             f"| candidate | params | validation {metric or ''} | fit seconds | |", "|---|---|---:|---:|---|"]
    for c in trained.candidates:
        value = (c.validation or {}).get(metric) if metric else None
        shown = "" if value is None else f"{value:.4f}"
        mark = "chosen" if c.chosen else (f"failed: {c.error}" if c.error else "")
        lines.append(f"| {c.estimator} | `{json.dumps(c.params, sort_keys=True)}` | {shown} | {c.fit_seconds:.2f} | {mark} |")
    return lines
