"""The run's summary artifact shows every part of the holdout the gate compared, and the
signal check, with their numbers."""

from __future__ import annotations

from core.records import (
    EvaluationResult,
    PairedComparison,
    RunOutcome,
    SignalCheck,
    SliceComparison,
)
from flows.reporting.artifacts import summary_markdown


def test_the_summary_lists_each_part_and_the_signal_check() -> None:
    comparison = PairedComparison(metric="roc_auc", difference=-0.004, low=-0.012, high=0.003, confidence=0.95,
                                  samples=2000, must_show="not_worse", rows=800, margin=0.01)
    signal = SignalCheck(rows=800, chance=0.5, champion=None, candidate=None, champion_near_chance=True,
                         learnable=False, verdict="no_signal", reason="the new rows carry nothing to learn: ...")
    evaluation = EvaluationResult(
        metric="roc_auc", greater_is_better=True, threshold=0.6, tolerance=0.01, holdout_rows=2400,
        candidate={"roc_auc": 0.76}, champion={"roc_auc": 0.77}, champion_version="v0001", passed_threshold=True,
        not_worse_than_champion=False, deploy=False, reason="not deployed, no signal: ...", comparison=comparison,
        slices=[SliceComparison(name="new rows", role="record", rows=800, candidate=0.50, champion=0.51,
                                comparison=comparison, verdict="recorded"),
                SliceComparison(name="region=east", role="guard", rows=90, candidate=None, champion=None,
                                comparison=None, verdict="too few rows")],
        signal=signal, no_signal=True)
    outcome = RunOutcome(flow_run_id=None, decision="no_signal", reason=evaluation.reason, files=[])
    text = summary_markdown(outcome, evaluation)
    assert "# Retrain: no_signal" in text and "## Parts of the holdout (margin 0.0100)" in text
    assert "| new rows | 800 | 0.5000 | 0.5100 | -0.0040 | -0.0120 to +0.0030 | recorded |" in text
    assert "| region=east | 90 |" in text and "too few rows" in text
    assert "**Signal in the new rows:** no_signal: the new rows carry nothing to learn" in text
