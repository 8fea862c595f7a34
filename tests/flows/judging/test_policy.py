"""The retraining policy, trigger by trigger, as a plain function."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from core.records import DriftReport, LiveMetric, ModelVersion
from core.specs import PipelineSpec
from flows.judging.policy import decide_policy, live_bar
from service.config import load_settings

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
CHAMPION = ModelVersion(version="v0003", path="/r/v0003", created_at=(NOW - timedelta(days=2)).isoformat(),
                        model_sha256="0" * 64)


def spec(**policy) -> PipelineSpec:
    return PipelineSpec.model_validate({"evaluation": {"metric": "accuracy", "threshold": 0.8},
                                        "policy": {"retrain": "when_needed", **policy}})


def live(value: float | None = 0.951, rows: int = 5000, metric: str = "accuracy", enough: bool = True) -> LiveMetric:
    return LiveMetric(version="v0003", metric=metric, value=value, rows=rows, metrics={metric: value or 0.0},
                      file_ids=[7], enough=enough)


DRIFT = DriftReport(scores={"income": 0.04, "age": 0.01}, label=0.0, rows=5000)
MOVED = DriftReport(scores={"income": 0.31, "age": 0.01}, label=0.0, rows=5000)


def test_nothing_triggers_the_champion_is_kept_with_the_numbers() -> None:
    decision = decide_policy(spec(max_drift=0.2), CHAMPION, live(), DRIFT, now=NOW)
    assert not decision.retrain and decision.triggers == []
    assert decision.reason == "kept v0003: accuracy 0.951 on 5,000 new rows >= 0.8; largest drift 0.040 (income) <= 0.2"


def test_no_champion_trains() -> None:
    decision = decide_policy(spec(), None, None, None, now=NOW)
    assert decision.retrain and decision.triggers == ["no_champion"] and "no model is deployed" in decision.reason


def test_live_metric_below_the_bar_trains_and_the_bar_defaults_to_the_threshold() -> None:
    assert live_bar(spec()) == 0.8 and live_bar(spec(min_live_metric=0.92)) == 0.92
    decision = decide_policy(spec(), CHAMPION, live(0.79), DRIFT, now=NOW)
    assert decision.retrain and decision.triggers == ["live_metric"]
    assert decision.reason == "live accuracy of v0003 0.790 on 5,000 new rows < 0.8"
    assert not decide_policy(spec(), CHAMPION, live(0.80), DRIFT, now=NOW).retrain


def test_lower_is_better_metrics_have_a_ceiling() -> None:
    regression = PipelineSpec.model_validate({"schema": {"task": "regression"},
                                              "evaluation": {"metric": "rmse", "threshold": 10.0},
                                              "policy": {"retrain": "when_needed"}})
    worse = decide_policy(regression, CHAMPION, live(12.5, metric="rmse"), None, now=NOW)
    assert worse.triggers == ["live_metric"] and "rmse of v0003 12.500 on 5,000 new rows > 10" in worse.reason
    fine = decide_policy(regression, CHAMPION, live(9.5, metric="rmse"), None, now=NOW)
    assert not fine.retrain and "rmse 9.500 on 5,000 new rows <= 10" in fine.reason


def test_drift_trains_only_when_max_drift_is_set() -> None:
    decision = decide_policy(spec(max_drift=0.2), CHAMPION, live(), MOVED, now=NOW)
    assert decision.triggers == ["drift"] and decision.reason == "drift 0.310 (income) > max_drift 0.2"
    unset = decide_policy(spec(), CHAMPION, live(), MOVED, now=NOW)
    assert not unset.retrain and "largest drift 0.310 (income) (policy.max_drift not set)" in unset.reason


def test_new_rows_since_the_champion_train() -> None:
    decision = decide_policy(spec(max_new_rows=10_000), CHAMPION, live(), DRIFT, new_rows=5000,
                             rows_since_champion=6000, now=NOW)
    assert decision.triggers == ["new_rows"]
    assert decision.reason == "11,000 rows arrived since v0003 was trained >= max_new_rows 10,000"
    assert not decide_policy(spec(max_new_rows=20_000), CHAMPION, live(), DRIFT, new_rows=5000,
                             rows_since_champion=6000, now=NOW).retrain


def test_an_old_champion_trains() -> None:
    decision = decide_policy(spec(max_age="36h"), CHAMPION, live(), DRIFT, now=NOW)
    assert decision.triggers == ["age"] and decision.reason == "v0003 is 2.0d old > max_age 36h"
    assert not decide_policy(spec(max_age="7d"), CHAMPION, live(), DRIFT, now=NOW).retrain


def test_an_operator_request_trains_whatever_else_holds() -> None:
    decision = decide_policy(spec(), CHAMPION, None, None, requested_by="an operator", now=NOW)
    assert decision.retrain and decision.triggers == ["operator"] and decision.reason == "requested by an operator"


def test_every_trigger_that_holds_is_named() -> None:
    decision = decide_policy(spec(max_drift=0.2, max_age="1d"), CHAMPION, live(0.5), MOVED, now=NOW)
    assert decision.triggers == ["live_metric", "drift", "age"]
    assert decision.reason.count("; ") == 2


def test_too_few_rows_give_no_verdict_and_wait_for_the_next_batches() -> None:
    few = live(0.5, rows=120, enough=False)
    decision = decide_policy(spec(max_drift=0.2), CHAMPION, few, MOVED, now=NOW)
    assert not decision.retrain
    assert decision.reason == ("kept v0003: 120 new rows so far, fewer than policy.min_live_rows 200; "
                               "they are scored again with the next batches")


def test_a_champion_that_cannot_score_the_new_rows_trains() -> None:
    note = "champion v0003 cannot score the new rows: missing column"
    decision = decide_policy(spec(), CHAMPION, None, None, note, now=NOW)
    assert decision.triggers == ["live_metric"] and decision.reason == note


def test_always_trains_and_says_what_when_needed_would_do() -> None:
    kept = decide_policy(spec(retrain="always"), CHAMPION, live(), DRIFT, now=NOW)
    assert kept.retrain and kept.triggers == ["always"] and kept.reason == "policy.retrain is always"
    assert kept.when_needed.startswith("keep v0003: accuracy 0.951")
    low = decide_policy(spec(retrain="always"), CHAMPION, live(0.5), DRIFT, now=NOW)
    assert low.triggers == ["always", "live_metric"] and low.when_needed.startswith("retrain: live accuracy")


def test_the_seed_pattern_is_config_alone(tmp_path: Path) -> None:
    """`if metrics["accuracy"] < 0.92: retrain` as three settings."""
    config = tmp_path / "retrain.toml"
    config.write_text('[evaluation]\nmetric = "accuracy"\n[policy]\nretrain = "when_needed"\nmin_live_metric = 0.92\n')
    settings = load_settings(config, environ={})
    assert decide_policy(settings, CHAMPION, live(0.91), None, now=NOW).triggers == ["live_metric"]
    assert decide_policy(settings, CHAMPION, live(0.951), None, now=NOW).reason == \
        "kept v0003: accuracy 0.951 on 5,000 new rows >= 0.92"


@pytest.mark.parametrize("value, message", [("7 days", "expected a duration"), ("-1d", "expected a duration")])
def test_max_age_must_be_a_duration(tmp_path: Path, value: str, message: str) -> None:
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match=f"'policy.max_age' = '{value}'.*{message}"):
        load_settings(environ={"RETRAIN_POLICY__MAX_AGE": value})
