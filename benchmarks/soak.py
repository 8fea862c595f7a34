"""Soak: many small files through one warm daemon; does it hold steady?

    make soak          # 500 files after 20 warm-up files (about 40 minutes)
    make soak-quick    # 60 files after 10 warm-up files, for development

One real `retrain watch` (its own home under benchmarks/work/, the default local cluster,
the embedded Prefect API, `[window] last_files = 3`). Files of 1,000 rows, each from its
own seed (never a duplicate), are dropped one at a time; after each is archived the
benchmark records the drop-to-archived time, the resident memory of each role of the
daemon's process tree (the daemon, its Dask workers, the Prefect API) and the size of each
home folder. Writes benchmarks/soak.png and a section of benchmarks/soak-results.md
(soak-quick-results.md for --quick): the linear growth of memory per run after the
warm-up, the median time of the first files against the last, the disk growth per run.
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
FOLDERS = ("registry", "cache", "archive", "state")
# Targets of the soak (500 files after 20 warm-up files).
TARGET_SLOPE_MIB = 0.2
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


def tree_rss(root_pid: int) -> dict[str, int]:
    """Resident bytes per role of a process tree, and of the whole tree."""
    totals = dict.fromkeys(ROLES, 0)
    root = psutil.Process(root_pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            rss = proc.memory_info().rss
            role = role_of(proc, root_pid)
        except psutil.Error:
            continue
        totals[role] += rss
        totals["tree"] += rss
    return totals


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
         on_sample=None) -> dict:
    """Run the soak; returns the start-up time and one record per file (warm-up included,
    marked)."""
    work.mkdir(parents=True, exist_ok=True)
    home = work / "soak-home"
    if home.exists():
        subprocess.run(["rm", "-rf", str(home)], check=True)
    data = make_files(work / "soak-data", warmup + files)
    daemon = SoakDaemon(home, settings or {})
    daemon.start()
    records = []
    try:
        for i, path in enumerate(data):
            if stop_requested():
                break  # Ctrl+C: report the files measured so far
            dropped = daemon.drop(path)
            state = daemon.wait_settled(path.name)
            seconds = time.perf_counter() - dropped
            record = {"index": i, "warmup": i < warmup, "name": path.name, "state": state,
                      "seconds": seconds, "rss": tree_rss(daemon.proc.pid), "disk": disk_usage(home)}
            records.append(record)
            if on_sample is not None:
                on_sample(record)
    finally:
        daemon.stop()
    keep = int((settings or {}).get("registry__keep_versions", 0))
    return {"start_seconds": daemon.start_seconds, "records": records, "home": str(home),
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


def summarize(result: dict) -> dict:
    measured = [r for r in result["records"] if not r["warmup"]]
    k = min(FIRST_LAST, max(1, len(measured) // 3))
    first = statistics.median(r["seconds"] for r in measured[:k])
    last = statistics.median(r["seconds"] for r in measured[-k:])
    return {
        "files": len(measured), "warmup": len(result["records"]) - len(measured),
        "start_seconds": result["start_seconds"], "first_last_k": k,
        "slope_mib": {role: linear_slope([r["rss"][role] / MIB for r in measured]) for role in ROLES},
        "rss_first_mib": {role: measured[0]["rss"][role] / MIB for role in ROLES},
        "rss_last_mib": {role: measured[-1]["rss"][role] / MIB for role in ROLES},
        "median_first": first, "median_last": last, "time_ratio": last / first,
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
    for role in ROLES:
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
    fig.suptitle(f"soak: {len(records) - warmup} files after {warmup} warm-up, 1,000 rows each, "
                 "window 3 files")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def markdown(summary: dict, png: str, note: str, registry: dict | None = None) -> str:
    verdict = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    k = summary["first_last_k"]
    lines = [
        f"## Soak, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {summary['files']} files after "
        f"{summary['warmup']} warm-up", "",
        f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. {note}".strip(), "",
        f"Daemon start to watching: {summary['start_seconds']:.1f} s. File states: "
        + ", ".join(f"{s} {n}" for s, n in sorted(summary["states"].items())) + ".", "",
        "| role | RSS after warm-up (MiB) | RSS at the end (MiB) | growth per run (MiB, linear fit) |",
        "|---|---:|---:|---:|",
    ]
    for role in ROLES:
        lines.append(f"| {role} | {summary['rss_first_mib'][role]:.0f} | {summary['rss_last_mib'][role]:.0f} "
                     f"| {summary['slope_mib'][role]:+.3f} |")
    lines += ["", "| folder | size at the end (MiB) | growth per run (KiB, linear fit) |", "|---|---:|---:|"]
    for folder in FOLDERS:
        lines.append(f"| {folder}/ | {summary['disk_last_mib'][folder]:.1f} "
                     f"| {summary['disk_slope_kib'][folder]:+.1f} |")
    slope = summary["slope_mib"]["tree"]
    lines += [
        "",
        f"- Whole tree: {slope:+.3f} MiB per run (target <= {TARGET_SLOPE_MIB}): "
        f"{verdict(slope <= TARGET_SLOPE_MIB)}.",
        f"- Drop to archived, median of the first {k} files {summary['median_first']:.2f} s, of the last {k} "
        f"{summary['median_last']:.2f} s: x{summary['time_ratio']:.2f} (target <= {TARGET_TIME_RATIO}): "
        f"{verdict(summary['time_ratio'] <= TARGET_TIME_RATIO)}.",
    ]
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
    parser.add_argument("--files", type=int, default=500, help="files measured after the warm-up")
    parser.add_argument("--warmup", type=int, default=20, help="files before the measured ones")
    parser.add_argument("--quick", action="store_true", help="60 files after 10 warm-up files")
    parser.add_argument("--note", default="", help="a line for the results (what this run measures)")
    parser.add_argument("--keep-versions", type=int, default=5,
                        help="[registry] keep_versions of the soak's daemon, checked at the end")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    args = parser.parse_args()
    if args.quick:
        args.files, args.warmup = 60, 10
    name = "soak-quick" if args.quick else "soak"

    def progress(record: dict) -> None:
        print(f"{record['index']:4d} {record['state']:<11} {record['seconds']:6.2f}s "
              + " ".join(f"{r}={record['rss'][r] / MIB:.0f}" for r in ROLES), flush=True)

    signal.signal(signal.SIGINT, _request_stop)
    result = soak(args.work, args.files, args.warmup, {"registry__keep_versions": str(args.keep_versions)},
                  on_sample=progress)
    (args.work / f"{name}.json").write_text(json.dumps(result, indent=1))
    summary = summarize(result)
    png = ROOT / "benchmarks" / f"{name}.png"
    plot(result, png)
    section = markdown(summary, png.name, args.note, result["registry"])
    results = ROOT / "benchmarks" / f"{name}-results.md"
    header = "# Soak results\n\nNewest first; `make soak` writes a section here (benchmarks/soak.py).\n\n"
    old = results.read_text().split("\n", 4)[-1] if results.exists() else ""
    results.write_text(header + section + "\n" + old)
    print(section)


if __name__ == "__main__":
    main()
