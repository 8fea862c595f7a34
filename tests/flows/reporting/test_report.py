"""The report's chart: what each gate compared, and the deployed model's live metric."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import matplotlib.dates as mdates

from core.records import ModelVersion
from flows.reporting.report import LiveHistory, build_figure, write_report

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


def version(n: int, hours: float, value: float, champion: float | None, decision: str) -> ModelVersion:
    return ModelVersion(version=f"v{n:04d}", path=f"/r/v{n:04d}", created_at=(T0 + timedelta(hours=hours)).isoformat(),
                        model_sha256="0" * 64, metrics={"accuracy": value},
                        champion_metrics=None if champion is None else {"accuracy": champion},
                        decision=decision, metadata={"metric": "accuracy"})


VERSIONS = [version(1, 0, 0.84, None, "deployed"), version(2, 24, 0.83, 0.84, "rejected"),
            version(3, 48, 0.79, 0.29, "deployed")]
LIVE = LiveHistory(metric="accuracy", bar=0.7,
                   points=[{"time": T0 + timedelta(hours=h), "value": v, "rows": 2000, "version": ver}
                           for h, v, ver in ((12, 0.83, "v0001"), (30, 0.82, "v0001"), (47, 0.27, "v0001"),
                                             (60, 0.80, "v0003"))],
                   takeovers=[{"time": T0, "version": "v0001"}, {"time": T0 + timedelta(hours=48), "version": "v0003"}])


def test_the_report_has_a_live_metric_panel(tmp_path: Path) -> None:
    figure = build_figure(VERSIONS, 0.6, "v0003", live=LIVE)
    gate, live = figure.axes
    assert "champion it was compared with" in gate.get_title()
    assert live.get_title().startswith("live accuracy of the deployed model")
    # Its points are the batches' live metrics, the bar is drawn, one line per takeover.
    plotted = sorted(v for collection in live.collections for v in collection.get_offsets()[:, 1])
    assert plotted == sorted(p["value"] for p in LIVE.points)
    assert [line.get_ydata()[0] for line in live.lines if line.get_linestyle() == "--"] == [0.7]
    assert sum(1 for line in live.lines if line.get_linestyle() == ":") == 2

    out = write_report(VERSIONS, tmp_path / "report.png", 0.6, "v0003", live=LIVE)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    alone = write_report(VERSIONS, tmp_path / "alone.png", 0.6, "v0003").read_bytes()
    height = lambda png: int.from_bytes(png[20:24], "big")  # noqa: E731 - the PNG header's height
    assert height(data) > 1.8 * height(alone)  # two panels stacked


def test_the_gate_panel_joins_each_candidate_to_its_champion_only(tmp_path: Path) -> None:
    gate = build_figure(VERSIONS, 0.6, "v0003").axes[0]
    segments = [line for line in gate.lines if line.get_linestyle() == "-"]
    # One segment per compared version, vertical: candidate and champion on the same rows.
    assert len(segments) == 2 and all(len(set(s.get_xdata())) == 1 for s in segments)
    assert sorted(tuple(sorted(s.get_ydata())) for s in segments) == [(0.29, 0.79), (0.83, 0.84)]


def test_a_single_version_gets_an_hour_around_it_not_years() -> None:
    gate = build_figure(VERSIONS[:1], 0.6, "v0001").axes[0]
    low, high = gate.get_xlim()
    assert abs((mdates.num2date(high) - mdates.num2date(low)) - timedelta(hours=1)) < timedelta(seconds=1)
    assert gate.get_ylim()[1] > 0.84  # room above the point for its label
