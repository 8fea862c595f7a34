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


def test_a_run_failed_by_a_lost_scheduler_is_told_apart_from_a_failed_run() -> None:
    from concurrent.futures import CancelledError

    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError
    from prefect.states import Completed, Failed

    from service.runner.flowruns import scheduler_went_away

    def failed_by(error: BaseException):
        return Failed(data=error)

    lost = FutureCancelledError("preprocess-1", "scheduler-connection-lost", "Client lost the connection")
    assert scheduler_went_away(failed_by(lost))
    assert scheduler_went_away(failed_by(CommClosedError("in <TCP>: Stream is closed")))
    assert scheduler_went_away(failed_by(OSError("Timed out trying to connect to tcp://127.0.0.1:9 after 30 s")))
    try:  # a lost scheduler under another error
        try:
            raise lost
        except CancelledError as exc:
            raise RuntimeError("training failed") from exc
    except RuntimeError as wrapped:
        assert scheduler_went_away(failed_by(wrapped))

    assert not scheduler_went_away(failed_by(FutureCancelledError("train-1", "the run was cancelled")))
    assert not scheduler_went_away(failed_by(ValueError("column 'income' has text")))
    assert not scheduler_went_away(failed_by(OSError(28, "No space left on device")))
    assert not scheduler_went_away(Completed(data=1))
