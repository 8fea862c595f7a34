"""The fault matrix: every fault the daemon must ride out, injected for real, and per fault
what became of the run, the files, the registry and the ledger.

    make faults            # about 15-25 minutes on 2 shared cores; writes benchmarks/faults-results.md
                           # and the fault section of benchmarks/results.md
    python benchmarks/faults.py --only sigterm-group,api-killed

Each fault starts a real `retrain watch` (its own process group, as a terminal or systemd
runs it), drops real CSV files, injects the fault with real signals, real servers and
real filesystems (a small tmpfs as the home: needs root for `mount`), lets the daemon (or
a restarted one) finish, and then checks from the outside (tests/invariants.py): every
file in exactly one place as the ledger says (lost = a dropped file in none), no file used
by two completed runs (trained twice), `current` the version the ledger recorded
(disagreements). The short version of the matrix is tests/integration/test_stops.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

from harness import Daemon, RestartableDaskCluster, cli, daemon_env, wait_for
from invariants import check_invariant, check_registry_agrees

SECTION_START = "<!-- faults: written by benchmarks/faults.py -->"
SECTION_END = "<!-- /faults -->"
GRACE_SECONDS = 240.0  # the run in flight must fit in it on a loaded 2-core machine
SETTINGS = {"model__params": '{"max_iter": 20}', "daemon__grace_seconds": str(GRACE_SECONDS),
            "daemon__max_attempts": "5"}


@dataclass
class Result:
    fault: str
    run: str  # what became of the run in flight
    dropped: int
    lost: int = 0
    twice: int = 0
    disagreements: int = 0
    measured: str = ""


class Scenario:
    """One home, its daemon(s) and its files."""

    def __init__(self, root: Path, name: str, data: dict[str, Path], api_url: str | None = None,
                 home: Path | None = None, **settings: str):
        self.root = root / name
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.home = home or self.root / "home"
        (self.home / "inbox").mkdir(parents=True, exist_ok=True)
        self.env = daemon_env(self.home, api_url, **{**SETTINGS, **settings})
        self.env["PYTHONPATH"] = str(ROOT)
        self.data = data
        self.dropped: list[str] = []
        self.daemon: Daemon | None = None

    def start(self) -> Daemon:
        self.daemon = Daemon(self.home, self.env, cwd=self.root)
        self.daemon.wait_ready(timeout=300)
        return self.daemon

    def drop(self, key: str) -> None:
        source = self.data[key]
        name = f"{key}-{len(self.dropped)}.csv"
        temporary = self.home / "inbox" / f".{name}.tmp"
        shutil.copyfile(source, temporary)
        os.rename(temporary, self.home / "inbox" / name)
        self.dropped.append(name)

    def log(self) -> str:
        return self.daemon.log() if self.daemon else ""

    def wait_run_started(self, run: int, timeout: float = 300) -> None:
        wait_for(lambda: f"run {run} started" in self.log(), timeout, f"run {run} to start")

    def settled(self) -> bool:
        counts = check_invariant(self.home, allow_in_flight=True)
        return counts.get("archived", 0) + counts.get("quarantined", 0) + counts.get("duplicate", 0) == len(self.dropped)

    def wait_settled(self, timeout: float = 600) -> None:
        wait_for(self.settled, timeout, "every file to be archived", interval=1.0)

    def children(self, marker: str) -> list[psutil.Process]:
        assert self.daemon is not None
        return [p for p in psutil.Process(self.daemon.proc.pid).children(recursive=True)
                if marker in " ".join(p.cmdline())]

    def stop(self) -> int:
        assert self.daemon is not None
        return self.daemon.stop(signal.SIGTERM, timeout=GRACE_SECONDS + 60)

    def check(self, fault: str, run: str, measured: str = "") -> Result:
        result = Result(fault, run, len(self.dropped), measured=measured)
        try:
            counts = check_invariant(self.home)
            result.lost = len(self.dropped) - sum(counts.get(k, 0) for k in ("archived", "quarantined", "duplicate",
                                                                            "queued"))
        except AssertionError as exc:
            result.lost, result.measured = len(self.dropped), f"{measured}; invariant: {exc}"
        try:
            check_registry_agrees(self.home)
        except AssertionError as exc:
            text = str(exc)
            if "two completed runs" in text:
                result.twice = text.count(",") + 1
            else:
                result.disagreements = 1
            result.measured = f"{result.measured}; {text}"
        return result

    def last_outcome(self) -> str:
        """The newest run's outcome (the one that took the files in the end)."""
        from service.intake.ledger import Ledger

        ledger = Ledger(self.home / "state" / "ledger.sqlite", readonly=True)
        try:
            newest = ledger.runs(limit=1)[0].id
        finally:
            ledger.close()
        return self.outcome_of(newest)

    def outcome_of(self, run: int) -> str:
        from service.intake.ledger import Ledger

        ledger = Ledger(self.home / "state" / "ledger.sqlite", readonly=True)
        try:
            record = ledger.get_run(run)
        finally:
            ledger.close()
        return f"run {run} {record.state}" + (f" ({record.decision} {record.model_version or ''})".replace(" )", ")")
                                              if record.decision else "")


def _no_process_left(processes: list[psutil.Process], timeout: float = 30) -> int:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    left = 0
    for process in alive:
        try:
            left += process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass
    return left


# -- the faults -------------------------------------------------------------------------------

def stop_group(sig: signal.Signals) -> Callable[[Path, dict], Result]:
    def fault(root: Path, data: dict) -> Result:
        name = f"{sig.name} to the process group, 300,000-row run in flight"
        s = Scenario(root, sig.name.lower(), data)
        daemon = s.start()
        try:
            s.drop("big")
            s.wait_run_started(1)
            time.sleep(2)
            children = psutil.Process(daemon.proc.pid).children(recursive=True)
            sent = time.monotonic()
            os.killpg(daemon.proc.pid, sig)
            code = daemon.proc.wait(timeout=GRACE_SECONDS + 120)
            took = time.monotonic() - sent
            left = _no_process_left(children)
        finally:
            daemon.kill_group()
        measured = (f"exit {code} {took:.1f} s after the signal (limit: grace {GRACE_SECONDS:.0f} s + 15 s); "
                    f"{left} process(es) left")
        return s.check(name, s.outcome_of(1) + ", file archived by it" if s.settled() else s.outcome_of(1),
                       measured)
    return fault


def kill_daemon(root: Path, data: dict) -> Result:
    s = Scenario(root, "kill-daemon", data)
    daemon = s.start()
    try:
        s.drop("small")
        s.wait_run_started(1)
        time.sleep(3)
        children = psutil.Process(daemon.proc.pid).children(recursive=True)
        daemon.proc.send_signal(signal.SIGKILL)  # the daemon alone: its children must follow
        daemon.proc.wait(timeout=30)
        left = _no_process_left(children, timeout=60)
    finally:
        daemon.kill_group()
    s.start()
    try:
        s.wait_settled()
    finally:
        s.stop()
    return s.check("SIGKILL to the daemon mid-run, then a restart", f"{s.outcome_of(1)}; re-run: {s.last_outcome()}",
                   f"{left} process(es) of the killed daemon left after 60 s")


def kill_worker(root: Path, data: dict) -> Result:
    s = Scenario(root, "kill-worker", data)
    s.start()
    try:
        s.drop("small")
        s.wait_run_started(1)
        time.sleep(3)
        workers = s.children("multiprocessing.spawn")
        workers[0].kill()
        s.wait_settled()
    finally:
        s.stop()
    runs = s.outcome_of(1) + ("" if "completed" in s.outcome_of(1) else f"; re-run: {s.last_outcome()}")
    return s.check("SIGKILL to a Dask worker mid-run", runs, "the nanny starts a new worker")


def kill_embedded_api(root: Path, data: dict) -> Result:
    s = Scenario(root, "api-killed", data)
    s.start()
    try:
        s.drop("small")
        s.wait_run_started(1)
        time.sleep(2)
        killed = time.monotonic()
        s.children("service.runtime.tethered")[0].kill()
        wait_for(lambda: "the embedded Prefect API answers again" in s.log(), 300, "the API to be back")
        back = time.monotonic() - killed
        s.drop("small2")
        s.wait_settled()
    finally:
        s.stop()
    return s.check("embedded Prefect API killed (SIGKILL) mid-run", f"{s.outcome_of(1)}; last: {s.last_outcome()}",
                   f"API started again by the daemon after {back:.1f} s; the file dropped after it archived")


def api_killed_after_the_switch(root: Path, data: dict) -> Result:
    """The first deploy has switched `current` (its hook still runs) when the embedded API
    dies: whatever the deploy task can still report, `current` and the ledger must agree."""
    s = Scenario(root, "api-killed-at-deploy", data, deploy__hook_command="sleep 8")
    s.start()
    try:
        s.drop("small")
        wait_for(lambda: (s.home / "registry" / "current").is_symlink(), 600, "the deploy's switch", interval=0.1)
        s.children("service.runtime.tethered")[0].kill()
        s.wait_settled()
    finally:
        s.stop()
    return s.check("embedded Prefect API killed right after the first deploy's switch",
                   f"{s.outcome_of(1)}; last: {s.last_outcome()}", "current and the ledger compared after the stop")


def restart_external_server(root: Path, data: dict) -> Result:
    from service.runtime.api import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    prefect_home = root / "prefect-server"

    def start_server() -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
                   PREFECT_UI_ENABLED="false")
        log = open(root / "prefect-server.log", "ab")
        server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                   "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        import httpx

        def up() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(up, 180, "prefect server to answer", interval=0.5)
        return server

    server = start_server()
    s = Scenario(root, "server-restart", data, api_url=url)
    try:
        s.start()
        try:
            s.drop("small")
            s.wait_run_started(1)
            time.sleep(2)
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            time.sleep(5)
            server = start_server()
            s.drop("small2")
            s.wait_settled()
            alive = s.daemon.proc.poll() is None
        finally:
            s.stop()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
    return s.check("`prefect server` killed (SIGKILL) mid-run, restarted 5 s later on the same port",
                   f"{s.outcome_of(1)}; last: {s.last_outcome()}", f"daemon alive throughout: {alive}; the file dropped after the restart archived")


def restart_dask_scheduler(root: Path, data: dict) -> Result:
    """An existing cluster (`[dask] address`): its scheduler killed while a run's tasks are on
    it, started again on the same address 5 s later; its workers, which exit with it, are
    started again by a supervisor (as systemd's Restart=always would)."""
    from distributed import Client

    (root / "scheduler-restart-cluster").mkdir(parents=True, exist_ok=True)  # its log, beside the scenario's
    cluster = RestartableDaskCluster(root / "scheduler-restart-cluster", workers=2)
    try:
        s = Scenario(root, "scheduler-restart", data, dask__address=cluster.address)
        s.start()
        try:
            s.drop("small")
            with Client(cluster.address, timeout="30s", set_as_default=False) as client:
                wait_for(lambda: client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)), 300,
                         "the run's tasks on the scheduler", interval=0.05)
            cluster.stop_scheduler(signal.SIGKILL)
            killed = time.monotonic()
            time.sleep(5)
            cluster.start_scheduler()
            wait_for(lambda: "answers again" in s.log(), 300, "the daemon to see the scheduler back")
            back = time.monotonic() - killed
            s.drop("small2")
            s.wait_settled()
            alive = s.daemon.proc.poll() is None
        finally:
            s.stop()
    finally:
        cluster.close()
    return s.check("existing Dask cluster: `dask scheduler` killed (SIGKILL) mid-run, restarted 5 s later on the "
                   "same address", f"{s.outcome_of(1)}; last: {s.last_outcome()}",
                   f"daemon alive throughout: {alive}; runs again {back:.1f} s after the kill, plugins registered "
                   f"again; {cluster.worker_starts} worker starts; the file dropped after it archived")


def full_disk(root: Path, data: dict) -> Result:
    """The home on a 48 MiB tmpfs (Prefect's own database elsewhere), filled up while a
    file waits: the run fails, the file goes back to the queue; space back, it is taken."""
    s = Scenario(root, "full-disk", data)
    mount = s.home
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], check=True)
    try:
        (s.home / "inbox").mkdir(parents=True, exist_ok=True)
        s.env["PREFECT_HOME"] = str(s.root / "prefect")
        s.start()
        try:
            s.drop("small")
            s.wait_settled()  # a first model, so that the full disk hits a later run
            filler = s.home / "filler"
            free = shutil.disk_usage(s.home).free
            with open(filler, "wb") as out:  # leave room for the file and little else
                out.write(b"\0" * max(0, free - data["small2"].stat().st_size - 256 * 1024))
            s.drop("small2")
            wait_for(lambda: "run 2 failed" in s.log() or "run 2 did not run" in s.log(), 300, "run 2 to fail")
            failed_line = next(line for line in s.log().splitlines() if "run 2 failed" in line or "run 2 did not" in line)
            filler.unlink()
            s.wait_settled()
        finally:
            s.stop()
        result = s.check("full disk under the home (tmpfs), then space back",
                         f"{s.outcome_of(2)}; the file re-run: {s.last_outcome()}",
                         f"logged: {failed_line.split(': ', 1)[-1][:160]}")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    return result


def read_only_registry(root: Path, data: dict) -> Result:
    s = Scenario(root, "read-only-registry", data)
    registry = s.home / "registry"
    registry.mkdir(parents=True, exist_ok=True)
    s.start()
    try:
        subprocess.run(["mount", "--bind", str(registry), str(registry)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(registry)], check=True)
        try:
            s.drop("small")
            wait_for(lambda: "run 1 failed" in s.log() or "run 1 did not" in s.log(), 300, "run 1 to fail")
            failed_line = next(line for line in s.log().splitlines() if "run 1 failed" in line or "run 1 did not" in line)
        finally:
            subprocess.run(["umount", "-l", str(registry)], check=False)
        s.wait_settled()
    finally:
        s.stop()
    return s.check("read-only registry (a read-only bind mount), then writable again",
                   f"{s.outcome_of(1)}; the file re-run: {s.last_outcome()}",
                   f"logged: {failed_line.split(': ', 1)[-1][:160]}")


FAULTS: dict[str, Callable[[Path, dict], Result]] = {
    "sigterm-group": stop_group(signal.SIGTERM),
    "sigint-group": stop_group(signal.SIGINT),
    "kill-daemon": kill_daemon,
    "kill-worker": kill_worker,
    "api-killed": kill_embedded_api,
    "api-killed-at-deploy": api_killed_after_the_switch,
    "server-restart": restart_external_server,
    "scheduler-restart": restart_dask_scheduler,
    "full-disk": full_disk,
    "read-only-registry": read_only_registry,
}


def sample_data(root: Path) -> dict[str, Path]:
    data = root / "data"
    env = daemon_env(root / "unused")
    env["PYTHONPATH"] = str(ROOT)

    def one(rows: int, seed: int) -> Path:
        return Path(cli("sample", "--out", str(data / str(seed)), "--files", "1", "--rows", str(rows), "--seed",
                        str(seed), env=env, cwd=root).stdout.split()[0])
    return {"big": one(300_000, 1), "small": one(20_000, 2), "small2": one(20_000, 3)}


def report(results: list[Result], started: float, load: tuple[float, float]) -> str:
    lines = [SECTION_START, "## Fault matrix (`make faults`)", "",
             f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `benchmarks/faults.py` in "
             f"{time.monotonic() - started:.0f} s on the development machine: 2 cores shared with other "
             f"work (load average {load[0]:.1f} at the start, {load[1]:.1f} at the end), Python "
             f"{platform.python_version()}. Every fault is real: signals to real processes, real Prefect servers, "
             "a real tmpfs and a read-only bind mount. Lost: a dropped file in no folder the ledger names; "
             "trained twice: a file used by two completed runs; disagreements: `current` is not the version the "
             "ledger recorded (deployed or rolled back to). The daemons run with `daemon.grace_seconds = "
             f"{GRACE_SECONDS:.0f}` (on this loaded machine the run in flight must fit in it), "
             "`daemon.max_attempts = 5` and `model.params = {max_iter = 20}`.", "",
             "| fault | the run in flight | files | lost | trained twice | registry/ledger disagreements | measured |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.fault} | {r.run} | {r.dropped} | {r.lost} | {r.twice} | {r.disagreements} | {r.measured} |")
    return "\n".join([*lines, SECTION_END, ""])


def write_section(path: Path, section: str) -> None:
    """Replace the fault section of ``path`` (or append it), leaving the rest as it is."""
    text = path.read_text() if path.exists() else ""
    if SECTION_START in text and SECTION_END in text:
        before, rest = text.split(SECTION_START, 1)
        text = before + section.rstrip("\n") + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description="The fault matrix of the retrain daemon.")
    parser.add_argument("--only", help="comma-separated faults: " + ", ".join(FAULTS))
    parser.add_argument("--work", default="/tmp/retrain-faults", help="scratch folder (default /tmp/retrain-faults)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "faults-results.md")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results.md",
                        help="the benchmark results whose fault section is rewritten")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(FAULTS)
    root = Path(args.work)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    # PYTHONPATH: the Dask workers of an existing cluster run this checkout's code, as the daemons do.
    os.environ.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", PYTHONPATH=str(ROOT))
    started, load = time.monotonic(), os.getloadavg()[0]
    data = sample_data(root)
    results = []
    for name in chosen:
        print(f"fault {name} ...", flush=True)
        try:
            results.append(FAULTS[name](root, data))
        except Exception as exc:  # a scenario that could not be carried out is a result too
            results.append(Result(name, f"scenario failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", 0,
                                  measured="see " + str(root / name)))
        print(f"  {results[-1]}", flush=True)
    section = report(results, started, (load, os.getloadavg()[0]))
    args.out.write_text(section.replace(SECTION_START + "\n## Fault matrix", "# Fault matrix")
                        .replace(SECTION_END + "\n", ""))
    if args.only is None:  # only the whole matrix replaces the one in the results
        write_section(args.results, section)
    print(section)
    return 0 if all(r.lost == r.twice == r.disagreements == 0 and not r.run.startswith("scenario failed")
                    for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
