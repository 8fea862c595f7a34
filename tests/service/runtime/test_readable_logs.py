"""During faults a library's log record is one short line on the operator's console."""

from __future__ import annotations

import io
import logging

from service.runtime.readable_logs import MAX_CHARACTERS, OneLine


def _emit(logger_name: str, *args, **kwargs) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(OneLine())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error(*args, **kwargs)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_an_event_dump_with_its_traceback_is_one_short_line() -> None:
    event = "Event(" + "x" * 5000 + ")"
    try:
        raise RuntimeError("Failed to reach API at http://127.0.0.1:1/api/\nmore")
    except RuntimeError:
        out = _emit("prefect._internal.concurrency", "Service %r failed to process item %r", "EventsWorker",
                    event, exc_info=True)
    assert out.count("\n") == 1 and len(out) <= MAX_CHARACTERS + 1
    assert out.startswith("Service 'EventsWorker' failed to process item 'Event(xxx")
    assert out.endswith("... (RuntimeError: Failed to reach API at http://127.0.0.1:1/api/)\n")


def test_a_multi_line_record_keeps_its_lines_on_one() -> None:
    out = _emit("distributed.worker", "Compute Failed\nKey:       %s\nState:     %s\n", "train-1", "executing")
    assert out == "Compute Failed | Key:       train-1 | State:     executing\n"


def test_the_exception_is_named_on_the_line() -> None:
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        out = _emit("prefect.flow_runs", "Encountered exception during execution", exc_info=True)
    assert out == "Encountered exception during execution (OSError: [Errno 28] No space left on device)\n"


def test_a_bare_cancel_of_a_background_coroutine_is_left_out() -> None:
    import asyncio

    try:
        raise asyncio.CancelledError()
    except asyncio.CancelledError as exc:
        assert _emit("distributed.client", exc, exc_info=True) == ""  # as distributed's log_errors writes it
        assert _emit("distributed.client", "reconnect stopped", exc_info=True) == "reconnect stopped (CancelledError)\n"


def test_our_own_records_are_left_as_they_are() -> None:
    assert _emit("retrain.daemon", "line one\nline two") == "line one\nline two\n"
