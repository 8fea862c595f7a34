"""What running every batch as a flow run of the home's Prefect deployment costs.

    make bench-deployment    # a few minutes; writes benchmarks/deployment-cost-results.md

Measurement 1 of run.py (drop-to-deployed of a 10,000-row file on a warm daemon), taken in
the same invocation on the same files with two daemons: this tree's, where every run is a
flow run of the deployment (created through the API, claimed, watched for a cancel, its
events sent), and an earlier revision's (``--before``, default the last one whose daemon
called the flow directly), checked out from git into a temporary folder. The two alternate,
round after round, so that a change in the machine's load falls on both. Target: the p50
with the deployment within 10% of the p50 without.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import ROOT, machine, measure_latency, sample

# The last revision whose daemon called the flow directly, without a deployment.
BEFORE = "9054ac8"
TARGET = 1.10


def checkout(revision: str, folder: Path) -> Path:
    """The source tree of ``revision``, exported from git (no worktree left behind)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def render(revision: str, before: list[dict], after: list[dict], elapsed: float, load: float) -> str:
    def p50(runs: list[dict]) -> float:
        return statistics.median(t for r in runs for t in r["totals"])

    def flow(runs: list[dict]) -> float:
        return statistics.median(r["flow_p50"] for r in runs)

    ratio = p50(after) / p50(before)
    verdict = "met" if ratio <= TARGET else f"missed by {(ratio / TARGET - 1):.0%}"
    drops = sum(r["drops"] for r in after)
    lines = [
        "# What the deployment costs: drop-to-deployed with and without it", "",
        f"Machine: {machine()}. Load average (1 min) {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end.", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `benchmarks/deployment_cost.py` in "
        f"{elapsed:.0f} s: {len(after)} rounds, each a warm daemon of each kind taking "
        f"{after[0]['drops']} 10,000-row files one at a time (the first of each daemon not counted).", "",
        "| daemon | drop-to-deployed p50 | slowest | flow to deployed p50 | drops |", "|---|---:|---:|---:|---:|",
        f"| flow called directly (revision {revision}) | {p50(before):.2f} s | "
        f"{sorted(t for r in before for t in r['totals'])[-1]:.2f} s | {flow(before):.2f} s | "
        f"{sum(r['drops'] for r in before)} |",
        f"| every run a flow run of the deployment (this tree) | {p50(after):.2f} s | "
        f"{sorted(t for r in after for t in r['totals'])[-1]:.2f} s | {flow(after):.2f} s | {drops} |",
        "",
        f"**Ratio {ratio:.2f}x; target <= {TARGET:.2f}x: {verdict}.**", "",
        "Per round (p50 without, with): " + "; ".join(
            f"{b['p50']:.2f} s, {a['p50']:.2f} s" for b, a in zip(before, after)) + ".", "",
        "What the deployment adds to a run: creating the flow run through the API and claiming it "
        "(Scheduled, Pending, Running, as a worker does), a thread asking for its state once a "
        "second, and after the run its decision's events; the flow, its tasks and the cluster "
        "are the same.", "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Drop-to-deployed with and without the deployment.")
    parser.add_argument("--before", default=BEFORE, help=f"the revision without it (default {BEFORE})")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--drops", type=int, default=8, help="counted drops per daemon and round")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "deployment-cost-results.md"))
    args = parser.parse_args()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="retrain-bench-deployment-"))
    try:
        old = checkout(args.before, work / "before")
        files = sample(work / "data", args.drops + 1, 10_000, seed=2)
        before, after = [], []
        for i in range(args.rounds):
            print(f"[bench-deployment] round {i + 1}: without the deployment ({args.before})", flush=True)
            before.append(measure_latency(work, files, code=old, home=f"before-{i}"))
            print(f"[bench-deployment] round {i + 1}: with it (this tree)", flush=True)
            after.append(measure_latency(work, files, home=f"after-{i}"))
        report = render(args.before, before, after, time.perf_counter() - started, load)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
