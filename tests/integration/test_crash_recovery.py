"""Power cuts: SIGKILL the daemon (and its worker processes) while a batch is
preprocessing, training and deploying; restart; nothing is lost or used twice and
`current` is a complete, loadable model."""

from __future__ import annotations

import json
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from harness import Daemon, cli, daemon_env, status_json, wait_for
from invariants import check_invariant

pytestmark = pytest.mark.integration


def _task_running(api: str, home: Path, name: str) -> bool:
    """Whether a task run ``name`` of this home's running flow run is running (the API is
    shared by the whole session: other tests' killed runs stay "Running" there)."""
    try:
        with closing(sqlite3.connect(f"file:{home / 'state' / 'ledger.sqlite'}?mode=ro", uri=True)) as db:
            ids = [r[0] for r in db.execute("SELECT flow_run_id FROM runs WHERE state='running'") if r[0]]
    except sqlite3.Error:
        return False
    if not ids:
        return False
    body = {"flow_runs": {"id": {"any_": ids}},
            "task_runs": {"name": {"like_": name}, "state": {"type": {"any_": ["RUNNING"]}}}}
    response = httpx.post(f"{api}/task_runs/filter", json=body, timeout=10)
    return bool(response.json())


def _all_settled(home: Path, env: dict, files: int) -> dict | None:
    status = status_json(home, env)
    f = status["files"]
    settled = f["archived"] + f["quarantined"] + f["duplicate"]
    running = [r for r in status["runs"] if r["state"] == "running"]
    return status if settled == files and not running else None


KILL_POINTS = ["preprocess_partition", "train_candidate", "deploy_model"]


def test_kill_at_each_stage_loses_nothing(tmp_path: Path, prefect_api_url: str) -> None:
    """One batch and three power cuts: while it is preprocessed, then (after a restart)
    while it trains, then while it deploys. After each, the folders and the ledger agree;
    a fourth daemon repairs what the last one left and finishes the batch."""
    home = tmp_path / "home"
    settings = {
        # Small partitions and a deploy hook that takes a while: each stage lasts long
        # enough to be caught in the act.
        "preprocess__rows_per_partition": "20000",
        "deploy__hook_command": "sleep 4",
        "model__params": '{"max_iter": 200}',
        # Each death during a run counts as an attempt of its files; three are planned here.
        "daemon__max_attempts": "5",
    }
    env = daemon_env(home, prefect_api_url, **settings)
    data = tmp_path / "data"
    paths = cli("sample", "--out", str(data), "--files", "3", "--rows", "40000", "--seed", "11",
                env=env, cwd=tmp_path).stdout.split()
    (home / "inbox").mkdir(parents=True)
    for path in paths:
        Path(path).rename(home / "inbox" / Path(path).name)

    for stage in KILL_POINTS:
        daemon = Daemon(home, env, cwd=tmp_path)
        try:
            daemon.wait_ready()
            wait_for(lambda: _task_running(prefect_api_url, home, stage), 180, f"{stage} to run")
        finally:
            daemon.kill_group()
        counts = check_invariant(home)  # the kill left work half-done, nothing lost
        assert counts["archived"] == 0, (stage, counts)

    daemon = Daemon(home, env, cwd=tmp_path)
    try:
        daemon.wait_ready()
        status = wait_for(lambda: _all_settled(home, env, 3), 240, "the batch to be re-run")
    finally:
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log()
    counts = check_invariant(home)
    assert counts["archived"] == 3, (counts, daemon.log())
    assert "recovered after an unclean stop" in daemon.log()
    completed = [r for r in status["runs"] if r["state"] == "completed"]
    assert len(completed) == 1 and completed[0]["files"] == 3
    interrupted = [r for r in status["runs"] if r["state"] == "interrupted"]
    assert len(interrupted) == len(KILL_POINTS)

    # `current` is complete and loadable: it predicts.
    models = json.loads(cli("models", "--json", env=env, cwd=tmp_path).stdout)
    assert models["current"] is not None
    registry = home / "registry"
    assert not any(p.name.startswith("v") and not (p / "metadata.json").exists()
                   for p in registry.iterdir())
    predicted = cli("predict", paths[0].replace(str(data), str(home / "archive")),
                    "--output", str(tmp_path / "p.csv"), env=env, cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
