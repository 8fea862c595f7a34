"""Logs a person can read during faults: one line per problem.

When the Prefect API or the Dask scheduler goes away, Prefect's and Dask's loggers write
whole tracebacks and the repr of every item their background services could not send
(an ``Event(...)`` is several kB), many times a second. The daemon says what happened in
its own one-line messages; what the libraries add is put on one line (its lines joined by
" | ") with the exception's type and first line, at most ``MAX_CHARACTERS`` characters.
``-v`` (debug logging) keeps everything, for a developer.
"""

from __future__ import annotations

import asyncio
import logging

MAX_CHARACTERS = 300
_LIBRARIES = ("prefect", "distributed", "httpx", "websockets", "asyncio", "uvicorn", "fastapi")


class OneLine(logging.Filter):
    """Rewrites a record of a library into one short line (ours are one line already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("retrain") or logging.getLogger("retrain").isEnabledFor(logging.DEBUG):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit its format: keep it as it is
            return True
        text = " | ".join(line.strip() for line in message.strip().splitlines() if line.strip())
        cause = ""
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if not text and isinstance(exc, asyncio.CancelledError):
                # Dask's client logs the cancel of its reconnect as an empty ERROR when it is
                # closed after losing the scheduler; the daemon says what happened itself.
                return False
            first = (str(exc).strip().splitlines() or [""])[0][:120]
            cause = f" ({type(exc).__name__}{': ' + first if first else ''})"
        room = MAX_CHARACTERS - len(cause)  # the cause is kept whole; the message gives way
        text = (text if len(text) <= room else text[: room - 3] + "...") + cause
        record.msg, record.args = text, None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


_FILTER = OneLine()


def one_line_library_logs() -> None:
    """Put the filter on every handler that library records reach (the root's, Prefect's
    own console and debug handlers); idempotent. Prefect's log worker writes its own
    "--- Error logging to API ---" straight to stderr unless ``logging.raiseExceptions``
    is off: the daemon reports an API that does not answer itself, once."""
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)
                                       if name.startswith(_LIBRARIES)]
    for logger in loggers:
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
    if not logging.getLogger("retrain").isEnabledFor(logging.DEBUG):
        logging.raiseExceptions = False
