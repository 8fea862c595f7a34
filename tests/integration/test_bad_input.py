"""Bad input is quarantined with a reason a person can act on, never fatal: one daemon
takes every kind of bad file, then still trains on a good one."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from harness import Daemon, cli, daemon_env, status_json, wait_for
from invariants import check_invariant

from service.sample import sample_frame

pytestmark = pytest.mark.integration
MAX_BYTES = 400_000


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, prefect_api_url: str, dask_address: str):
    root = tmp_path_factory.mktemp("bad-input")
    home = root / "home"
    env = daemon_env(home, prefect_api_url, dask__address=dask_address,
                     watcher__max_file_bytes=str(MAX_BYTES), schema__max_bad_row_fraction="0.1")
    proc = Daemon(home, env, cwd=root)
    proc.wait_ready()
    # A first good file fixes the schema every later file is held to.
    drop(home, "first.csv", good_csv(3000, 5))
    wait_for(lambda: _run_of(home, env, "first.csv", "deployed"), 120, "the first good file's run")
    yield proc, env
    assert proc.stop(signal.SIGTERM) == 0, proc.log()


def good_csv(rows: int = 600, seed: int = 1) -> str:
    return sample_frame(rows, seed).to_csv(index=False)


def drop(home: Path, name: str, data: bytes | str) -> Path:
    """Write under a temporary name, then rename: a well-behaved writer."""
    tmp = home / "inbox" / f".{name}.tmp"
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    target = home / "inbox" / name
    os.rename(tmp, target)
    return target


def quarantined(daemon, name: str) -> dict:
    proc, env = daemon
    note = proc.home / "quarantine" / f"{name}.error.json"
    wait_for(note.exists, 60, f"{name} to be quarantined")
    data = json.loads(note.read_text())
    assert "\n" not in data["reason"] and data["hint"]
    assert (proc.home / "quarantine" / name).exists() or (proc.home / "quarantine" / name).is_symlink()
    return data


def with_bad_values(rows: int, bad: int) -> str:
    frame = sample_frame(rows, 3).astype(object)
    frame.loc[: bad - 1, "income"] = "n/a-income"
    return frame.to_csv(index=False)


CASES = {
    "empty.csv": (b"", "empty"),
    "header only.csv": ("age,income,plan,churned\n", "no rows"),
    "no target.csv": (sample_frame(50, 2).drop(columns=["churned"]).to_csv(index=False), "churned"),
    "wrong type.csv": (sample_frame(50, 2).assign(age="old").to_csv(index=False), "'age' expects numbers"),
    "too many bad rows.csv": (with_bad_values(200, 60), "'income' expects numbers"),
    "latin1.csv": ("age,plan,churned\n31,caf\xe9,1\n".encode("latin-1"), "not UTF-8"),
    "junk.csv": (bytes(range(256)) * 40, "binary content"),
    "huge.csv": ("a,b\n" + "1,2\n" * (MAX_BYTES // 4 + 10), "over the limit"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_file_is_quarantined_with_its_reason(daemon, name: str) -> None:
    data, expected = CASES[name]
    drop(daemon[0].home, name, data)
    assert expected in quarantined(daemon, name)["reason"]


def test_symlink_is_quarantined_and_never_followed(daemon, tmp_path: Path) -> None:
    target = tmp_path / "target.csv"
    target.write_text(good_csv())
    before = target.read_bytes()
    os.symlink(target, daemon[0].home / "inbox" / "link.csv")
    assert "symbolic link" in quarantined(daemon, "link.csv")["reason"]
    assert target.read_bytes() == before


def test_directory_named_csv_is_quarantined(daemon) -> None:
    (daemon[0].home / "inbox" / "folder.csv").mkdir()
    assert "directory" in quarantined(daemon, "folder.csv")["reason"]


def test_file_deleted_before_its_claim_leaves_nothing(daemon) -> None:
    proc, env = daemon
    path = proc.home / "inbox" / "short-lived.csv"
    with open(path, "w") as fh:  # still open, so not yet ready...
        fh.write(good_csv(10))
        os.unlink(path)  # ...and gone before it could be claimed
    time.sleep(2.0)
    status = status_json(proc.home, env)
    assert status["files"]["queued"] == 0
    assert not list(proc.home.glob("*/short-lived.csv"))


def test_few_bad_rows_are_dropped_and_counted(daemon) -> None:
    proc, env = daemon
    drop(proc.home, "few bad rows.csv", with_bad_values(600, 12))
    status, run = wait_for(lambda: _run_of(proc.home, env, "few bad rows.csv"), 120, "a run of the file")
    assert run["state"] == "completed", run
    assert run["rows"] == 588


def test_good_file_after_all_bad_ones_is_trained_on(daemon) -> None:
    proc, env = daemon
    drop(proc.home, "ventes été 2026.csv", good_csv(3000, 7))
    status, _ = wait_for(lambda: _run_of(proc.home, env, "ventes été 2026.csv", "deployed"), 120,
                         "the good file's run")
    assert status["current_model"] is not None
    assert (proc.home / "archive" / "ventes été 2026.csv").exists()
    counts = check_invariant(proc.home)
    assert counts["quarantined"] == len(CASES) + 2
    assert counts["archived"] == 3
    assert proc.proc.poll() is None  # still serving


def test_second_daemon_on_the_same_home_exits_at_once(daemon) -> None:
    proc, env = daemon
    result = cli("watch", env=env, cwd=proc.home.parent, timeout=60)
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if l.startswith("retrain: error")]
    assert len(lines) == 1 and f"pid {proc.proc.pid}" in lines[0], result.stderr


def _run_of(home: Path, env: dict, name: str, decision: str | None = None):
    """(`retrain status --json`, the run that used the file ``name``) once that run ended
    (with ``decision``, when given); None before."""
    with closing(sqlite3.connect(f"file:{home / 'state' / 'ledger.sqlite'}?mode=ro", uri=True)) as ledger:
        row = ledger.execute("SELECT run_id FROM files WHERE name = ? AND state IN ('archived', 'quarantined')",
                             (name,)).fetchone()
    if row is None or row[0] is None:
        return None
    status = status_json(home, env)
    run = next((r for r in status["runs"] if r["id"] == row[0] and r["state"] != "running"), None)
    if run is None or decision is not None and run["decision"] != decision:
        return None
    return status, run
