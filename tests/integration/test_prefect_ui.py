"""The Prefect UI served by the daemon's embedded API, looked at in a real headless Chromium
(`.ci/run` installs it): the runs page lists the runs with their decisions, the artifacts
page the run's artifacts."""

from __future__ import annotations

import html
import re
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from harness import Daemon, cli, daemon_env, runs_ended, status_json, wait_for

from service.runtime.api import ui_address

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


STATE_NAMES = {"deployed": "Deployed", "rejected": "Rejected", "kept": "Kept"}


def finished_runs(home: Path, env: dict[str, str], count: int) -> list[dict] | None:
    """The runs of `retrain status --json`, once ``count`` of them ended (asked once the ledger says so)."""
    return status_json(home, env)["runs"] if runs_ended(home, count) else None


def page_text(url: str, tmp_path: Path) -> str:
    """What a person sees on ``url``: the page rendered by Chromium, its scripts run."""
    result = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=20000",
         "--window-size=1920,4000",  # the runs list renders only what is in the window
         "--dump-dom", url],
        capture_output=True, text=True, timeout=180)
    dom = re.sub(r"<script.*?</script>|<style.*?</style>", " ", result.stdout, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def test_a_taken_port_gives_a_free_one_and_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        host, chosen, note = ui_address("127.0.0.1", port)
    assert host == "127.0.0.1" and chosen != port and chosen > 0
    assert f"port {port} of 127.0.0.1 is not free" in note and f"http://127.0.0.1:{chosen}" in note
    assert ui_address("127.0.0.1", chosen)[1:] == (chosen, None)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium; .ci/run installs it)")
def test_the_daemon_serves_the_ui_and_a_browser_sees_the_runs_with_their_decisions(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # The default UI settings (127.0.0.1:4200, or a free port when it is taken).
    env = daemon_env(home, window__last_files="1", daemon__prefect_ui="true")
    daemon = Daemon(home, env, cwd=tmp_path)
    try:
        daemon.wait_ready(timeout=240)
        found = re.search(r"Prefect UI at (http://127\.0\.0\.1:(\d+)) ", daemon.log())
        assert found, daemon.log()
        ui = found.group(1)
        assert found.group(2) == "4200" or "port 4200 of 127.0.0.1 is not free" in daemon.log()
        settings = httpx.get(f"{ui}/ui-settings", timeout=30).json()
        assert settings["api_url"] == f"{ui}/api"  # the UI asks the API it is served by
        assert status_json(home, env)["daemon"]["prefect_api_url"] == f"{ui}/api"

        assert cli("sample", "--out", str(home / "inbox"), "--rows", "3000", "--seed", "1",
                   env=env, cwd=tmp_path).returncode == 0
        wait_for(lambda: finished_runs(home, env, 1), 240, "the run of the file")

        # The deployment's Pause and Run buttons send these requests to the API they are served with.
        api = f"{ui}/api"
        deployment = httpx.get(f"{api}/deployments/name/retrain/home", timeout=30).json()
        httpx.post(f"{api}/deployments/{deployment['id']}/pause_deployment", timeout=30).raise_for_status()
        assert wait_for(lambda: status_json(home, env)["daemon"]["paused"], 60, "the pause to show")
        httpx.post(f"{api}/deployments/{deployment['id']}/resume_deployment", timeout=30).raise_for_status()
        httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run",
                   json={"parameters": {"reason": "the Run button"}}, timeout=30).raise_for_status()
        runs = wait_for(lambda: finished_runs(home, env, 2), 300, "the run asked for in the UI")
        assert "the Run button" in str(runs[0]) and runs[1]["decision"] == "deployed", runs

        # What a person sees: each run by name, with its decision as its state's name.
        expected = ["run-1-1-file", "Deployed", f"run-{runs[0]['id']}-window", STATE_NAMES[runs[0]["decision"]]]

        def runs_page() -> str | None:
            text = page_text(f"{ui}/runs", tmp_path)
            return text if all(word in text for word in expected) else None

        text = wait_for(runs_page, 300, f"{expected} on the runs page", interval=2)
        assert "Flow runs" in text and "retrain" in text

        artifacts = wait_for(lambda: (t := page_text(f"{ui}/artifacts", tmp_path)) and "retrain-summary" in t and t,
                             300, "the artifacts page", interval=2)
        assert "retrain-history" in artifacts and "retrain-versions" in artifacts
    finally:
        assert daemon.stop() == 0, daemon.log()
