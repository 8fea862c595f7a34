"""Training beyond one worker, and the model search, measured in one run.

    python benchmarks/beyond_one_worker.py [--rows 3000000] [--memory-limit 700MiB] [--search-rows 400000]

1. **A window larger than one task can train.** Sample data preprocessed by the flow on
   a LocalCluster of two single-threaded workers, each limited to ``--memory-limit``
   (Dask's nanny kills a worker that passes 95% of it; pausing and spilling are off, so
   the limit is a hard one). The flow trains with ``estimator = "xgboost"`` across both
   workers, evaluates and deploys; each worker's resident size is sampled every 50 ms.
   Then the single-task path (the default estimator, in one process, as a scikit-learn
   task would run it on one worker) trains on the same window, its peak sampled the same
   way, against the same limit.
2. **The model search.** The task's four default candidates (``DEFAULT_CANDIDATES``),
   one thread each (``model.threads = 1``), trained by the flow on two workers at once,
   against the same four trained one after another in one process: the train stage's
   wall time against the sum.

Prints one JSON document; ``--out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class Peaks:
    """Peak resident size of each of some processes, sampled every 50 ms."""

    def __init__(self, pids: dict[str, int]):
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = {name: 0 for name in pids}
        self.idle = {name: p.memory_info().rss for name, p in self.procs.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, proc in self.procs.items():
                try:
                    self.peak[name] = max(self.peak[name], proc.memory_info().rss)
                except psutil.Error:
                    self.peak[name] = -1  # gone: killed over its limit
            time.sleep(0.05)

    def __enter__(self) -> "Peaks":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def request(files: list[Path], home: Path, model: dict):
    from core.files import sha256_file
    from core.records import FileRef
    from core.specs import PipelineSpec
    from flows.retrain import RetrainRequest

    refs = [FileRef(file_id=i + 1, name=p.name, path=str(p), sha256=sha256_file(p), size=p.stat().st_size)
            for i, p in enumerate(files)]
    spec = PipelineSpec.model_validate({"schema": {"drop": ["customer_id"]}, "model": model,
                                        "preprocess": {"rows_per_partition": 250_000}})
    return RetrainRequest(new_files=refs, pipeline=spec, registry_dir=str(home / "registry"),
                          cache_dir=str(home / "cache"))


def cluster(memory_limit: str):
    import dask
    from distributed import Client, LocalCluster

    # A hard limit: no pausing (a paused worker would never start its part of training)
    # and no spilling; the nanny still kills a worker at 95% of its limit.
    dask.config.set({"distributed.worker.memory.pause": False, "distributed.worker.memory.spill": False,
                     "distributed.worker.memory.target": False})
    local = LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=memory_limit, processes=True,
                         dashboard_address=None, silence_logs=40)
    with Client(local) as client:
        client.run(_warm_up)  # as the service's workers are: idle is measured after the imports
        pids = client.run(os.getpid)
    return local, {f"worker {i + 1}": pid for i, pid in enumerate(pids.values())}


def _warm_up() -> None:
    import xgboost  # noqa: F401

    import flows.retrain  # noqa: F401


def single_task_peak(home: Path, spec: dict) -> dict:
    """The in-process path on the same window, in a fresh process, its RSS sampled."""
    code = ("import json, sys; sys.path.insert(0, %r); from pathlib import Path;"
            "from flows.data.window import Window; from core.records import ResolvedSchema; from core.specs import ModelSpec;"
            "from flows.training.train import train_candidate; import time;"
            "meta = json.loads(sorted(Path(%r).glob('registry/v*/metadata.json'))[0].read_text());"
            "schema = ResolvedSchema.model_validate(meta['metadata']['schema']);"
            "paths = sorted(str(p) for p in Path(%r).rglob('*.parquet'));"
            "print('ready', flush=True); time.sleep(1);"
            "r = train_candidate(Window(paths, schema), ModelSpec.model_validate(%r), Path(%r));"
            "print(json.dumps({'rows': r.train_rows}))") % (str(ROOT), str(home), str(home / "cache"), spec,
                                                             str(home / "single.skops"))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    with Peaks({"single task": proc.pid}) as peaks:
        out, _ = proc.communicate()
    return {"idle": peaks.idle["single task"], "peak": peaks.peak["single task"], "returncode": proc.returncode}


def window_bytes(home: Path) -> dict:
    """The window in memory as the single-task path reads it: every row, and its training rows."""
    from flows.data.window import load_partitions

    paths = sorted(str(p) for p in (home / "cache").rglob("*.parquet"))
    frame = load_partitions(paths)
    total = int(frame.memory_usage(deep=True).sum())
    training = int(frame[~frame["__holdout"]].reset_index(drop=True).memory_usage(deep=True).sum())
    return {"rows": len(frame), "window_bytes": total, "training_frame_bytes": training}


def beyond_one_worker(work: Path, rows: int, memory_limit: str) -> dict:
    from dask.utils import parse_bytes
    from direct import call_flow

    from service.sample import write_samples

    files = write_samples(work / "data", files=max(1, rows // 500_000), rows=min(rows, 500_000), seed=3)
    home = work / "home"
    local, pids = cluster(memory_limit)
    try:
        with Peaks(pids) as peaks:
            result = call_flow(request(files, home, {"estimator": "xgboost", "threads": 1}), local.scheduler_address)
    finally:
        local.close()
    outcome = result.outcome
    single = single_task_peak(home, {})
    return {"memory_limit": parse_bytes(memory_limit), **window_bytes(home), "decision": outcome.decision,
            "reason": outcome.reason, "error": result.error, "stage_seconds": outcome.stage_seconds,
            "metrics": outcome.candidate_metrics, "worker_idle": peaks.idle, "worker_peak": peaks.peak,
            "single_task": single}


def search(work: Path, rows: int) -> dict:
    from direct import call_flow

    from core.specs import DEFAULT_CANDIDATES, ModelSpec
    from flows.data.window import Window
    from flows.training.search import choose, cross_validate
    from flows.training.train import train_candidate
    from service.sample import write_samples

    files = write_samples(work / "search-data", files=2, rows=rows // 2, seed=4)
    home = work / "search"
    model = {"candidates": DEFAULT_CANDIDATES["classification"], "threads": 1}
    local, _ = cluster("4GiB")
    try:
        # The first search knows no candidate's time and starts them in config order; the
        # next one (as a daemon retrains) starts the longest first, by the first one's times.
        first = call_flow(request(files, home, model), local.scheduler_address)
        result = call_flow(request(files, home, model), local.scheduler_address)
    finally:
        local.close()
    meta = json.loads(sorted((home / "registry").glob("v*/metadata.json"))[-1].read_text())
    from core.records import ResolvedSchema

    window = Window(sorted(str(p) for p in (home / "cache").rglob("*.parquet")),
                    ResolvedSchema.model_validate(meta["lineage"]["schema"]))
    started, each = time.perf_counter(), []
    specs = ModelSpec.model_validate(model).candidate_specs()
    scores = []
    for spec in specs:
        t = time.perf_counter()
        scores.append(cross_validate(window, spec))
        each.append(round(time.perf_counter() - t, 2))
    best, _ = choose(specs, scores, meta["lineage"]["metric"])
    train_candidate(window, specs[best], home / "sequential.skops")
    sequential = time.perf_counter() - started
    parallel = result.outcome.stage_seconds["train"]
    return {"rows": rows, "parallel_train_stage_seconds": parallel,
            "first_search_train_stage_seconds": first.outcome.stage_seconds["train"],
            "sequential_seconds": round(sequential, 2),
            "sequential_each": each, "ratio": round(parallel / sequential, 3),
            "candidates": meta["lineage"]["training"]["candidates"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--memory-limit", default="700MiB")
    parser.add_argument("--search-rows", type=int, default=400_000)
    parser.add_argument("--parts", default="search,memory", help="which measurements: search, memory")
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    from service.runtime.api import prefect_api

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as folder, prefect_api():
        report = {"machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}}
        if "search" in args.parts:
            report["search"] = search(Path(folder), args.search_rows)
        if "memory" in args.parts:
            report["beyond_one_worker"] = beyond_one_worker(Path(folder), args.rows, args.memory_limit)
        report["machine"]["load_average_at_end"] = os.getloadavg()
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
