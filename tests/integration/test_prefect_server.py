"""The daemon on a real `prefect server start` (as `make server` runs it), read back through
Prefect's own client: its deployment, runs started through the API, cancel, pause, events,
automations, and the runs list telling decisions apart.

One server and one daemon serve every test of this module, in order: each test drops its
own files and finds its own runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml
from harness import Daemon, cli, daemon_env, read_ledger, status_json, wait_for
from invariants import check_invariant

from flows.models.registry import ModelRegistry

pytestmark = pytest.mark.integration

PREFECT = str(Path(sys.executable).parent / "prefect")
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(folder), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"})
    log = open(folder / "server.log", "wb")
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        assert proc.poll() is None, (folder / "server.log").read_text()
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


class Served:
    """The module's daemon, its home, and Prefect's client on the server."""

    def __init__(self, root: Path, api: str):
        self.root, self.api = root, api
        self.home = root / "home"
        # While `hold` exists, a deploy waits in its hook, after the switch of `current`.
        self.hold = root / "hold-deploys"
        hook = f"{sys.executable} -c \"import os,time\nwhile os.path.exists('{self.hold}'): time.sleep(0.1)\""
        # Each run trains on its own file and deploys whenever it reaches the threshold: a
        # noisy batch is set aside (no signal), any good one is deployed.
        self.env = daemon_env(self.home, api, dask__dashboard_address=":0", policy__schedule="0 2 * * *",
                              policy__timezone="Europe/Paris", deploy__hook_command=hook,
                              window__last_files="1", evaluation__tolerance="1.0")
        self.daemon = Daemon(self.home, self.env, cwd=root)

    def status(self) -> dict:
        return status_json(self.home, self.env)

    def drop(self, *args: str) -> Path:
        result = cli("sample", "--out", str(self.home / "inbox"), *args, env=self.env, cwd=self.root)
        assert result.returncode == 0, result.stderr
        return Path(result.stdout.split()[0])

    def run_of(self, flow_run_id: str | None = None, file_name: str | None = None, done: bool = True):
        """The ledger's run (as `retrain status` shows it) of a flow run or of a file."""
        for run in self.status()["runs"]:
            if flow_run_id and run["flow_run_id"] != flow_run_id:
                continue
            if file_name and file_name not in (run.get("file_names") or []):
                continue
            if not done or run["state"] != "running":
                return run
        return None

    def ended_in_ledger(self, flow_run_id: str | None = None, file_name: str | None = None) -> bool:
        """Whether the ledger has an ended run of the flow run or of the file (a cheap poll)."""
        def ended(ledger) -> bool:
            return any(run.state != "running" and (not flow_run_id or run.flow_run_id == flow_run_id)
                       and (not file_name or file_name in [ledger.get(f).name for f in run.file_ids])
                       for run in ledger.runs(limit=10))
        return bool(read_ledger(self.home, ended))

    def wait_run(self, what: str, timeout: float = 240, **which) -> dict:
        return wait_for(lambda: self.ended_in_ledger(**which) and self.run_of(**which), timeout, what)

    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api}):
            return get_client(sync_client=True)

    def deployment(self):
        with self.client() as client:
            return client.read_deployment_by_name(f"retrain/{self.home.name}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("served"), prefect_server)
    try:
        served.daemon.wait_ready()
        yield served
    finally:
        served.hold.unlink(missing_ok=True)
        code = served.daemon.stop()
    assert code == 0, served.daemon.log()
    check_invariant(served.home)


def test_daemon_registers_its_deployment_and_runs_batches_as_its_flow_runs(served: Served) -> None:
    assert f"reporting to the Prefect API at {served.api}" in served.daemon.log()
    assert "Dask dashboard: http://" in served.daemon.log()
    deployment = served.deployment()
    assert deployment.concurrency_limit == 1 or deployment.global_concurrency_limit.limit == 1
    assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == [("0 2 * * *", "Europe/Paris")]
    assert not deployment.paused and deployment.work_pool_name is None

    name = served.drop("--rows", "3000", "--seed", "51").name
    run = served.wait_run("the first run", file_name=name)
    assert run["decision"] == "deployed", (run, served.daemon.log())

    # `status --watch` redraws until interrupted, then exits 0.
    out, code = _watch_until_drawn(served)
    assert code == 0, out
    assert "files: 1 in all" in out and "retrain/home" in out and "Traceback" not in out

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with served.client() as client:
        flow_run = client.read_flow_run(run["flow_run_id"])
        assert flow_run.deployment_id == deployment.id
        assert flow_run.state.is_completed() and flow_run.state.name == "Deployed"
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


def _watch_until_drawn(served: Served) -> tuple[str, int]:
    """`retrain status --watch` on a terminal (a pty) until its first drawing, then Ctrl+C."""
    import pty
    import select

    screen, terminal = pty.openpty()
    # Ctrl+C as a terminal sends it: to a command whose SIGINT is not ignored. A test run
    # started in the background by a shell without job control ignores SIGINT, and every
    # process it starts would inherit that.
    watch = subprocess.Popen([served.daemon.proc.args[0], "status", "--watch", "0.2"], env=served.env,
                             cwd=served.root, stdout=terminal, stderr=terminal,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(terminal)
    drawn, deadline = b"", time.monotonic() + 120
    try:
        while b"in all" not in drawn and time.monotonic() < deadline:
            if select.select([screen], [], [], 0.5)[0]:
                drawn += os.read(screen, 1 << 16)
        watch.send_signal(signal.SIGINT)
        # Read on while it ends, as a terminal does.
        deadline = time.monotonic() + 30
        while watch.poll() is None and time.monotonic() < deadline:
            if select.select([screen], [], [], 0.2)[0]:
                try:
                    drawn += os.read(screen, 1 << 16)
                except OSError:  # the terminal closed with the process
                    break
        code = watch.wait(timeout=5)
        while select.select([screen], [], [], 0.2)[0]:
            try:
                drawn += os.read(screen, 1 << 16)
            except OSError:
                break
    finally:
        os.close(screen)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn.decode(errors="replace")), code


def test_a_flow_run_created_through_the_api_is_executed_by_the_daemon(served: Served) -> None:
    with served.client() as client:
        created = client.create_flow_run_from_deployment(served.deployment().id,
                                                         parameters={"reason": "asked by the test"})
    run = served.wait_run("the API's run", flow_run_id=str(created.id))
    assert run["state"] == "completed" and run["files"] == 0, (run, served.daemon.log())
    assert "asked by the test" in (run["requested_by"] or ""), run
    with served.client() as client:
        flow_run = client.read_flow_run(created.id)
    assert flow_run.state.is_final() and flow_run.name == f"run-{run['id']}-window"
    assert "operator" in flow_run.tags and run["decision"].replace("_", "-") in flow_run.tags


def test_runs_of_a_deployed_and_a_noise_batch_differ_in_name_tags_and_state(served: Served) -> None:
    deployed = served.run_of(file_name=next(p.name for p in (served.home / "archive").iterdir()))
    name = served.drop("--rows", "3000", "--seed", "52", "--label-noise", "0.5").name
    noise = served.wait_run("the noisy batch's run", file_name=name)
    assert noise["decision"] == "no_signal", noise
    with served.client() as client:
        good, bad = (client.read_flow_run(r["flow_run_id"]) for r in (deployed, noise))
    assert (good.name, bad.name) == (f"run-{deployed['id']}-1-file", f"run-{noise['id']}-1-file")
    assert "deployed" in good.tags and "no-signal" in bad.tags and "no-signal" not in good.tags
    assert (good.state.name, bad.state.name) == ("Deployed", "NoSignal")
    assert bad.state.is_completed() and bad.state.message.startswith("not deployed, no signal")


def _events(served: Served, prefix: str) -> list:
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    with served.client() as client:
        page = client.read_events(filter=EventFilter(event=EventNameFilter(prefix=[prefix]),
                                                     occurred=EventOccurredFilter(since="2000-01-01T00:00:00Z")),
                                  limit=50)
    return page.events


def test_events_of_a_deployed_run_a_quarantined_file_and_a_duplicate(served: Served) -> None:
    first = next(p for p in (served.home / "archive").iterdir() if p.name.startswith("batch-0051"))
    shutil.copyfile(first, served.home / "copy.tmp")
    os.replace(served.home / "copy.tmp", served.home / "inbox" / "again.csv")
    (served.home / "notes.txt").write_text("not a table\n")
    os.replace(served.home / "notes.txt", served.home / "inbox" / "notes.txt")

    def seen() -> dict | None:
        # The notes file's quarantine, not the noise batch's (set aside too).
        found = {e.event: e for e in _events(served, "retrain.")
                 if e.event != "retrain.file.quarantined" or e.resource.name == "notes.txt"}
        wanted = {"retrain.file.duplicate", "retrain.file.quarantined", "retrain.run.deployed", "retrain.file.archived",
                  "retrain.run.no-signal", "retrain.model.degraded"}
        return found if wanted <= set(found) else None

    events = wait_for(seen, 60, "the events on the server")
    duplicate, quarantined = events["retrain.file.duplicate"], events["retrain.file.quarantined"]
    assert duplicate.resource.name == "again.csv" and duplicate.resource.id.startswith("retrain.file.")
    assert quarantined.resource.name == "notes.txt" and "not a .csv file" in quarantined.payload["reason"]
    deployed = events["retrain.run.deployed"]
    assert deployed.resource.id.endswith("/v0001") and deployed.resource.name == "v0001"
    roles = {r.role for r in deployed.related}
    assert {"deployment", "flow-run", "file"} <= roles
    # The noisy batch: nothing to learn, and the champion's live metric on it below the bar.
    assert events["retrain.run.no-signal"].resource.id != deployed.resource.id
    assert "carry nothing to learn" in events["retrain.run.no-signal"].payload["reason"]
    degraded = events["retrain.model.degraded"]
    assert degraded.resource.id.startswith(deployed.resource.id.rsplit("/", 1)[0])
    assert degraded.payload["value"] < 0.6 and "live" in degraded.payload["reason"]


def _cancel(served: Served, flow_run_id: str) -> float:
    """Cancel a flow run through the client, as the UI does; seconds until it is Cancelled."""
    from prefect.states import Cancelling

    with served.client() as client:
        client.set_flow_run_state(flow_run_id, Cancelling(message="cancelled by the test"))
        started = time.monotonic()
        wait_for(lambda: client.read_flow_run(flow_run_id).state.is_cancelled(), 60, "the run to be cancelled")
    return time.monotonic() - started


def _quarantine_note(served: Served, name: str) -> dict:
    notes = [json.loads(p.read_text()) for p in (served.home / "quarantine").glob("*.error.json")]
    return next(n for n in notes if n["file"] == name)


def _running_flow_run(served: Served, name: str) -> str | None:
    """The flow run of the run in flight on file ``name``, read from the ledger (quicker
    than `retrain status`: the cancel should come while the run is young)."""
    from service.intake.ledger import FileState, Ledger

    ledger = Ledger(served.home / "state" / "ledger.sqlite", readonly=True)
    try:
        record = next((f for f in ledger.files(FileState.RUNNING) if f.name == name), None)
        run = ledger.get_run(record.run_id) if record is not None and record.run_id else None
    finally:
        ledger.close()
    return run.flow_run_id if run is not None and run.state == "running" else None


def test_a_cancelled_run_stops_keeps_current_and_quarantines_its_file(served: Served) -> None:
    before = served.status()["current_model"]["version"]
    name = served.drop("--rows", "300000", "--seed", "53").name
    flow_run_id = wait_for(lambda: _running_flow_run(served, name), 120, "the large file's run to start")
    seconds = _cancel(served, flow_run_id)
    print(f"flow run Cancelled {seconds:.1f}s after the cancel")
    run = served.wait_run("the cancelled run", 60, file_name=name)
    assert run["state"] == "cancelled" and run["decision"] == "cancelled", run
    note = _quarantine_note(served, name)
    assert f"run {run['id']} was cancelled by an operator; `retrain requeue {name}` to take it again" in note["reason"]
    assert served.status()["current_model"]["version"] == before


def test_a_run_cancelled_after_its_switch_is_rolled_back(served: Served) -> None:
    """Also: after a cancel, the daemon goes on with the next file."""
    before = served.status()["current_model"]["version"]
    served.hold.touch()
    name = served.drop("--rows", "3000", "--seed", "55").name
    registry = ModelRegistry(served.home / "registry")  # what `retrain status` reads, read directly
    flow_run_id = wait_for(lambda: (registry.current_version() != before
                                    and _running_flow_run(served, name)), 120, "the run's deploy to switch current")
    _cancel(served, flow_run_id)
    served.hold.unlink()
    run = served.wait_run("the cancelled run", 60, file_name=name)
    assert run["state"] == "cancelled" and run["model_version"], run
    assert served.status()["current_model"]["version"] == before
    models = json.loads(cli("models", "--json", env=served.env, cwd=served.root).stdout)
    assert {v["version"]: v["decision"] for v in models["versions"]}[run["model_version"]] == "cancelled"
    assert "was cancelled by an operator" in _quarantine_note(served, name)["reason"]


def test_a_paused_deployment_queues_files_and_starts_no_run_until_resumed(served: Served) -> None:
    assert cli("pause", env=served.env, cwd=served.root).returncode == 0
    wait_for(lambda: served.status()["daemon"]["paused"], 30, "status to show the pause")
    assert served.deployment().paused
    name = served.drop("--rows", "3000", "--seed", "56").name
    wait_for(lambda: read_ledger(served.home, lambda ledger: ledger.counts()["queued"]) == 1, 60,
             "the file to be queued")
    time.sleep(3.0)
    assert served.run_of(file_name=name, done=False) is None
    assert served.status()["files"]["queued"] == 1

    assert cli("resume", env=served.env, cwd=served.root).returncode == 0
    assert served.wait_run("the run after resume", file_name=name)["state"] == "completed"
    assert not served.status()["daemon"]["paused"]


def test_the_readme_automations_are_accepted_and_a_degraded_champion_starts_a_run(served: Served) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events.schemas.automations import AutomationCore
    from prefect.settings import PREFECT_API_URL, temporary_settings

    automations = yaml.safe_load((ROOT / "config" / "automations.yaml").read_text())["automations"]
    deployment = served.deployment()
    with temporary_settings(updates={PREFECT_API_URL: served.api}):
        block = CustomWebhookNotificationBlock(name="test", url="http://127.0.0.1:9/hook")
        block_id = block.save("retrain-test-webhook", overwrite=True)
        automations[0]["actions"][0]["block_document_id"] = str(block_id)
        with served.client() as client:
            ids = [client.create_automation(AutomationCore.model_validate(a)) for a in automations]
            assert {a.name for a in (client.read_automation(i) for i in ids)} == {a["name"] for a in automations}
            known = {r.id for r in client.read_flow_runs()}

    def automation_runs() -> set[str]:
        """New flow runs of the deployment that the automation asked for, told apart by their
        reason: Prefect's scheduler also adds runs of the deployment's schedule, for later
        days, at any time."""
        with served.client() as client:
            return {str(r.id) for r in client.read_flow_runs()
                    if r.id not in known and r.deployment_id == deployment.id
                    and str(r.parameters.get("reason", "")).startswith("the champion ")}

    def executed() -> dict | None:
        """The daemon's run of one of them, once done."""
        asked = automation_runs()
        return next((r for r in served.status()["runs"] if r["flow_run_id"] in asked and r["state"] != "running"),
                    None)

    # A batch the champion does badly on: the daemon sends retrain.model.degraded, the
    # automation asks for a run of the deployment, the daemon executes it.
    served.drop("--rows", "3000", "--seed", "57", "--label-noise", "0.5")
    try:
        run = wait_for(executed, 240, "the automation's run")
    except AssertionError:
        with served.client() as client:
            seen = [(r.name, r.state_name, r.tags, r.parameters) for r in client.read_flow_runs() if r.id not in known]
        raise AssertionError(f"no run of the automation's flow runs; new flow runs: {seen}\n{served.daemon.log()}")
    assert run["requested_by"].startswith("the champion v") and " degraded: live " in run["requested_by"], run
