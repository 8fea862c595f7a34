"""The production loop through a warm daemon against plain scripts, in the same run, as ratios.

    make bench-production          # 1,000,000 rows in 10 files (several minutes)
    python benchmarks/production.py --quick

a. Scoring: 10 unlabelled files dropped at once into score/ of a warm daemon (one scoring
   run: partitions predicted on the workers, each file's predictions/<name> and the
   prediction log written), from the drop to the run's record, against
   benchmarks/plain_score.py (a fresh process: read, predict, write, with the same model
   file); target <= 1.0x.
b. Late labels: one file with a label for every scored row dropped into labels/ (joined with
   the prediction log, the production metric, the rows as a training file), against the
   plain script reading the labels and its own predictions and merging them; target <= 1.5x.

Writes benchmarks/production-results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
from run import Daemon, machine, sample

ROOT = Path(__file__).resolve().parent.parent
PLAIN = str(ROOT / "benchmarks" / "plain_score.py")
SETTINGS = {"schema__id": "customer_id", "window__last_files": "1", "evaluation__tolerance": "1.0"}
SIZES = {"full": {"files": 10, "rows": 100_000}, "quick": {"files": 10, "rows": 10_000}}
TARGETS = {"score": 1.0, "join": 1.5}


def unlabelled(work: Path, files: int, rows: int) -> tuple[list[Path], Path]:
    """``files`` CSV files without their target, and one file of every row's label."""
    out, labels = work / "score-source", []
    out.mkdir()
    for path in sample(work / "labelled", files, rows, seed=2):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame.drop(columns=["churned"]).to_csv(out / path.name, index=False)
        labels.append(frame[["customer_id", "churned"]])
    labels_path = work / "labels-december.csv"
    pd.concat(labels, ignore_index=True).to_csv(labels_path, index=False)
    return sorted(out.glob("*.csv")), labels_path


def plain(*args: str) -> dict:
    started, cpu = time.perf_counter(), _children_cpu()
    result = subprocess.run([sys.executable, PLAIN, *args], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["wall_seconds"] = time.perf_counter() - started
    report["cpu_seconds"] = _children_cpu() - cpu
    return report


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's children that have exited: the plain
    script's, not the daemon's (it is still running)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) so far of a process and its descendants (the daemon, its
    Dask workers, its Prefect API)."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measure(work: Path, files: int, rows: int) -> dict:
    scoring, labels = unlabelled(work, files, rows)
    training = sample(work / "train", 1, 20_000, seed=1)
    daemon = Daemon(work / "home", SETTINGS)
    try:
        daemon.drop(training)
        daemon.wait_for_runs([p.name for p in training])
        current = daemon.home / "registry" / "current"
        model = str(current.resolve() / "model.skops")

        load = {"score": os.getloadavg()[0]}
        cpu = tree_cpu(daemon.proc.pid)
        dropped = daemon.drop(scoring, "score")
        run = daemon.wait_for_runs([p.name for p in scoring])[-1]
        service_score, service_score_cpu = run["finished_at"] - dropped, tree_cpu(daemon.proc.pid) - cpu
        plain_out = work / "plain-predictions"
        plain_out.mkdir()
        baseline_score = plain("score", model, *map(str, scoring), "--out", str(plain_out))

        # The plain join first: the labels run queues its rows as a training file, and the
        # daemon's training run on them must not share the cores with the plain script.
        baseline_join = plain("join", str(labels), "--predictions", *map(str, sorted(plain_out.glob("*.csv"))))
        load["join"] = os.getloadavg()[0]
        cpu = tree_cpu(daemon.proc.pid)
        dropped = daemon.drop([labels], "labels")
        run = daemon.wait_for_runs([labels.name])[-1]
        service_join, service_join_cpu = run["finished_at"] - dropped, tree_cpu(daemon.proc.pid) - cpu
        details = json.loads(run["metrics"])
    finally:
        daemon.stop()
    production = next(m for m in details["production"] if m["version"] == "v0001")
    load["end"] = os.getloadavg()[0]
    return {
        "rows": files * rows, "files": files, "load": load,
        "score": {"service": service_score, "plain": baseline_score["wall_seconds"],
                  "service_cpu": service_score_cpu, "plain_cpu": baseline_score["cpu_seconds"]},
        "join": {"service": service_join, "plain": baseline_join["wall_seconds"],
                 "service_cpu": service_join_cpu, "plain_cpu": baseline_join["cpu_seconds"],
                 "production_roc_auc": production["value"], "plain_roc_auc": baseline_join["roc_auc"],
                 "joined": details["labels"]["joined"]},
    }


def render(result: dict, mode: str, elapsed: float) -> str:
    lines = [f"# The production loop: scoring and late labels ({mode})", "",
             f"Machine: {machine()}. One invocation of `benchmarks/production.py`, {elapsed:.0f} s; the "
             "service and the plain scripts ran one after the other on the same files (the plain join before "
             "the labels reach the daemon, which then trains on the labelled rows).", "",
             "| what | retrain (warm daemon) | plain script | ratio | target | |", "|---|---|---|---|---|---|"]
    for key, what in (("score", f"score {result['rows']:,} rows in {result['files']} files"),
                      ("join", f"join {result['rows']:,} late labels with the predictions")):
        service, baseline = result[key]["service"], result[key]["plain"]
        ratio = service / baseline
        verdict = "met" if ratio <= TARGETS[key] else f"missed by {ratio / TARGETS[key] - 1:.0%}"
        lines.append(f"| {what} | {service:.2f} s | {baseline:.2f} s | {ratio:.2f}x | <= {TARGETS[key]}x | {verdict} |")
    join, load = result["join"], result["load"]
    lines += ["", f"Load average (1 min) of the machine: {load['score']:.1f} when the scoring files were dropped, "
                  f"{load['join']:.1f} when the labels were, {load['end']:.1f} at the end, on {os.cpu_count()} cores. "
                  "Other processes share the cores: the service runs in three processes (the daemon and two "
                  "workers), the plain script in one, so the busier the machine, the larger the service's share "
                  "of it and the more its ratios flatter it. The CPU time each side used (user + system, "
                  "whatever the load): scoring, the service "
                  f"{result['score']['service_cpu']:.1f} s (the daemon, its workers and its Prefect API) against "
                  f"{result['score']['plain_cpu']:.1f} s; the labels, {join['service_cpu']:.1f} s against "
                  f"{join['plain_cpu']:.1f} s.",
              "", f"The production roc_auc the service recorded, {join['production_roc_auc']:.6f} on "
                  f"{join['joined']:,} labelled predictions, against the plain script's {join['plain_roc_auc']:.6f}.",
              "", "The service's time runs from the drop of the files to the run's record in the ledger (claims, "
                  "a flow run of the deployment, partitions on two Dask workers, predictions/ and the prediction "
                  "log written, files archived); the plain script's from its process's spawn to its exit (imports, "
                  "the model's load, read, predict, write). The labels run also writes the labels into the log, "
                  "computes every version's metric per period and writes the labelled rows as a training file; "
                  "the plain script only merges and computes one metric."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "production-results.md"))
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="retrain-production-") as work:
        result = measure(Path(work), **SIZES[mode])
    text = render(result, mode, time.perf_counter() - started)
    Path(args.out).write_text(text)
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(result, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
