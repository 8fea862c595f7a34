"""The exactly-once invariant, checked from the outside: the ledger and the folders agree.

Every file the ledger knows is in exactly the folder its state says, every file in those
folders is known to the ledger exactly once, and nothing is in two places.
"""

from __future__ import annotations

import time
from pathlib import Path

from service.intake.home import Home
from service.intake.ledger import FileState, Ledger

FOLDER_OF_STATE = {
    FileState.QUEUED: "processing",
    FileState.RUNNING: "processing",
    FileState.ARCHIVED: "archive",
    FileState.QUARANTINED: "quarantine",
    FileState.DUPLICATE: "duplicates",
}
# With a working daemon: up to this many checks, 0.1 s apart; one that passes is enough.
IN_FLIGHT_CHECKS = 10


def check_invariant(home: Path, allow_in_flight: bool = False) -> dict[str, int]:
    """Assert that folders and ledger agree; return the counts per state. With
    ``allow_in_flight`` the daemon may be working: a file can move between the reading of
    the ledger and the listing of the folders, so a disagreement must last (a second)
    to count; a lost or doubled file lasts, a move does not."""
    if not allow_in_flight:
        return _check_once(home, allow_in_flight=False)
    for _ in range(IN_FLIGHT_CHECKS - 1):
        try:
            return _check_once(home, allow_in_flight=True)
        except AssertionError:
            time.sleep(0.1)
    return _check_once(home, allow_in_flight=True)


def _check_once(home: Path, allow_in_flight: bool) -> dict[str, int]:
    home = home.root if isinstance(home, Home) else Path(home)
    ledger = Ledger(home / "state" / "ledger.sqlite", readonly=True)
    try:
        records = ledger.files()
        counts = ledger.counts()
    finally:
        ledger.close()

    claimed_paths: dict[Path, int] = {}
    for record in records:
        if record.state == FileState.CLAIMING:
            assert allow_in_flight, f"file {record.id} ({record.name}) is stuck in 'claiming'"
            claimed_paths[Path(record.path)] = record.id  # its rename into processing/ may be done
            continue
        folder = FOLDER_OF_STATE.get(record.state)
        if folder is None:  # vanished, requeued: no file of theirs to find
            continue
        path = Path(record.path)
        assert path.parent == home / folder, (
            f"file {record.id} ({record.name}) is {record.state} but recorded at {path}")
        assert path.exists() or path.is_symlink(), (
            f"file {record.id} ({record.name}) is {record.state} but {path} does not exist")
        assert path not in claimed_paths, (
            f"{path} is claimed by files {claimed_paths[path]} and {record.id}")
        claimed_paths[path] = record.id
        if record.state == FileState.QUARANTINED:
            note = path.with_name(path.name + ".error.json")
            assert note.exists(), f"quarantined file {record.id} has no {note.name}"

    for folder in ("processing", "archive", "quarantine", "duplicates"):
        for entry in (home / folder).iterdir():
            if entry.name.endswith(".error.json"):
                continue
            assert entry in claimed_paths, f"{entry} is in {folder}/ but no ledger row says so"
    leftovers = [p.name for p in (home / "inbox").iterdir() if not p.name.startswith(".")]
    assert allow_in_flight or not leftovers, f"files left in the inbox: {leftovers}"
    return counts


def check_registry_agrees(home: Path) -> str | None:
    """Assert that `current` is what the ledger recorded (the newest recorded deploy or
    rollback) and that no file was used by two completed runs; return `current`."""
    from flows.models.registry import ModelRegistry
    from service.runner.agreement import recorded_current

    home = home.root if isinstance(home, Home) else Path(home)
    ledger = Ledger(home / "state" / "ledger.sqlite", readonly=True)
    try:
        expected = recorded_current(ledger)
        completed = [r for r in ledger.runs(limit=10_000) if r.state == "completed"]
    finally:
        ledger.close()
    registry = ModelRegistry(home / "registry")
    current = registry.current_version()
    assert current == expected, f"current is {current}, the ledger says {expected}"
    if current is not None:
        assert registry.get(current).decision == "deployed", registry.get(current)
    used = [fid for r in completed for fid in r.file_ids]
    twice = sorted({fid for fid in used if used.count(fid) > 1})
    assert not twice, f"files used by two completed runs: {twice}"
    return current
