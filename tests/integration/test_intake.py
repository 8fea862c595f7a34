"""Intake under pressure, against a real daemon: bursts, slow writers, graceful stops."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from harness import Daemon, daemon_env, files_settled, status_json, wait_for
from invariants import check_invariant

from service.intake.ledger import FileState, Ledger
from service.sample import sample_frame

pytestmark = pytest.mark.integration


def test_burst_of_500_files_each_used_in_exactly_one_run(tmp_path: Path, prefect_api_url: str,
                                                         dask_address: str) -> None:
    home = tmp_path / "home"
    env = daemon_env(home, prefect_api_url, dask__address=dask_address)
    staging = tmp_path / "staging"
    staging.mkdir()
    for i in range(500):
        sample_frame(40, 100 + i).to_csv(staging / f"part {i:03d}.csv", index=False)
    daemon = Daemon(home, env, cwd=tmp_path)
    try:
        daemon.wait_ready()
        started = time.monotonic()
        for path in sorted(staging.iterdir()):
            os.rename(path, home / "inbox" / path.name)
        assert time.monotonic() - started < 1.0  # "dropped within a second"
        wait_for(lambda: files_settled(home, 500), 300, "all 500 files to be used")
    finally:
        assert daemon.stop() == 0, daemon.log()
    counts = check_invariant(home)
    assert counts["archived"] == 500
    ledger = Ledger(home / "state" / "ledger.sqlite", readonly=True)
    try:
        runs = [r for r in ledger.runs(limit=1000) if r.state == "completed"]
        used = [fid for r in runs for fid in r.file_ids]
        archived = {f.id: f.run_id for f in ledger.files(FileState.ARCHIVED)}
    finally:
        ledger.close()
    assert sorted(used) == sorted(archived)  # every file in exactly one completed run
    assert len(runs) <= 10, f"{len(runs)} runs for 500 files"


def test_slow_writer_is_never_read_early(tmp_path: Path, prefect_api_url: str, dask_address: str) -> None:
    home = tmp_path / "home"
    env = daemon_env(home, prefect_api_url, dask__address=dask_address,
                     watcher__settle_seconds="1.0")
    lines = sample_frame(2000, 3).to_csv(index=False).splitlines(keepends=True)
    daemon = Daemon(home, env, cwd=tmp_path)
    try:
        daemon.wait_ready()
        path = home / "inbox" / "slow.csv"
        with open(path, "w") as fh:  # one open handle, written over about 4 seconds
            for chunk in range(0, len(lines), 100):
                fh.writelines(lines[chunk:chunk + 100])
                fh.flush()
                time.sleep(0.2)
                assert path.exists(), "the file was taken while its writer was still writing"
        wait_for(lambda: files_settled(home, 1), 120, "the slow file's run")
        status = status_json(home, env)
    finally:
        assert daemon.stop() == 0, daemon.log()
    run = status["runs"][0]
    assert run["state"] == "completed" and run["rows"] == 2000, run
    check_invariant(home)


def test_sigterm_during_a_run_exits_zero_and_loses_nothing(tmp_path: Path, prefect_api_url: str) -> None:
    home = tmp_path / "home"
    # A deploy hook that outlasts the grace period: the run cannot finish in time. The
    # daemon runs its own local cluster, as by default, so its workers (and the task
    # still running on one) stop with it instead of living on in a shared cluster.
    env = daemon_env(home, prefect_api_url, daemon__grace_seconds="1", deploy__hook_command="sleep 30")
    daemon = Daemon(home, env, cwd=tmp_path)
    daemon.wait_ready()
    sample_frame(3000, 4).to_csv(home / "inbox" / ".a.tmp", index=False)
    os.rename(home / "inbox" / ".a.tmp", home / "inbox" / "a.csv")
    wait_for(lambda: "run 1 started" in daemon.log(), 60, "the run to start")
    time.sleep(1.0)
    started = time.monotonic()
    code = daemon.stop(signal.SIGTERM, timeout=60)
    assert code == 0, daemon.log()
    assert time.monotonic() - started < 30
    assert "handed back to the queue" in daemon.log()
    counts = check_invariant(home, allow_in_flight=True)
    assert counts["queued"] == 1 and counts["archived"] == 0

    # The next start takes the file up again and finishes it.
    env["RETRAIN_DEPLOY__HOOK_COMMAND"] = "true"
    daemon = Daemon(home, env, cwd=tmp_path)
    try:
        daemon.wait_ready()
        wait_for(lambda: files_settled(home, 1), 120, "the handed-back file's run")
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert check_invariant(home)["archived"] == 1
