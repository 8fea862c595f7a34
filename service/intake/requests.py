"""Runs asked for by an operator (``retrain run`` with no file), handed to the daemon that
holds the home.

The command writes one small file per request into ``state/requests/`` (atomically); the
daemon's main loop takes the oldest when no run is in flight, starts a run on the current
window and records an ``operator_run`` event naming the request and the run, which the
command waits for. A request file is deleted when taken, so a request runs once.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from core.files import write_atomically

OPERATOR_RUN = "operator_run"  # the ledger event: {"request": id, "run": run id}


def ask_for_run(folder: Path) -> str:
    """Leave a request for the daemon; returns its id."""
    request_id = uuid.uuid4().hex[:12]
    write_atomically(folder / f"{time.time():.6f}-{request_id}.json",
                     json.dumps({"id": request_id, "at": time.time()}))
    return request_id


def take_run_request(folder: Path) -> str | None:
    """The oldest waiting request's id, removed from the queue; None when there is none."""
    try:
        names = sorted(p.name for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except FileNotFoundError:
        return None
    for name in names:
        path = folder / name
        try:
            request_id = json.loads(path.read_text()).get("id") or name
        except (OSError, ValueError):
            request_id = name  # unreadable: still a request, once
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # taken meanwhile
        return str(request_id)
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
