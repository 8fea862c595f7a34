"""Power cuts: SIGKILL the daemon (and its worker processes) while a batch is
preprocessing, training and deploying; restart; nothing is lost or used twice and
`current` is a complete, loadable model."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from harness import Daemon, cli, daemon_env, files_settled, status_json, wait_for
from invariants import check_invariant

from flows.models.registry import ModelRegistry
from service.intake.home import Home
from service.intake.inbox import claim_file
from service.intake.ledger import Ledger

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


KILL_POINTS = ["preprocess_partition", "train_candidate", "deploy_model"]


# Four daemon starts: on a busy 2-core machine this outlasts the default.
@pytest.mark.timeout(600)
def test_kill_at_each_stage_loses_nothing(tmp_path: Path, prefect_api_url: str) -> None:
    """One batch and three power cuts: while it is preprocessed, then (after a restart)
    while it trains, then while it deploys. After each, the folders and the ledger agree;
    a fourth daemon repairs what the last one left and finishes the batch."""
    # A deployment of its own on the session's API (named after the home): should the test
    # stop half-way, the flow run a kill left Running holds this deployment's one slot, not
    # the slot of every other test's home/.
    home = tmp_path / "power-cut"
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

    env["RETRAIN_DEPLOY__HOOK_COMMAND"] = "true"  # nothing left to catch in the act
    daemon = Daemon(home, env, cwd=tmp_path)
    try:
        daemon.wait_ready()
        wait_for(lambda: files_settled(home, 3), 240, "the batch to be re-run")
        status = status_json(home, env)
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


def test_retrain_run_repairs_an_unclean_stop_before_its_batch(tmp_path: Path, prefect_api_url: str,
                                                              dask_address: str) -> None:
    """`retrain run` opens the same session as the daemon: what a killed process left (a
    run cut short with its file in processing/, a half-written model version, the deploy
    lease) is repaired first; the file of the cut run waits in the queue for the daemon."""
    home = Home(tmp_path / "home").ensure()
    env = daemon_env(home.root, prefect_api_url)
    paths = cli("sample", "--out", str(tmp_path / "data"), "--files", "2", "--rows", "2000",
                "--seed", "23", env=env, cwd=tmp_path).stdout.split()
    shutil.copyfile(paths[0], home.inbox / Path(paths[0]).name)
    ledger = Ledger(home.ledger_path)
    try:
        cut = claim_file(ledger, home, home.inbox / Path(paths[0]).name, 1.0, 1 << 30)
        ledger.start_run([cut.id])  # ...then the process was killed
    finally:
        ledger.close()
    registry = ModelRegistry(home.registry)
    half_written = registry.staging / "v0001-0123abcd"
    half_written.mkdir(parents=True)
    (half_written / "model.skops").write_bytes(b"cut short")
    registry.take_lease("run 1")

    result = cli("run", paths[1], "--dask-address", dask_address, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("recovered after an unclean stop: runs_interrupted=1; removed 1 half-written model(s)"
            in result.stderr), result.stderr
    assert "1 file(s) from before wait in the queue" in result.stderr
    assert "run 2: deployed v0001" in result.stdout
    assert not half_written.exists() and registry.lease_holder() is None
    status = status_json(home.root, env)
    assert [(r["id"], r["state"]) for r in status["runs"]] == [(2, "completed"), (1, "interrupted")]
    assert status["files"]["queued"] == 1 and status["files"]["archived"] == 1
    check_invariant(home.root)
