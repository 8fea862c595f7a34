"""The history of the models, as a PNG chart and as a table: written by ``retrain report``
and attached to each flow run as Prefect artifacts.

The chart has one panel per question:

- *What did each gate compare?* For every trained version, its score and the champion's on
  the same holdout rows (a version trained on another window is never compared with a
  number measured on other rows), deployed and rejected versions told apart, no line
  joining versions.
- *How does the deployed model do on new data?* (when the caller has the runs' records) The
  live metric of the deployed model batch by batch, the bar below which the policy
  retrains, and the moments a new version took over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from core.errors import RetrainError
from core.files import write_atomically
from core.records import ModelVersion
from core.specs import METRICS

DECISION_STYLE = {
    "deployed": ("tab:green", "o", "deployed"),
    "rejected": ("tab:red", "x", "rejected"),
    "no_signal": ("tab:brown", "x", "no signal (batch set aside)"),
    "deploy_failed": ("tab:orange", "s", "deploy failed"),
    "cancelled": ("tab:purple", "^", "cancelled"),
    "pending": ("tab:gray", ".", "pending"),
}


def metric_history(versions: list[ModelVersion], metric: str | None = None) -> tuple[str, list[dict]]:
    """(metric, one point per version that has it): time, value, decision, version."""
    metric = metric or next((v.lineage.get("metric") for v in reversed(versions)
                             if v.lineage.get("metric")), None)
    if metric is None:
        raise RetrainError("no trained version yet; the report needs at least one run")
    points = []
    for v in versions:
        if metric in v.metrics:
            champion = (v.champion_metrics or {}).get(metric)
            points.append({"version": v.version, "time": datetime.fromisoformat(v.created_at),
                           "value": v.metrics[metric], "decision": v.decision, "champion": champion,
                           "champion_version": v.lineage.get("evaluation", {}).get("champion_version")})
    return metric, points


@dataclass
class LiveHistory:
    """The deployed model's live metric run by run, for the chart's second panel."""

    metric: str
    bar: float | None  # the policy's bar (policy.min_live_metric, or the gate's threshold)
    # {"time": datetime, "value": float, "rows": int, "version": str}: one per judged batch
    points: list[dict[str, Any]] = field(default_factory=list)
    # {"time": datetime, "version": str}: a new version became current (deploy, rollback)
    takeovers: list[dict[str, Any]] = field(default_factory=list)


def metrics_table(versions: list[ModelVersion]) -> list[dict]:
    """One row per version, newest first: what the chart shows, as numbers."""
    rows = []
    for v in reversed(versions):
        row = {"version": v.version, "created_at": v.created_at, "decision": v.decision}
        row.update({name: round(value, 4) for name, value in v.metrics.items()})
        row["train_rows"] = v.lineage.get("training", {}).get("train_rows")
        rows.append(row)
    return rows


def write_report(versions: list[ModelVersion], out: Path, threshold: float | None,
                 current: str | None, metric: str | None = None, live: LiveHistory | None = None) -> Path:
    return write_atomically(out, render_png(versions, threshold, current, metric, live=live))


def render_png(versions: list[ModelVersion], threshold: float | None, current: str | None,
               metric: str | None = None, dpi: int = 110, live: LiveHistory | None = None) -> bytes:
    import io

    figure = build_figure(versions, threshold, current, metric, live)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def build_figure(versions: list[ModelVersion], threshold: float | None, current: str | None,
                 metric: str | None = None, live: LiveHistory | None = None):
    """The chart as a matplotlib Figure (no display, no global state): the gate's panel, and
    the live-metric panel when ``live`` has points."""
    from matplotlib.figure import Figure

    metric, points = metric_history(versions, metric)
    panels = 2 if live is not None and live.points else 1
    figure = Figure(figsize=(9, 4.5 * panels), layout="constrained")
    axes = figure.subplots(panels, 1, squeeze=False)[:, 0]
    draw_gate_panel(axes[0], metric, points, threshold, current)
    if panels == 2:
        draw_live_panel(axes[1], live)
    return figure


def draw_gate_panel(ax, metric: str, points: list[dict], threshold: float | None, current: str | None) -> None:
    """Each version's score next to the champion's on the same rows, joined by a short line:
    what its gate compared."""
    for p in points:
        if p["champion"] is not None:
            ax.plot([p["time"], p["time"]], [p["champion"], p["value"]], color="lightgray", linewidth=2, zorder=1)
    compared = [p for p in points if p["champion"] is not None]
    if compared:
        ax.scatter([p["time"] for p in compared], [p["champion"] for p in compared], facecolors="none",
                   edgecolors="dimgray", marker="o", s=50, label="champion, same rows", zorder=2)
    for decision, (color, marker, label) in DECISION_STYLE.items():
        chosen = [p for p in points if p["decision"] == decision]
        if chosen:
            ax.scatter([p["time"] for p in chosen], [p["value"] for p in chosen], color=color,
                       marker=marker, s=50, label=label, zorder=3)
    for i, p in enumerate(points):  # labels of neighbours at two heights, so they do not overlap
        ax.annotate(p["version"] + (" (current)" if p["version"] == current else ""),
                    (p["time"], p["value"]), textcoords="offset points", xytext=(0, 7 + 9 * (i % 2)),
                    ha="center", fontsize=7)
    if threshold is not None:
        ax.axhline(threshold, color="tab:blue", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    better = "higher" if METRICS.get(metric, (None, True))[1] else "lower"
    ax.set_title(f"{metric} of each candidate and of the champion it was compared with ({better} is better)",
                 fontsize=10)
    ax.set_xlabel("trained at")
    ax.set_ylabel(metric)
    _time_axis(ax, [p["time"] for p in points])
    ax.margins(y=0.2)  # room for the version labels above the highest point
    ax.legend(loc="best", fontsize=8)


def draw_live_panel(ax, live: LiveHistory) -> None:
    """The deployed model's live metric batch by batch, its bar, and where versions took over."""
    points = live.points
    below = _below_bar(live)
    for failing, color, label in ((False, "tab:green", "live metric"), (True, "tab:red", "below the bar")):
        chosen = [p for p in points if below(p) == failing]
        if chosen:
            ax.scatter([p["time"] for p in chosen], [p["value"] for p in chosen], color=color, s=30,
                       label=label, zorder=3)
    for version in dict.fromkeys(p["version"] for p in points):  # one line per deployed model
        own = [p for p in points if p["version"] == version]
        ax.plot([p["time"] for p in own], [p["value"] for p in own], color="tab:gray", linewidth=1, zorder=2)
    for i, takeover in enumerate(live.takeovers):
        ax.axvline(takeover["time"], color="tab:purple", linestyle=":", linewidth=1, zorder=1)
        ax.annotate(takeover["version"], (takeover["time"], 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -10 - 9 * (i % 2)), textcoords="offset points", fontsize=7, color="tab:purple")
    if live.bar is not None:
        ax.axhline(live.bar, color="tab:blue", linestyle="--", linewidth=1, label=f"bar {live.bar:g}")
    ax.set_title(f"live {live.metric} of the deployed model on each batch's new rows "
                 "(dotted: a new version took over)", fontsize=10)
    ax.set_xlabel("batch finished at")
    ax.set_ylabel(f"live {live.metric}")
    _time_axis(ax, [p["time"] for p in points] + [t["time"] for t in live.takeovers])
    ax.margins(y=0.2)
    ax.legend(loc="best", fontsize=8)


def _below_bar(live: LiveHistory):
    higher = METRICS.get(live.metric, (None, True))[1]
    if live.bar is None:
        return lambda p: False
    return (lambda p: p["value"] < live.bar) if higher else (lambda p: p["value"] > live.bar)


def _time_axis(ax, times: list[datetime]) -> None:
    """Dates on the x axis; points close in time (one version, one batch) get an hour
    around them instead of matplotlib's default span of years."""
    import matplotlib.dates as mdates

    if times:
        first, last = min(times), max(times)
        if last - first < timedelta(minutes=10):
            middle = first + (last - first) / 2
            ax.set_xlim(middle - timedelta(minutes=30), middle + timedelta(minutes=30))
    locator = mdates.AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
