"""Runs asked for by an operator (``retrain run`` with no file, ``retrain backfill``), handed
to the daemon that holds the home.

The command writes one small file per request into ``state/requests/`` (atomically); the
daemon's main loop takes the oldest when no run is in flight, starts a run on the current
window and records an ``operator_run`` event naming the request and the run, which the
command waits for. A request file is deleted when taken, so a request runs once.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from core.files import write_atomically

OPERATOR_RUN = "operator_run"  # the ledger event: {"request": id, "run": run id}


@dataclass(frozen=True)
class RunRequest:
    id: str
    # "window": a retraining on the current window; "backfill": the archived scoring
    # batches (first seen at ``since`` or later) scored again by the current model.
    what: str = "window"
    since: float | None = None


def ask_for_run(folder: Path, what: str = "window", since: float | None = None) -> str:
    """Leave a request for the daemon; returns its id."""
    request_id = uuid.uuid4().hex[:12]
    write_atomically(folder / f"{time.time():.6f}-{request_id}.json",
                     json.dumps({"id": request_id, "at": time.time(), "what": what, "since": since}))
    return request_id


def take_run_request(folder: Path) -> RunRequest | None:
    """The oldest waiting request, removed from the queue; None when there is none."""
    try:
        names = sorted(p.name for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except FileNotFoundError:
        return None
    for name in names:
        path = folder / name
        try:
            asked = json.loads(path.read_text())
        except (OSError, ValueError):
            asked = {}  # unreadable: still a request (a retraining), once
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # taken meanwhile
        return RunRequest(str(asked.get("id") or name), asked.get("what") or "window", asked.get("since"))
    return None


def withdraw_run_request(folder: Path, request_id: str) -> bool:
    """Remove a request not taken yet; False when the daemon already took it."""
    for path in folder.glob(f"*-{request_id}.json"):
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False
    return False
