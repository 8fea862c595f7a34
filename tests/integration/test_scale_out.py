"""Where `retrain run` runs the flow's tasks: on an existing Dask cluster (a real `dask
scheduler` and two `dask worker` processes, as an operator would start them), or with no
daemon and no address on a local cluster of threads in its own process, or of worker
processes; and the one-line errors when a scheduler or a Prefect API does not answer or start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from harness import cli, daemon_env, status_json, wait_for

pytestmark = pytest.mark.integration

DASK = shutil.which("dask", path=str(Path(sys.executable).parent)) or "dask"


@pytest.fixture
def external_cluster(tmp_path: Path) -> Iterator[str]:
    """`dask scheduler` + 2 x `dask worker`, each its own process; yields the address."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RETRAIN_"))}
    logs = open(tmp_path / "dask.log", "ab")
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                              env=env, stdout=logs, stderr=subprocess.STDOUT)]
    try:
        wait_for(scheduler_file.exists, 60, "the scheduler file")
        for name in ("w1", "w2"):
            procs.append(subprocess.Popen(
                [DASK, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                 "--nworkers", "1", "--no-dashboard", "--name", name],
                env=env, stdout=logs, stderr=subprocess.STDOUT))
        address = json.loads(scheduler_file.read_text())["address"]
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        logs.close()


def _executed(address: str) -> tuple[dict[str, int], set[str]]:
    """Tasks executed per worker, and the task names the scheduler has seen."""
    from distributed import Client

    with Client(address, timeout="30s") as client:
        per_worker = client.run(lambda dask_worker: dask_worker.state.executed_count)
        names = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
    return per_worker, set(names)


def test_batch_runs_on_an_existing_scheduler_and_its_workers(tmp_path: Path, prefect_api_url: str,
                                                             external_cluster: str) -> None:
    home = tmp_path / "home"
    env = daemon_env(home, prefect_api_url)
    paths = cli("sample", "--out", str(tmp_path / "data"), "--files", "2", "--rows", "4000",
                "--seed", "41", env=env, cwd=tmp_path).stdout.split()
    before, _ = _executed(external_cluster)
    result = cli("run", *paths, "--dask-address", external_cluster, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"running tasks on the Dask scheduler at {external_cluster} (2 workers)" in result.stderr
    assert "local Dask cluster" not in result.stderr
    # Not on a terminal: progress as plain lines, per partition and per stage.
    assert "preprocess: 0/2 partitions" in result.stderr and "preprocess: 2/2 partitions" in result.stderr
    assert "train: done" in result.stderr and "deploy: done" in result.stderr

    after, names = _executed(external_cluster)
    ran = {w: after[w] - before.get(w, 0) for w in after}
    # preprocess (at least one task), train, evaluate, register, deploy: all on these workers.
    assert sum(ran.values()) >= 5, ran
    assert {"preprocess_partitions_task", "train_candidate_task", "evaluate_task",
            "register_candidate_task", "deploy_task"} <= names, names
    status = status_json(home, env)
    assert status["files"]["archived"] == 2 and status["current_model"]["version"] == "v0001"


def test_unreachable_scheduler_or_server_is_one_line_and_non_zero(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = tmp_path / "data"
    env = daemon_env(home)
    paths = cli("sample", "--out", str(data), "--rows", "500", env=env, cwd=tmp_path).stdout.split()

    result = cli("run", *paths, "--dask-address", "tcp://127.0.0.1:9", env=env, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "Dask scheduler at tcp://127.0.0.1:9 does not answer" in lines[0]

    env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"
    result = cli("run", *paths, env=env, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "Prefect API at http://127.0.0.1:9/api does not answer" in lines[0]
    # The files were left alone: nothing copied into the home, nothing claimed.
    assert Path(paths[0]).exists()
    assert not any((home / "inbox").iterdir()) and not any((home / "processing").iterdir())


def test_a_one_shot_run_uses_threads_of_its_own_process_or_worker_processes(tmp_path: Path,
                                                                            prefect_api_url: str) -> None:
    home = tmp_path / "home"
    env = daemon_env(home)
    paths = cli("sample", "--out", str(tmp_path / "data"), "--files", "2", "--rows", "2000",
                env=env, cwd=tmp_path).stdout.split()

    result = cli("run", paths[0], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "run 1: deployed v0001" in result.stdout
    assert "local Dask cluster: 2 in-process workers x 1 threads" in result.stderr
    assert "Traceback" not in result.stderr and "ERROR" not in result.stderr, result.stderr

    # The worker processes are the point here: on the session's API, one embedded API start fewer.
    result = cli("run", paths[1], env={**env, "RETRAIN_DASK__RUN_IN_PROCESS": "false",
                                       "PREFECT_API_URL": prefect_api_url}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "run 2:" in result.stdout and "local Dask cluster: 2 workers x 1 threads" in result.stderr
    assert status_json(home, env)["files"]["archived"] == 2


def test_an_embedded_api_that_cannot_start_is_one_line_and_leaves_the_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = daemon_env(home)
    paths = cli("sample", "--out", str(tmp_path / "data"), "--rows", "500", env=env, cwd=tmp_path).stdout.split()

    result = cli("run", *paths, env={**env, "PREFECT_API_DATABASE_CONNECTION_URL": "nosuchdb://x"}, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("retrain: error: the embedded Prefect API exited while starting"), lines
    assert "nosuchdb" in lines[-1] and str(home / "state" / "prefect" / "api-server.log") in lines[-1]
    assert Path(paths[0]).exists()
    assert not any((home / "inbox").iterdir()) and not any((home / "processing").iterdir())
