"""Soak: many small files through one warm daemon; does it hold steady?

    make soak          # 1,000 files after 20 warm-up files on the daemon's own local cluster
    make soak-cluster  # 500 files after 20 on an existing cluster (a `dask scheduler` and two
                       # `dask worker` processes the benchmark starts, as an operator would)
    make soak-quick    # 60 files after 10 warm-up files, for development

One real `retrain watch` (its own home under benchmarks/work/, the default local cluster,
the embedded Prefect API, `[window] last_files = 3`). Files of 1,000 rows, each from its
own seed (never a duplicate), are dropped one at a time; after each is archived the
benchmark records the drop-to-archived time and, once the daemon is idle again, the
resident memory of each role of the daemon's process tree (the daemon, its Dask workers,
the Prefect API) and the size of each home folder. With ``--existing-cluster`` the daemon runs its tasks on a scheduler and
workers started as separate processes, and their memory is measured as roles of their own.
Writes benchmarks/soak.png (soak-cluster.png) and a section of benchmarks/soak-results.md
(soak-quick-results.md for --quick): the growth of memory per run (linear fit over the
second half of the measured runs: what is left once bounded buffers have filled), the
median time of the first files against the last, the disk growth per run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # service.sample, from this checkout
RETRAIN = str(Path(sys.executable).parent / "retrain")
MIB = 1024 * 1024
ROLES = ("daemon", "workers", "prefect api", "other", "tree")
CLUSTER_ROLES = ("scheduler", "cluster workers")
FOLDERS = ("registry", "cache", "archive", "state")
# Targets: growth per run over the second half, of the daemon's whole process tree on its
# own cluster; of each of scheduler, workers together and daemon tree on an existing one.
TARGET_SLOPE_MIB = 0.02
TARGET_CLUSTER_SLOPE_MIB = 0.05
TARGET_TIME_RATIO = 1.1
FIRST_LAST = 50


# -- what is measured ------------------------------------------------------------------------

def role_of(proc: psutil.Process, root_pid: int) -> str:
    """The daemon itself; its Prefect API server (uvicorn); its Dask workers (the processes
    the nannies spawn); anything else (multiprocessing's resource tracker)."""
    if proc.pid == root_pid:
        return "daemon"
    cmd = " ".join(proc.cmdline())
    if "uvicorn" in cmd or "prefect" in cmd and "server" in cmd:
        return "prefect api"
    if "spawn_main" in cmd or "forkserver" in cmd:
        return "workers"
    return "other"


def tree_usage(root_pid: int) -> tuple[dict[str, int], dict[str, float]]:
    """Resident bytes and CPU seconds so far (user and system) per role of a process tree,
    and of the whole tree."""
    rss, cpu = dict.fromkeys(ROLES, 0), dict.fromkeys(ROLES, 0.0)
    root = psutil.Process(root_pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            with proc.oneshot():
                role, used, times = role_of(proc, root_pid), proc.memory_info().rss, proc.cpu_times()
        except psutil.Error:
            continue
        for role_or_tree in (role, "tree"):
            rss[role_or_tree] += used
            cpu[role_or_tree] += times.user + times.system
    return rss, cpu


def cluster_usage(cluster: "ExistingCluster | None") -> tuple[dict[str, int], dict[str, float]]:
    """Resident bytes and CPU seconds so far of an existing cluster's scheduler and of its
    workers together (each `dask worker` process with the worker process its nanny spawns)."""
    if cluster is None:
        return {}, {}
    rss, cpu = dict.fromkeys(CLUSTER_ROLES, 0), dict.fromkeys(CLUSTER_ROLES, 0.0)
    for role, procs in (("scheduler", [cluster.scheduler]), ("cluster workers", cluster.workers)):
        for proc in procs:
            try:
                ps = psutil.Process(proc.pid)
                for one in [ps, *ps.children(recursive=True)]:
                    with one.oneshot():
                        rss[role] += one.memory_info().rss
                        times = one.cpu_times()
                        cpu[role] += times.user + times.system
            except psutil.Error:
                continue
    return rss, cpu


def folder_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def disk_usage(home: Path) -> dict[str, int]:
    return {folder: folder_bytes(home / folder) for folder in FOLDERS}


# -- an existing cluster -----------------------------------------------------------------------

@dataclass
class ExistingCluster:
    """A `dask scheduler` and `dask worker`s started as separate processes (their own
    sessions), as an operator starts them: the daemon connects to it and does not own it."""

    workdir: Path
    workers_count: int = 2

    def start(self) -> str:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{port}"
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._logs = [open(self.workdir / f"{name}.log", "wb") for name in
                      ["scheduler", *(f"worker-{i}" for i in range(self.workers_count))]]
        self.scheduler = subprocess.Popen(
            [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", ":0"], env=env, stdout=self._logs[0], stderr=subprocess.STDOUT,
            start_new_session=True)
        self.workers = [subprocess.Popen(
            [str(bin_dir / "dask"), "worker", self.address, "--nthreads", "1", "--nworkers", "1",
             "--dashboard-address", ":0"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True) for log in self._logs[1:]]
        from distributed import Client

        with Client(self.address, timeout="60s") as client:
            client.wait_for_workers(self.workers_count, timeout=120)
        return self.address

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, self.scheduler]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self._logs:
            log.close()


# -- the daemon ------------------------------------------------------------------------------

@dataclass
class SoakDaemon:
    """A real `retrain watch` on its own home, fed one file at a time."""

    home: Path
    settings: dict[str, str] = field(default_factory=dict)
    start_seconds: float = 0.0

    def start(self, timeout: float = 180) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RETRAIN_", "PREFECT_"))}
        env.update({"RETRAIN_HOME": str(self.home), "RETRAIN_WINDOW__LAST_FILES": "3",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                    "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
        env.update({f"RETRAIN_{k.upper()}": v for k, v in self.settings.items()})
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = self.home.parent / f"{self.home.name}.log"
        self._log = open(self.log_path, "wb")
        started = time.perf_counter()
        self.proc = subprocess.Popen([RETRAIN, "watch"], cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while "press Ctrl+C to stop" not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the daemon did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.start_seconds = time.perf_counter() - started
        self.ledger = sqlite3.connect(f"file:{self.home / 'state' / 'ledger.sqlite'}?mode=ro", uri=True)

    def drop(self, path: Path) -> float:
        """A careful producer's drop: a hard link beside the inbox, then one rename."""
        staging = self.home / "drop-staging"
        staging.mkdir(exist_ok=True)
        os.link(path, staging / path.name)
        dropped = time.perf_counter()
        os.rename(staging / path.name, self.home / "inbox" / path.name)
        return dropped

    def wait_settled(self, name: str, timeout: float = 300) -> str:
        """Poll the ledger (read-only) until the file reached a final state; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.ledger.execute("SELECT state FROM files WHERE name = ?", (name,)).fetchone()
            if row and row[0] in ("archived", "quarantined", "duplicate"):
                return row[0]
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.01)
        raise TimeoutError(f"{name} was not settled within {timeout:.0f}s")

    def wait_done_with_run(self, since: float, timeout: float = 60) -> None:
        """Wait until the daemon has recorded the run and is idle again (its heartbeat, written
        after it recorded a run and gave back what the run freed, says so after ``since``,
        a ``time.time()``): memory is sampled there, not while the run's last steps run."""
        deadline = time.monotonic() + timeout
        from service.intake.home import Home

        heartbeat = Home(self.home).heartbeat_path
        while time.monotonic() < deadline:
            try:
                beat = json.loads(heartbeat.read_text())
            except (OSError, ValueError):  # being replaced
                beat = {}
            if beat.get("state") not in (None, "running") and beat.get("heartbeat_unix", 0) >= since:
                return
            time.sleep(0.01)
        raise TimeoutError(f"the daemon was not idle again within {timeout:.0f}s")

    def stop(self) -> None:
        if getattr(self, "ledger", None) is not None:
            self.ledger.close()
            self.ledger = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        try:  # anything of its group still alive (a worker the stop left behind)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self._log.close()


# -- the soak ---------------------------------------------------------------------------------

def make_files(out: Path, count: int, rows: int = 1000, first_seed: int = 1000) -> list[Path]:
    """``count`` sample files, each from its own seed, so no two have the same content."""
    from service.sample import write_samples

    out.mkdir(parents=True, exist_ok=True)
    return [write_samples(out, files=1, rows=rows, seed=first_seed + i)[0] for i in range(count)]


def soak(work: Path, files: int, warmup: int, settings: dict[str, str] | None = None,
         on_sample=None, existing_cluster: bool = False) -> dict:
    """Run the soak; returns the start-up time and one record per file (warm-up included,
    marked)."""
    work.mkdir(parents=True, exist_ok=True)
    home = work / "soak-home"
    if home.exists():
        subprocess.run(["rm", "-rf", str(home)], check=True)
    data = make_files(work / "soak-data", warmup + files)
    settings = dict(settings or {})
    cluster = ExistingCluster(work / "soak-cluster") if existing_cluster else None
    if cluster is not None:
        settings["dask__address"] = cluster.start()
    daemon = SoakDaemon(home, settings)
    try:
        daemon.start()
    except BaseException:
        if cluster is not None:
            cluster.stop()
        raise
    records = []
    try:
        for i, path in enumerate(data):
            if stop_requested():
                break  # Ctrl+C: report the files measured so far
            dropped = daemon.drop(path)
            state = daemon.wait_settled(path.name)
            seconds = time.perf_counter() - dropped
            # The heartbeat that follows the run may come before this poll saw the file settle;
            # any idle one of the last half second does (a run lasts longer, and says "running").
            daemon.wait_done_with_run(since=time.time() - 0.5)
            (tree_rss, tree_cpu), (cluster_rss, cluster_cpu) = tree_usage(daemon.proc.pid), cluster_usage(cluster)
            record = {"index": i, "warmup": i < warmup, "name": path.name, "state": state,
                      "seconds": seconds, "rss": {**tree_rss, **cluster_rss}, "cpu": {**tree_cpu, **cluster_cpu},
                      "disk": disk_usage(home)}
            records.append(record)
            if on_sample is not None:
                on_sample(record)
    finally:
        daemon.stop()
        if cluster is not None:
            cluster.stop()
    keep = int(settings.get("registry__keep_versions", 0))
    return {"start_seconds": daemon.start_seconds, "records": records, "home": str(home),
            "existing_cluster": existing_cluster,
            "log": str(daemon.log_path), "registry": check_registry(home, keep) if keep else None}


_stop = False


def stop_requested() -> bool:
    return _stop


def _request_stop(signum, frame) -> None:
    global _stop
    if _stop:
        raise KeyboardInterrupt
    _stop = True
    print("stopping after this file (Ctrl+C again to abort)", flush=True)


def check_registry(home: Path, keep_versions: int) -> dict:
    """After the soak, with the daemon stopped: what retention left in the registry and
    whether it is all usable: versions on disk (at most keep_versions + 2: `current` and the
    rollback target may be older), each kept one loaded hash-checked, `retrain models`
    listing every version ever trained (removed ones marked), `retrain report` drawing
    them, and a rollback to the previous deployed version."""
    from flows.models.registry import ModelRegistry

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETRAIN_", "PREFECT_"))}
    env.update({"RETRAIN_HOME": str(home), "PYTHONPATH": str(ROOT)})

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([RETRAIN, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    registry = ModelRegistry(home / "registry")
    on_disk = [v.version for v in registry.versions()]
    loaded = []
    for version in on_disk:
        registry.load_model(version)  # raises when a file is missing or does not hash right
        loaded.append(version)
    listed = json.loads(cli("models", "--json").stdout)["versions"]
    report = cli("report", "--out", str(home / "report.png"))
    before = registry.current_version()
    target = registry.rollback_target()
    rollback = cli("models", "rollback")
    return {
        "keep_versions": keep_versions, "on_disk": len(on_disk), "loaded": len(loaded),
        "listed": len(listed), "listed_removed": sum(1 for v in listed if v.get("removed_at")),
        "trained": int(listed[-1]["version"][1:]) if listed else 0,
        "report_ok": report.returncode == 0 and (home / "report.png").stat().st_size > 0,
        "rollback_ok": rollback.returncode == 0 and registry.current_version() == target != before,
        "rollback": f"{before} -> {registry.current_version()}",
    }


def linear_slope(ys: list[float]) -> float:
    """Least-squares slope of ys against their index."""
    n = len(ys)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(ys)
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(ys))
    return num / sum((x - mean_x) ** 2 for x in range(n))


def cpu_per_run(records: list[dict], roles: tuple[str, ...]) -> dict[str, float] | None:
    """CPU seconds per run of each role between the first and the last of ``records``
    (None for records from before CPU was measured)."""
    if len(records) < 2 or "cpu" not in records[0]:
        return None
    runs = len(records) - 1
    return {role: (records[-1]["cpu"][role] - records[0]["cpu"][role]) / runs for role in roles}


def roles_of(result: dict) -> tuple[str, ...]:
    return ROLES + (CLUSTER_ROLES if result.get("existing_cluster") else ())


def summarize(result: dict) -> dict:
    measured = [r for r in result["records"] if not r["warmup"]]
    second_half = measured[len(measured) // 2:]
    roles = roles_of(result)
    k = min(FIRST_LAST, max(1, len(measured) // 3))
    first = statistics.median(r["seconds"] for r in measured[:k])
    last = statistics.median(r["seconds"] for r in measured[-k:])
    return {
        "files": len(measured), "warmup": len(result["records"]) - len(measured),
        "start_seconds": result["start_seconds"], "first_last_k": k,
        "roles": roles, "existing_cluster": bool(result.get("existing_cluster")),
        "slope_mib": {role: linear_slope([r["rss"][role] / MIB for r in second_half]) for role in roles},
        "slope_all_mib": {role: linear_slope([r["rss"][role] / MIB for r in measured]) for role in roles},
        "rss_first_mib": {role: measured[0]["rss"][role] / MIB for role in roles},
        "rss_half_mib": {role: second_half[0]["rss"][role] / MIB for role in roles},
        "rss_last_mib": {role: measured[-1]["rss"][role] / MIB for role in roles},
        "median_first": first, "median_last": last, "time_ratio": last / first,
        # CPU seconds per run of each role over the first and the last k files: which
        # process a change of the time per file comes from.
        "cpu_first": cpu_per_run(measured[:k + 1], roles), "cpu_last": cpu_per_run(measured[-k - 1:], roles),
        "disk_slope_kib": {f: linear_slope([r["disk"][f] / 1024 for r in measured]) for f in FOLDERS},
        "disk_last_mib": {f: measured[-1]["disk"][f] / MIB for f in FOLDERS},
        "states": {s: sum(r["state"] == s for r in result["records"])
                   for s in {r["state"] for r in result["records"]}},
    }


# -- the report -------------------------------------------------------------------------------

def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = result["records"]
    xs = [r["index"] for r in records]
    fig, (mem, secs, disk) = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    for role in roles_of(result):
        if role != "other":
            mem.plot(xs, [r["rss"][role] / MIB for r in records], label=role)
    mem.set_ylabel("resident memory (MiB)")
    mem.legend(loc="upper left", fontsize="small")
    secs.plot(xs, [r["seconds"] for r in records], ".", markersize=3)
    secs.set_ylabel("drop to archived (s)")
    for folder in FOLDERS:
        disk.plot(xs, [r["disk"][folder] / MIB for r in records], label=folder)
    disk.set_ylabel("disk (MiB)")
    disk.set_xlabel("file (one run each)")
    disk.legend(loc="upper left", fontsize="small")
    warmup = sum(r["warmup"] for r in records)
    for ax in (mem, secs, disk):
        ax.axvline(warmup - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
    where = "an existing cluster (scheduler, 2 workers)" if result.get("existing_cluster") else "its own local cluster"
    fig.suptitle(f"soak on {where}: {len(records) - warmup} files after {warmup} warm-up,\n"
                 "1,000 rows each, window 3 files")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def markdown(summary: dict, png: str, note: str, registry: dict | None = None) -> str:
    verdict = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    k = summary["first_last_k"]
    where = "an existing cluster" if summary["existing_cluster"] else "the daemon's own local cluster"
    lines = [
        f"## Soak on {where}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {summary['files']} files after "
        f"{summary['warmup']} warm-up", "",
        f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. {note}".strip(), "",
        f"Daemon start to watching: {summary['start_seconds']:.1f} s. File states: "
        + ", ".join(f"{s} {n}" for s, n in sorted(summary["states"].items())) + ".", "",
        "| role | RSS after warm-up (MiB) | at half-way | at the end | growth per run, second half "
        "(MiB, linear fit) | over all measured runs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for role in summary["roles"]:
        name = "daemon's process tree" if role == "tree" else role
        lines.append(f"| {name} | {summary['rss_first_mib'][role]:.0f} | {summary['rss_half_mib'][role]:.0f} "
                     f"| {summary['rss_last_mib'][role]:.0f} | {summary['slope_mib'][role]:+.4f} "
                     f"| {summary['slope_all_mib'][role]:+.4f} |")
    lines += ["", "| folder | size at the end (MiB) | growth per run (KiB, linear fit) |", "|---|---:|---:|"]
    for folder in FOLDERS:
        lines.append(f"| {folder}/ | {summary['disk_last_mib'][folder]:.1f} "
                     f"| {summary['disk_slope_kib'][folder]:+.1f} |")
    slope = summary["slope_mib"]
    if summary["existing_cluster"]:
        growth = [f"- {name}: {slope[role]:+.4f} MiB per run over the second half (target <= "
                  f"{TARGET_CLUSTER_SLOPE_MIB}): {verdict(slope[role] <= TARGET_CLUSTER_SLOPE_MIB)}."
                  for role, name in (("scheduler", "Scheduler"), ("cluster workers", "Workers together"),
                                     ("tree", "The daemon's process tree"))]
    else:
        growth = [f"- The daemon's whole process tree: {slope['tree']:+.4f} MiB per run over the second half "
                  f"(target <= {TARGET_SLOPE_MIB}): {verdict(slope['tree'] <= TARGET_SLOPE_MIB)}."]
    lines += [
        "",
        *growth,
        f"- Drop to archived, median of the first {k} files {summary['median_first']:.2f} s, of the last {k} "
        f"{summary['median_last']:.2f} s: x{summary['time_ratio']:.2f} (target <= {TARGET_TIME_RATIO}): "
        f"{verdict(summary['time_ratio'] <= TARGET_TIME_RATIO)}.",
    ]
    if summary.get("cpu_first") and summary.get("cpu_last"):
        lines.append(f"- CPU seconds per run, first {k} files against the last {k}: " + ", ".join(
            f"{'daemon tree' if role == 'tree' else role} {summary['cpu_first'][role]:.2f} -> "
            f"{summary['cpu_last'][role]:.2f}" for role in summary["roles"] if role != "other") + ".")
    if registry:
        r = registry
        lines.append(
            f"- Registry with `keep_versions = {r['keep_versions']}` after {r['trained']} trained versions: "
            f"{r['on_disk']} on disk (target <= {r['keep_versions'] + 2}), {r['loaded']} of them loaded "
            f"hash-checked; `retrain models` lists {r['listed']} ({r['listed_removed']} marked removed); "
            f"`retrain report` {'drew them' if r['report_ok'] else '**failed**'}; rollback "
            f"{r['rollback']} {'worked' if r['rollback_ok'] else '**failed**'}: "
            f"{verdict(r['on_disk'] <= r['keep_versions'] + 2 and r['loaded'] == r['on_disk'] and r['listed'] == r['trained'] and r['report_ok'] and r['rollback_ok'])}.")
    lines += ["", f"![soak]({png})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=None,
                        help="files measured after the warm-up (1,000; 500 with --existing-cluster)")
    parser.add_argument("--existing-cluster", action="store_true",
                        help="run on a scheduler and two workers started as separate processes")
    parser.add_argument("--warmup", type=int, default=20, help="files before the measured ones")
    parser.add_argument("--quick", action="store_true", help="60 files after 10 warm-up files")
    parser.add_argument("--note", default="", help="a line for the results (what this run measures)")
    parser.add_argument("--keep-versions", type=int, default=5,
                        help="[registry] keep_versions of the soak's daemon, checked at the end")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    args = parser.parse_args()
    if args.files is None:
        args.files = 500 if args.existing_cluster else 1000
    if args.quick:
        args.files, args.warmup = 60, 10
    name = "soak-quick" if args.quick else "soak"
    plot_name = f"{name}-cluster" if args.existing_cluster else name

    def progress(record: dict) -> None:
        print(f"{record['index']:4d} {record['state']:<11} {record['seconds']:6.2f}s "
              + " ".join(f"{r}={v / MIB:.0f}" for r, v in record["rss"].items()), flush=True)

    signal.signal(signal.SIGINT, _request_stop)
    result = soak(args.work, args.files, args.warmup, {"registry__keep_versions": str(args.keep_versions)},
                  on_sample=progress, existing_cluster=args.existing_cluster)
    (args.work / f"{plot_name}.json").write_text(json.dumps(result, indent=1))
    summary = summarize(result)
    png = ROOT / "benchmarks" / f"{plot_name}.png"
    plot(result, png)
    section = markdown(summary, png.name, args.note, result["registry"])
    results = ROOT / "benchmarks" / f"{name}-results.md"
    header = "# Soak results\n\nNewest first; `make soak` writes a section here (benchmarks/soak.py).\n\n"
    old = results.read_text().split("\n", 4)[-1] if results.exists() else ""
    results.write_text(header + section + "\n" + old)
    print(section)


if __name__ == "__main__":
    main()
