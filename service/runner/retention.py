"""Retention: what a home keeps on disk, applied after every run.

- Model versions: the newest ``[registry] keep_versions``, plus ``current``, the rollback
  target and ``[registry] protect``; a removed version leaves a line in the ledger.
- Cached partitions: those of the last run's window; the others (files that left the
  window, partitions cleaned under an older schema) are removed. Kept model outputs are
  pruned by evaluation itself (only the champion's and the latest candidate's stay).
- Archived data files: kept, unless ``[archive] keep_days`` is set.

Each step does work bounded by what is kept (the registry's size, the window), not by the
number of past runs, so a daemon's runs cost the same after months as on the first day.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from core.records import ModelVersion
from flows.models.registry import ModelRegistry
from service.intake.home import Home
from service.intake.ledger import FileState, Ledger

log = logging.getLogger("retrain.retention")


@dataclass
class RetentionReport:
    removed_versions: list[str] = field(default_factory=list)
    removed_partitions: int = 0
    expired_files: list[int] = field(default_factory=list)


def apply_retention(settings, home: Home, ledger: Ledger, window_partitions: list[str]) -> RetentionReport:
    report = RetentionReport()
    registry = ModelRegistry(home.registry)
    removed = registry.prune(settings.registry.keep_versions, set(settings.registry.protect))
    if removed:
        ledger.record_removed_versions([r.model_dump() for r in removed])
        report.removed_versions = [r.version for r in removed]
        log.info("retention: removed model version(s) %s (registry.keep_versions=%d)",
                 ", ".join(report.removed_versions), settings.registry.keep_versions)
    if window_partitions:  # no window known (nothing was read): remove nothing
        report.removed_partitions = prune_cache(home.cache, set(window_partitions))
    if settings.archive.keep_days:
        report.expired_files = expire_archive(ledger, settings.archive.keep_days)
    return report


def version_history(registry: ModelRegistry, ledger: Ledger) -> list[ModelVersion]:
    """Every version ever trained, oldest first: those on disk and those retention removed
    (``removed_at`` set), for ``retrain models`` and ``retrain report``."""
    on_disk = registry.versions()
    present = {v.version for v in on_disk}
    removed = [ModelVersion.model_validate({**r, "removed_at": _iso(r["removed_at"])})
               for r in ledger.removed_versions() if r["version"] not in present]
    return sorted([*removed, *on_disk], key=lambda v: int(v.version[1:]))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def prune_cache(cache: Path, keep: set[str]) -> int:
    """Remove cached partitions that are not in ``keep`` (the window's paths; compared by
    name, which is the content key); returns how many."""
    names = {Path(p).name for p in keep}
    removed = 0
    for partition in cache.glob("*/*.parquet"):
        if partition.name not in names:
            partition.unlink(missing_ok=True)
            removed += 1
    return removed


def expire_archive(ledger: Ledger, keep_days: float) -> list[int]:
    """Delete archived files older than ``keep_days``: recorded first (state expired), then
    deleted, like every move; ``finish_expiry`` completes a deletion a crash interrupted."""
    expired = []
    for record in ledger.archived_before(time.time() - keep_days * 86400):
        ledger.move(record.id, FileState.EXPIRED, record.path)
        Path(record.path).unlink(missing_ok=True)
        expired.append(record.id)
        log.info("retention: deleted archived '%s' (file %d), archived over %g days ago",
                 record.name, record.id, keep_days)
    return expired


def finish_expiry(ledger: Ledger) -> int:
    """At start: delete files recorded as expired whose deletion a crash interrupted."""
    done = 0
    for record in ledger.files(FileState.EXPIRED):
        if os.path.lexists(record.path):
            Path(record.path).unlink()
            done += 1
    return done
