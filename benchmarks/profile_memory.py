"""Where the training step's memory goes, measured (not guessed): the service's own
training code, step by step, on cached partitions.

    python benchmarks/profile_memory.py HOME            # the cached partitions of a home
    python benchmarks/profile_memory.py --rows 1000000  # sample data, preprocessed first

Each measurement runs in a fresh process so nothing else is in its memory, with the
environment a Dask worker of the service is started with:

- ``steps``: the steps of ``flows.training.train`` one by one (read, prepare, fit), with the peak
  of the allocations made during each (tracemalloc sees numpy's and pandas' buffers) and
  the resident size after it;
- ``whole``: ``train_candidate`` as the flow calls it, its peak resident size (sampled
  every 10 ms) minus the resident size at idle (a warm process: imports done and one
  small window trained, as a worker after its first run): the training step's growth,
  against the in-memory size of the training frame.

Prints one JSON document.
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
import tracemalloc
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def window_of(home: Path):
    from core.records import ResolvedSchema
    from flows.data.window import Window

    latest = sorted((home / "registry").glob("v*/metadata.json"))
    if latest:
        schema = ResolvedSchema.model_validate(json.loads(latest[-1].read_text())["lineage"]["schema"])
    else:
        schema = ResolvedSchema.model_validate(json.loads((home / "schema.json").read_text()))
    return Window(sorted(str(p) for p in (home / "cache").rglob("*.parquet")), schema)


def steps(home: Path) -> dict:
    from core.specs import ModelSpec
    from flows.data.window import model_threads
    from flows.training.train import build_pipeline, prepare_rows

    window, spec = window_of(home), ModelSpec()
    process, out = psutil.Process(), []

    def step(name: str, fn):
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
        out.append({"step": name, "peak_allocated": peak - before, "rss_after": process.memory_info().rss})
        return result

    out.append({"step": "imports", "peak_allocated": 0, "rss_after": process.memory_info().rss})
    tracemalloc.start()
    frame = step("read the window (parquet -> pandas)", window.training_rows)
    frame_bytes = int(frame.memory_usage(deep=True).sum())
    pipeline = build_pipeline(spec, window.schema)
    prepare, estimator = pipeline.steps[0][1], pipeline.steps[-1][1]
    rows = step(f"prepare: {type(prepare).__name__} (float32 matrix, early-stopping rows last)",
                lambda: prepare_rows(pipeline, frame, window.schema, spec.threads))
    del frame
    with model_threads(spec.threads):
        step(f"fit {type(estimator).__name__}", lambda: rows.fit(estimator))
    tracemalloc.stop()
    return {"rows": len(rows.y), "frame_bytes": frame_bytes, "matrix_bytes": int(rows.matrix.nbytes),
            "matrix_dtype": str(rows.matrix.dtype), "matrix_shape": list(rows.matrix.shape), "steps": out}


def whole(home: Path) -> dict:
    """train_candidate's growth over idle, sampled from outside the allocations' view."""
    from core.specs import ModelSpec
    from flows.data.window import load_partitions
    from flows.training.train import build_pipeline, train_candidate

    window = window_of(home)
    frame_bytes = int(window.training_rows().memory_usage(deep=True).sum())  # measured, then freed
    # Idle is a warm process, as a worker is after its first run: 2,000 rows read and fitted
    # first, so that lazy imports, Arrow's memory pool and OpenMP's threads are not counted.
    small = load_partitions(window.parquet_paths[:1], window.columns, holdout=False, limit=2000)
    build_pipeline(ModelSpec(params={"max_iter": 5}), window.schema).fit(small[window.schema.features],
                                                                      small[window.schema.target])
    del small
    process = psutil.Process()
    time.sleep(0.5)
    idle = process.memory_info().rss
    peak, done = [idle], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as folder:
        trained = train_candidate(window, ModelSpec(), Path(folder) / "m.skops")
    done.set()
    sampler.join()
    return {"rows": trained.train_rows, "frame_bytes": frame_bytes, "idle_rss": idle, "peak_rss": peak[0],
            "growth": peak[0] - idle, "growth_x_frame": round((peak[0] - idle) / frame_bytes, 2),
            "estimator": trained.estimator}


def sample_home(rows: int, folder: Path) -> Path:
    """Sample data preprocessed into ``folder/cache`` (a home without a registry)."""
    from core.files import sha256_file
    from core.records import FileRef, ResolvedSchema
    from flows.data.preprocess import plan_partitions, preprocess_partition
    from service.sample import sample_frame

    schema = ResolvedSchema(target="churned", task="classification",
                            numeric=["age", "income", "tenure_months", "usage_hours", "support_calls"],
                            categorical=["plan", "region"], max_bad_row_fraction=0.05)
    (folder / "schema.json").write_text(schema.model_dump_json())
    per_file = 200_000
    for i in range(max(1, rows // per_file)):
        csv = folder / f"f{i}.csv"
        sample_frame(per_file, i).to_csv(csv, index=False)
        ref = FileRef(file_id=i, name=csv.name, path=str(csv), sha256=sha256_file(csv), size=csv.stat().st_size)
        for plan in plan_partitions(ref, 200_000):
            preprocess_partition(plan, schema, folder / "cache", 0.2)
        csv.unlink()
    return folder


def worker_environment() -> dict[str, str]:
    """The environment a Dask nanny gives the worker processes it starts (Dask's
    ``distributed.nanny.pre-spawn-environ``: the C library's malloc trims freed memory back
    to the system; one thread for numpy's libraries), so that the training step is measured
    as it runs on a worker of the service's cluster."""
    import dask
    import distributed  # noqa: F401  (loads distributed's defaults into dask.config)

    return {**os.environ, **{k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()}}


def run(part: str, home: Path) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r});"
            f"import profile_memory as p; from pathlib import Path; print(json.dumps(p.{part}(Path({str(home)!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=worker_environment())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", nargs="?", help="a home whose cache holds the window")
    parser.add_argument("--rows", type=int, default=1_000_000, help="sample rows when no home is given")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        home = Path(args.home) if args.home else sample_home(args.rows, Path(folder))
        print(json.dumps({"steps": run("steps", home), "whole": run("whole", home)}))


if __name__ == "__main__":
    main()
