"""Where the training step's memory goes, measured (not guessed): the service's own
training code, step by step, on the cached partitions of a home.

    python benchmarks/profile_memory.py HOME

Runs in its own process so nothing else is in its memory. For each step it records the
peak of the allocations made during the step (tracemalloc, which sees numpy's and
pandas' buffers; Arrow's own pool is read separately) and the resident size after it.
Prints one JSON document.
"""

from __future__ import annotations

import json
import resource
import sys
import tracemalloc
from pathlib import Path

import psutil


def main(home: Path) -> None:
    import pyarrow as pa

    from flows.preprocess import load_partitions
    from flows.records import ResolvedSchema
    from flows.specs import ModelSpec
    from flows.train import build_pipeline, model_threads

    latest = sorted((home / "registry").glob("v*/metadata.json"))[-1]
    metadata = json.loads(latest.read_text())["metadata"]
    schema = ResolvedSchema.model_validate(metadata["schema"])
    spec = ModelSpec.model_validate(metadata["config"]["model"])
    paths = sorted(str(p) for p in (home / "cache").rglob("*.parquet"))
    process = psutil.Process()
    steps, frame_bytes = [], 0

    def step(name: str, fn):
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        arrow_before = pa.total_allocated_bytes()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
        steps.append({"step": name, "peak_allocated": peak - before,
                      "arrow_allocated_after": pa.total_allocated_bytes() - arrow_before,
                      "rss_after": process.memory_info().rss})
        return result

    steps.append({"step": "imports", "peak_allocated": 0, "arrow_allocated_after": 0,
                  "rss_after": process.memory_info().rss})
    tracemalloc.start()
    frame = step("read the window (parquet -> pandas)",
                 lambda: load_partitions(paths, [*schema.features, schema.target], holdout=False))
    frame_bytes = int(frame.memory_usage(deep=True).sum())
    pipeline = build_pipeline(spec, schema)
    prepare, estimator = pipeline.steps[0][1], pipeline.steps[-1][1]
    X = step("prepare: impute, scale, one-hot (float64 matrix)",
             lambda: prepare.fit_transform(frame[schema.features], frame[schema.target]))
    with model_threads(spec.threads):
        step(f"fit {type(estimator).__name__}", lambda: estimator.fit(X, frame[schema.target]))
    tracemalloc.stop()
    print(json.dumps({"rows": len(frame), "frame_bytes": frame_bytes, "matrix_bytes": int(X.nbytes),
                      "matrix_shape": list(X.shape), "steps": steps,
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
