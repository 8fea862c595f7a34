"""The gate's metric of every trained version over time, as a PNG chart and as a table:
written by ``retrain report`` and attached to each flow run as Prefect artifacts."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from flows.errors import RetrainError
from flows.files import write_atomically
from flows.records import ModelVersion
from flows.specs import METRICS

DECISION_STYLE = {
    "deployed": ("tab:green", "o", "deployed"),
    "rejected": ("tab:red", "x", "rejected"),
    "deploy_failed": ("tab:orange", "s", "deploy failed"),
    "pending": ("tab:gray", ".", "pending"),
}


def metric_history(versions: list[ModelVersion], metric: str | None = None) -> tuple[str, list[dict]]:
    """(metric, one point per version that has it): time, value, decision, version."""
    metric = metric or next((v.metadata.get("metric") for v in reversed(versions)
                             if v.metadata.get("metric")), None)
    if metric is None:
        raise RetrainError("no trained version yet; the report needs at least one run")
    points = []
    for v in versions:
        if metric in v.metrics:
            points.append({"version": v.version, "time": datetime.fromisoformat(v.created_at),
                           "value": v.metrics[metric], "decision": v.decision})
    return metric, points


def metrics_table(versions: list[ModelVersion]) -> list[dict]:
    """One row per version, newest first: what the chart shows, as numbers."""
    rows = []
    for v in reversed(versions):
        row = {"version": v.version, "created_at": v.created_at, "decision": v.decision}
        row.update({name: round(value, 4) for name, value in v.metrics.items()})
        row["train_rows"] = v.metadata.get("training", {}).get("train_rows")
        rows.append(row)
    return rows


def write_report(versions: list[ModelVersion], out: Path, threshold: float | None,
                 current: str | None, metric: str | None = None) -> Path:
    return write_atomically(out, render_png(versions, threshold, current, metric))


def render_png(versions: list[ModelVersion], threshold: float | None, current: str | None,
               metric: str | None = None, dpi: int = 110) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to a file
    import matplotlib.pyplot as plt

    metric, points = metric_history(versions, metric)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=dpi)
    ax.plot([p["time"] for p in points], [p["value"] for p in points], color="lightgray",
            linewidth=1, zorder=1)
    for decision, (color, marker, label) in DECISION_STYLE.items():
        chosen = [p for p in points if p["decision"] == decision]
        if chosen:
            ax.scatter([p["time"] for p in chosen], [p["value"] for p in chosen], color=color,
                       marker=marker, s=50, label=label, zorder=2)
    for p in points:
        ax.annotate(p["version"] + (" (current)" if p["version"] == current else ""),
                    (p["time"], p["value"]), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=7)
    if threshold is not None:
        ax.axhline(threshold, color="tab:blue", linestyle="--", linewidth=1,
                   label=f"threshold {threshold}")
    better = "higher" if METRICS.get(metric, (None, True))[1] else "lower"
    ax.set_title(f"{metric} of every trained version ({better} is better)")
    ax.set_xlabel("trained at")
    ax.set_ylabel(metric)
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
