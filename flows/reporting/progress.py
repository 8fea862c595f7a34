"""Progress of the flow, for whoever runs it in this process.

The flow body runs in the caller's process (the daemon, or ``retrain run``), so it can tell
listeners there how far it got: ``report(stage, done, total)`` after each partition group
and around each stage. ``retrain run`` draws progress bars from it on a terminal and logs
plain lines otherwise. Listeners are plain callables kept in this module, never passed to
tasks: nothing here has to be pickled.
"""

from __future__ import annotations

import logging
from typing import Callable

Listener = Callable[[str, int, int], None]

_listeners: list[Listener] = []
log = logging.getLogger("retrain.progress")


def add_listener(listener: Listener) -> None:
    _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def report(stage: str, done: int, total: int) -> None:
    """Tell every listener that ``done`` of ``total`` units of ``stage`` are finished.
    A failing listener is logged and otherwise ignored: progress never breaks a run."""
    for listener in list(_listeners):
        try:
            listener(stage, done, total)
        except Exception as exc:
            log.debug("progress listener failed: %s", exc)
