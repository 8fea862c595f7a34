"""The service's flow runs leave Prefect's heartbeat thread out, unless an operator asked for it."""

from __future__ import annotations

from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    get_current_settings,
    temporary_settings,
)

from service.runner.flowruns import without_flow_run_heartbeats


def test_heartbeats_are_off_by_default_and_kept_when_set() -> None:
    with without_flow_run_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency is not None  # restored after
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}), without_flow_run_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency == 60
