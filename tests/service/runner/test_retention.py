"""Retention on a real registry, ledger and cache: what is kept, what is removed, and
that the history stays complete."""

from __future__ import annotations

import time
from pathlib import Path

from flows.models.registry import ModelRegistry
from service.config import load_settings
from service.intake.home import Home
from service.intake.ledger import FileState, Ledger
from service.runner.retention import apply_retention, finish_expiry, version_history


def fill(registry: ModelRegistry, model: Path, decisions: str) -> None:
    """One version per letter: d deployed, r rejected."""
    for i, letter in enumerate(decisions):
        registry.register(model, {"metrics": {"roc_auc": 0.5 + i / 100},
                                  "decision": "deployed" if letter == "d" else "rejected"})


def settings(home: Home, **values):
    env = {f"RETRAIN_{k.upper()}": v for k, v in values.items()}
    return load_settings(home=home.root, environ=env)


def test_newest_kept_and_current_rollback_target_protected_never_removed(home: Home, tmp_path: Path) -> None:
    model = tmp_path / "m.skops"
    model.write_bytes(b"model")
    registry = ModelRegistry(home.registry)
    fill(registry, model, "ddrrrrrrrdrr")  # v0001..v0012
    registry.promote("v0010")  # current; rollback target: v0002
    ledger = Ledger(home.ledger_path)
    report = apply_retention(settings(home, registry__keep_versions="3", registry__protect='["v0001"]'),
                             home, ledger, [])
    kept = [v.version for v in registry.versions()]
    assert kept == ["v0001", "v0002", "v0010", "v0011", "v0012"]
    assert report.removed_versions == ["v0003", "v0004", "v0005", "v0006", "v0007", "v0008", "v0009"]
    for version in kept:
        registry.get(version)  # every kept version is whole
    assert registry.rollback_to() == ("v0010", "v0002")
    history = version_history(registry, ledger)
    assert [v.version for v in history] == [f"v{i:04d}" for i in range(1, 13)]
    assert [v.version for v in history if v.removed_at] == report.removed_versions
    assert history[4].metrics == {"roc_auc": 0.54} and history[4].decision == "rejected"
    # Numbering goes on after removals.
    assert registry.register(model, {}).version == "v0013"
    assert not list(registry.staging.iterdir())
    ledger.close()


def test_cache_keeps_the_window_and_archive_expiry_is_recorded_first(home: Home, tmp_path: Path) -> None:
    for key in ("aa11", "aa22", "bb33"):
        (home.cache / key[:2]).mkdir(exist_ok=True)
        (home.cache / key[:2] / f"{key}.parquet").write_bytes(b"x")
    ledger = Ledger(home.ledger_path)
    old, new = home.archive / "old.csv", home.archive / "new.csv"
    for i, path in enumerate((old, new)):
        path.write_text("a,b\n1,2\n")
        record = ledger.begin_claim(path.name, str(path), time.time())
        ledger.finish_claim(record.id, f"sha{i}", 8)
        ledger.move(record.id, FileState.ARCHIVED, str(path))
    ledger._conn.execute("UPDATE files SET updated_at=? WHERE name='old.csv'", (time.time() - 3 * 86400,))
    window = [str((home.cache / "aa" / "aa22.parquet").resolve())]
    report = apply_retention(settings(home, archive__keep_days="2"), home, ledger, window)
    assert report.removed_partitions == 2 and [p.name for p in home.cache.glob("*/*.parquet")] == ["aa22.parquet"]
    assert not old.exists() and new.exists()
    assert [f.name for f in ledger.files(FileState.EXPIRED)] == ["old.csv"]
    # A deletion a crash interrupted (recorded, file still there) is finished at start.
    old.write_text("back")
    assert finish_expiry(ledger) == 1 and not old.exists()
    ledger.close()
