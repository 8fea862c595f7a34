"""The folders of a home and every move of a file between them.

A file is always in exactly one folder. Each move is: ledger records the destination,
then one ``os.rename`` (atomic on one filesystem). ``reconcile`` (run at start) finishes
whatever a crash interrupted, using the ledger as the record of intent.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.errors import RetrainError
from core.files import fsync_dir, sha256_file, write_atomically
from service.intake.home import Home
from service.intake.ledger import FileRecord, FileState, Ledger

log = logging.getLogger("retrain.inbox")


def destination(folder: Path, name: str, file_id: int) -> Path:
    """``folder/name`` if free, else ``folder/<stem>.<file_id><suffix>`` so nothing is overwritten."""
    target = folder / name
    if not os.path.lexists(target):
        return target
    stem, suffix = os.path.splitext(name)
    return folder / f"{stem}.{file_id}{suffix}"


def _special_kind(mode: int) -> str | None:
    """What a non-regular inbox entry is, or None for a regular file."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


def drop_into_inbox(source: Path, inbox: Path) -> Path:
    """Copy ``source`` into the inbox as a well-behaved writer does: under a temporary name,
    then renamed into place complete, under its own name or, when that is taken, the first
    free ``name.N.csv``. The one way a command puts a file there."""
    target, n = inbox / source.name, 1
    while os.path.lexists(target):
        target, n = inbox / f"{source.stem}.{n}{source.suffix}", n + 1
    with open(source, "rb") as original:
        return write_atomically(target, lambda copy: shutil.copyfileobj(original, copy))


def claim_file(ledger: Ledger, home: Home, path: Path, first_seen: float,
               max_file_bytes: int, kind: str = "train") -> FileRecord | None:
    """Take one inbox entry in: ledger row (claiming) -> os.rename into processing/
    (as "<id>-<name>") -> sha256 -> queued. Returns None (logged, ledger row vanished)
    if the entry disappeared before the rename.

    Entries that must never be read are quarantined unread with a reason (the entry itself,
    not its target, is moved): symbolic links (lstat, never followed), directories, FIFOs,
    sockets, devices, files over ``max_file_bytes``, names that are not ``.csv``. A file
    whose sha256 was already used (ledger.find_used) is moved to duplicates/ and recorded
    as DUPLICATE. ``kind``: what the file is for (the folder it came through, see
    ``Home.intake``).
    """
    name = path.name
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        log.info("'%s' vanished before it could be claimed", name)
        return None
    record = ledger.begin_claim(name, str(home.processing / f"{{id}}-{name}"), first_seen, kind)
    try:
        os.rename(path, record.path)
    except FileNotFoundError:
        ledger.forget_claim(record.id)
        log.info("'%s' vanished before it could be claimed (file %d)", name, record.id)
        return None
    fsync_dir(home.processing)

    problem = _unreadable_reason(name, info, max_file_bytes)
    if problem is not None:
        reason, hint = problem
        record = ledger.finish_claim(record.id, None, info.st_size)
        return quarantine_file(ledger, home, record.id, {"reason": reason, "hint": hint,
                                                          "details": {"size": info.st_size}})
    sha = sha256_file(Path(record.path))
    record = ledger.finish_claim(record.id, sha, info.st_size)
    twin = ledger.find_used(sha, exclude_id=record.id, kind=kind)
    if twin is not None:
        target = destination(home.duplicates, name, record.id)
        ledger.move(record.id, FileState.DUPLICATE, str(target), duplicate_of=twin.id)
        _rename(Path(record.path), target)
        log.info("'%s' sha256=%s is a duplicate of file %d ('%s'); moved to %s", name, sha[:12],
                 twin.id, twin.name, target)
        return ledger.get(record.id)
    log.info("claimed '%s' sha256=%s size=%d as file %d", name, sha[:12], info.st_size, record.id)
    return record


def _unreadable_reason(name: str, info: os.stat_result, max_file_bytes: int) -> tuple[str, str] | None:
    """(reason, hint) for an entry that must be quarantined without reading it."""
    kind = _special_kind(info.st_mode)
    if kind is not None:
        return (f"{name}: {kind}, not a regular file; it was not opened or followed",
                "put regular CSV files in the inbox (copy the data, not a link)")
    if info.st_size > max_file_bytes:
        return (f"{name}: {info.st_size} bytes is over the limit of {max_file_bytes} bytes",
                "split the file, or raise watcher.max_file_bytes")
    if not name.lower().endswith(".csv"):
        return (f"{name}: not a .csv file", "only files named *.csv are read; rename it if it is CSV")
    return None


def _rename(source: Path, target: Path) -> None:
    os.rename(source, target)
    fsync_dir(target.parent)


def _write_error_json(record: FileRecord, error: dict[str, Any]) -> None:
    path = Path(record.path)
    note = {
        "file": record.name,
        "file_id": record.id,
        "sha256": record.sha256,
        "quarantined_as": path.name,
        "quarantined_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reason": error.get("reason", "rejected"),
        "hint": error.get("hint", ""),
        "details": error.get("details", {}),
        "requeue": f"retrain requeue '{path.name}'",
    }
    write_atomically(path.with_name(path.name + ".error.json"),
                     json.dumps(note, indent=2, ensure_ascii=False, default=str) + "\n")


def quarantine_file(ledger: Ledger, home: Home, file_id: int, error: dict[str, Any]) -> FileRecord:
    """Move one file (from wherever the ledger says it is) to quarantine/ with its reason."""
    record = ledger.get(file_id)
    target = destination(home.quarantine, record.name, record.id)
    source = Path(record.path)
    record = ledger.move(record.id, FileState.QUARANTINED, str(target), error=error)
    _rename(source, target)
    _write_error_json(record, error)
    log.warning("quarantined '%s' (file %d): %s", record.name, record.id, error.get("reason"))
    return record


def archive_files(ledger: Ledger, home: Home, run_id: int, *, decision: str, reason: str,
                  flow_run_id: str | None, model_version: str | None, metric: str | None,
                  details: dict[str, Any], accepted: list[int],
                  rejected: dict[int, dict[str, Any]]) -> None:
    """Finish a completed run: one ledger transaction (ledger.complete_run) recording the
    archive/ or quarantine/ destination of every file, then the moves, then the
    ``<name>.error.json`` of each quarantined file."""
    sources: dict[int, Path] = {}
    archived: dict[int, str] = {}
    quarantined: dict[int, tuple[str, dict]] = {}
    taken: set[Path] = set()
    for fid in accepted:
        record = ledger.get(fid)
        sources[fid] = Path(record.path)
        target = _free_destination(home.archive, record.name, fid, taken)
        archived[fid] = str(target)
    for fid, error in rejected.items():
        record = ledger.get(fid)
        sources[fid] = Path(record.path)
        target = _free_destination(home.quarantine, record.name, fid, taken)
        quarantined[fid] = (str(target), error)
    ledger.complete_run(run_id, decision=decision, reason=reason, flow_run_id=flow_run_id,
                        model_version=model_version, metric=metric, details=details,
                        archived=archived, quarantined=quarantined)
    for fid, target in archived.items():
        os.rename(sources[fid], target)
    for fid, (target, error) in quarantined.items():
        os.rename(sources[fid], target)
        _write_error_json(ledger.get(fid), error)
        log.warning("quarantined '%s' (file %d): %s", Path(target).name, fid, error.get("reason"))
    for folder in {home.archive, home.quarantine}:
        fsync_dir(folder)


def _free_destination(folder: Path, name: str, file_id: int, taken: set[Path]) -> Path:
    target = destination(folder, name, file_id)
    if target in taken:  # two files of one batch with the same inbox name
        stem, suffix = os.path.splitext(name)
        target = folder / f"{stem}.{file_id}{suffix}"
    taken.add(target)
    return target


def fail_run_files(ledger: Ledger, home: Home, run_id: int, reason: str, max_attempts: int,
                   count_attempt: bool = True) -> None:
    """A run failed or was handed back: its files return to the queue (they stay in
    processing/) or, after max_attempts, are quarantined with the run's reason."""
    running = [f for f in ledger.files(FileState.RUNNING) if f.run_id == run_id]
    sources = {f.id: Path(f.path) for f in running}
    targets: dict[int, str] = {}
    taken: set[Path] = set()
    for f in running:
        targets[f.id] = str(_free_destination(home.quarantine, f.name, f.id, taken))
    ledger.fail_run(run_id, reason, max_attempts, targets, count_attempt=count_attempt,
                    run_state="failed" if count_attempt else "interrupted")
    for fid, source in sources.items():
        record = ledger.get(fid)
        if record.state == FileState.QUARANTINED:
            os.rename(source, record.path)
            _write_error_json(record, record.error or {})
            log.warning("quarantined '%s' (file %d) after %d failed runs", record.name, fid, record.attempts)


def cancel_run_files(ledger: Ledger, home: Home, run_id: int, model_version: str | None,
                     flow_run_id: str | None) -> list[FileRecord]:
    """An operator cancelled the run: its files are set aside in quarantine, where an
    operator decides (``retrain requeue``), never retried in a loop. Returns their records."""
    running = [f for f in ledger.files(FileState.RUNNING) if f.run_id == run_id]
    quarantined: dict[int, tuple[str, dict]] = {}
    taken: set[Path] = set()
    for f in running:
        target = _free_destination(home.quarantine, f.name, f.id, taken)
        quarantined[f.id] = (str(target), {
            "reason": f"run {run_id} was cancelled by an operator; `retrain requeue {target.name}` to take it again",
            "hint": "nothing is wrong with the file as far as retrain knows; requeue it when it should be trained on",
            "details": {"run_id": run_id, "flow_run_id": flow_run_id}})
    ledger.cancel_run(run_id, "cancelled by an operator in Prefect", model_version, quarantined)
    for f in running:
        record = ledger.get(f.id)
        _rename(Path(f.path), Path(record.path))
        _write_error_json(record, record.error or {})
    return [ledger.get(f.id) for f in running]


def reconcile(ledger: Ledger, home: Home, max_attempts: int) -> dict[str, int]:
    """At start, make folders and ledger agree again after any crash (see the module doc).
    Idempotent. Returns counts of what was repaired, for the start-up log line."""
    repaired = {"claims_finished": 0, "claims_dropped": 0, "adopted": 0, "runs_interrupted": 0,
                "moves_finished": 0}
    _finish_claims(ledger, home, repaired)
    # Runs a crash interrupted: their files go back to the queue (an attempt is counted).
    for run in ledger.interrupted_runs():
        fail_run_files(ledger, home, run.id, "retrain stopped during this run", max_attempts)
        ledger.mark_interrupted(run.id)
        repaired["runs_interrupted"] += 1
    _finish_moves(ledger, home, repaired)
    _finish_requeues(ledger, home, repaired)
    _adopt_unknown_files(ledger, home, repaired)
    # Temporary files of interrupted error.json writes (write_atomically's names).
    for tmp in home.quarantine.glob(".*.error.json.*.tmp"):
        tmp.unlink(missing_ok=True)
    return repaired


def _finish_claims(ledger: Ledger, home: Home, repaired: dict[str, int]) -> None:
    """Claims a crash cut short: finished when the rename happened, dropped otherwise."""
    for record in ledger.files(FileState.CLAIMING):
        processing_path = Path(record.path)
        inbox_path = home.intake[record.kind] / record.name
        if not os.path.lexists(processing_path):
            ledger.forget_claim(record.id)  # still in the inbox (the scan re-claims it) or gone
            repaired["claims_dropped"] += 1 if os.path.lexists(inbox_path) else 0
            continue
        info = os.lstat(processing_path)
        if _special_kind(info.st_mode) is not None or not stat.S_ISREG(info.st_mode):
            ledger.finish_claim(record.id, None, info.st_size)
            problem = _unreadable_reason(record.name, info, 1 << 62) or ("not a regular file", "")
            quarantine_file(ledger, home, record.id, {"reason": problem[0], "hint": problem[1]})
        else:
            sha = sha256_file(processing_path)
            ledger.finish_claim(record.id, sha, info.st_size)
            twin = ledger.find_used(sha, exclude_id=record.id, kind=record.kind)
            if twin is not None:
                target = destination(home.duplicates, record.name, record.id)
                ledger.move(record.id, FileState.DUPLICATE, str(target), duplicate_of=twin.id)
                _rename(processing_path, target)
        repaired["claims_finished"] += 1


def _finish_moves(ledger: Ledger, home: Home, repaired: dict[str, int]) -> None:
    """Moves recorded but not done: the file is still where it was."""
    for record in ledger.files(FileState.ARCHIVED, FileState.QUARANTINED, FileState.DUPLICATE):
        target = Path(record.path)
        if os.path.lexists(target):
            if record.state == FileState.QUARANTINED and not target.with_name(target.name + ".error.json").exists():
                _write_error_json(record, record.error or {})
                repaired["moves_finished"] += 1
            continue
        leftover = home.processing / f"{record.id}-{record.name}"
        if os.path.lexists(leftover):
            _rename(leftover, target)
            if record.state == FileState.QUARANTINED:
                _write_error_json(record, record.error or {})
            repaired["moves_finished"] += 1


def _finish_requeues(ledger: Ledger, home: Home, repaired: dict[str, int]) -> None:
    """Requeues cut short: the file is still in quarantine/."""
    for record in ledger.files(FileState.REQUEUED):
        target = Path(record.path)
        if os.path.lexists(target) or target.parent not in home.intake.values():
            continue
        stem, suffix = os.path.splitext(record.name)
        for candidate in (home.quarantine / record.name, home.quarantine / f"{stem}.{record.id}{suffix}"):
            if os.path.lexists(candidate):
                candidate.with_name(candidate.name + ".error.json").unlink(missing_ok=True)
                _rename(candidate, target)
                repaired["moves_finished"] += 1
                break


def _adopt_unknown_files(ledger: Ledger, home: Home, repaired: dict[str, int]) -> None:
    """Files in processing/ the ledger does not know (should not happen; never lose them)."""
    known = {Path(r.path) for r in ledger.files()}
    for entry in sorted(home.processing.iterdir()):
        if entry in known:
            continue
        record = ledger.begin_claim(entry.name, str(entry), time.time())
        info = os.lstat(entry)
        ledger.finish_claim(record.id, sha256_file(entry) if stat.S_ISREG(info.st_mode) else None,
                            info.st_size)
        repaired["adopted"] += 1


def requeue(ledger: Ledger, home: Home, name: str) -> Path:
    """Put a quarantined file back where it came in (the operator fixed it): removes its
    error.json, marks the old row REQUEUED, moves the file to inbox/<name> (score/,
    labels/ for those kinds)."""
    quarantined = ledger.files(FileState.QUARANTINED)
    matches = [r for r in quarantined if Path(r.path).name == name] or \
              [r for r in quarantined if r.name == name]
    if len(matches) != 1:
        names = ", ".join(sorted(Path(r.path).name for r in quarantined)) or "none"
        what = "several quarantined files are" if matches else "no quarantined file is"
        raise RetrainError(f"{what} named {name!r}; quarantined files: {names}")
    record = matches[0]
    target = home.intake[record.kind] / record.name
    if os.path.lexists(target):
        raise RetrainError(f"{target.parent.name}/ already has a file named {record.name!r}; move it away first")
    source = Path(record.path)
    ledger.move(record.id, FileState.REQUEUED, str(target))
    source.with_name(source.name + ".error.json").unlink(missing_ok=True)
    _rename(source, target)
    ledger.record_event("requeue", {"file_id": record.id, "name": record.name})
    log.info("requeued '%s' (file %d) into %s/", record.name, record.id, target.parent.name)
    return target
