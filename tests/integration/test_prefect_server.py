"""The daemon reporting to a real `prefect server start` (as `make server` runs it): the flow
run, its task runs and its artifacts are there, read back through Prefect's own client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from harness import Daemon, cli, daemon_env, status_json, wait_for

pytestmark = pytest.mark.integration

PREFECT = str(Path(sys.executable).parent / "prefect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-server"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1"})
    log = open(tmp_path / "prefect-server.log", "wb")
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        assert proc.poll() is None, (tmp_path / "prefect-server.log").read_text()
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 120, "prefect server start", interval=0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_daemon_reports_runs_tasks_and_artifacts_to_a_prefect_server(tmp_path: Path,
                                                                    prefect_server: str) -> None:
    home = tmp_path / "home"
    env = daemon_env(home, prefect_server, dask__dashboard_address=":0")
    daemon = Daemon(home, env, cwd=tmp_path)
    try:
        daemon.wait_ready()
        assert f"reporting to the Prefect API at {prefect_server}" in daemon.log()
        assert "Dask dashboard: http://" in daemon.log()
        cli("sample", "--out", str(home / "inbox"), "--rows", "3000", "--seed", "51", env=env, cwd=tmp_path)
        status = wait_for(lambda: (s := status_json(home, env))["runs"] and s["runs"][0]["state"] != "running"
                          and s, 180, "the run")

        # `status --watch` redraws until interrupted, then exits 0.
        watch = subprocess.Popen([daemon.proc.args[0], "status", "--watch", "0.2"], env=env, cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
        assert watch.returncode == 0, err
        assert "files: 1 in all" in out and "Traceback" not in err
    finally:
        assert daemon.stop() == 0, daemon.log()

    run = status["runs"][0]
    assert run["decision"] == "deployed", run
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run["flow_run_id"])
        assert flow_run.state.is_completed()
        assert client.read_flow(flow_run.flow_id).name == "retrain"
        only_ours = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        task_names = {t.name.rsplit("-", 1)[0] for t in client.read_task_runs(flow_run_filter=only_ours)}
        assert {"preprocess_partitions", "train_candidate", "evaluate_against_champion",
                "register_candidate", "deploy_model"} <= task_names, task_names
        artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=only_ours)}
        assert {"retrain-summary", "retrain-history", "retrain-versions"} <= set(artifacts), set(artifacts)
        assert "# Retrain: deployed" in artifacts["retrain-summary"].data
        assert "data:image/png;base64," in artifacts["retrain-history"].data
        assert artifacts["retrain-versions"].type == "table"
