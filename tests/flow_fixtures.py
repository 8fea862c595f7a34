"""Data, models and registries shared by the tests of the flow's steps."""

from __future__ import annotations

from pathlib import Path

from core.files import sha256_file
from core.records import FileRef, ResolvedSchema, RetrainRequest
from core.specs import ModelSpec, PipelineSpec
from flows.data.preprocess import plan_partitions, preprocess_partition
from flows.models.modelfile import load_model_file, load_skops_bytes
from flows.models.registry import ModelRegistry
from service.sample import sample_frame

NUMERIC = ["age", "income", "tenure_months", "usage_hours", "support_calls"]
CLASSIFY = ResolvedSchema(target="churned", task="classification", numeric=NUMERIC,
                          categorical=["plan", "region"], max_bad_row_fraction=0.05)
REGRESS = CLASSIFY.model_copy(update={"target": "monthly_spend", "task": "regression"})
FAST = ModelSpec(estimator="logistic_regression")
# A training record for a model file made elsewhere (path and hash filled in per test).
TRAINED = {"estimator": "sklearn.linear_model:LogisticRegression", "params": {}, "train_rows": 0,
           "fit_seconds": 0.0, "features": CLASSIFY.features, "categorical": CLASSIFY.categorical}


def partitions(folder: Path, schema: ResolvedSchema, rows: int = 4000, seed: int = 1,
               noise: float = 0.0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"data-{seed}-{schema.task}-{noise}.csv"
    sample_frame(rows, seed, noise, schema.task).to_csv(path, index=False)
    ref = FileRef(file_id=seed, name=path.name, path=str(path), sha256=sha256_file(path),
                  size=path.stat().st_size)
    summaries = [preprocess_partition(p, schema, folder / "cache", 0.2) for p in plan_partitions(ref, 200_000)]
    return [s.parquet_path for s in summaries]


def load(result):
    """A trained candidate, loaded as every step loads a model: hash-checked."""
    return load_model_file(result.model_path, result.model_sha256)


def load_unchecked(path: Path):
    return load_skops_bytes(Path(path).read_bytes(), None, str(path))


def register(registry: ModelRegistry, model_file: str, decision: str = "deployed", **metrics: float):
    return registry.register(model_file, {"metrics": metrics, "decision": decision})


def registry_of(folder: Path, model: Path, versions: int) -> ModelRegistry:
    """A registry holding ``versions`` versions of ``model``, none current."""
    registry = ModelRegistry(folder)
    for _ in range(versions):
        register(registry, str(model))
    return registry


def call_flow(request, scheduler_address: str, name: str = "direct"):
    """The flow called directly in this process, as a flow run of its own outside any
    deployment (no daemon, no ledger)."""
    from service.runner.flowruns import execute
    from service.runner.records import RunStart

    return execute(RunStart(None, name), request, scheduler_address)


def request_for(tmp_path: Path, paths: list[Path], window: list[Path] = (), **pipeline) -> RetrainRequest:
    """The flow's request for ``paths`` as new files (``window``: earlier files), on a
    registry and cache under ``tmp_path``; ``pipeline``: config sections."""
    refs = [FileRef(file_id=i + 1, name=p.name, path=str(p), sha256=sha256_file(p), size=p.stat().st_size)
            for i, p in enumerate([*window, *paths])]
    spec = PipelineSpec.model_validate({"schema": {"drop": ["customer_id"]}, **pipeline})
    return RetrainRequest(new_files=refs[len(window):], window_files=refs[: len(window)], pipeline=spec,
                          registry_dir=str(tmp_path / "registry"), cache_dir=str(tmp_path / "cache"))
