"""`retrain predict` as an operator runs it, on a home whose current model was deployed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from core.files import sha256_file
from core.records import FileRef, ResolvedSchema
from core.specs import ModelSpec
from flows.data.preprocess import plan_partitions, preprocess_partition
from flows.data.window import Window
from flows.models.registry import ModelRegistry
from flows.training.train import train_candidate
from service.sample import sample_frame

SCHEMA = ResolvedSchema(target="churned", task="classification",
                        numeric=["age", "income", "tenure_months", "usage_hours", "support_calls"],
                        categorical=["plan", "region"], max_bad_row_fraction=0.05)


def deployed_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "state").mkdir(parents=True)
    csv = tmp_path / "train.csv"
    sample_frame(2000, 3).to_csv(csv, index=False)
    ref = FileRef(file_id=1, name=csv.name, path=str(csv), sha256=sha256_file(csv), size=csv.stat().st_size)
    summary = preprocess_partition(plan_partitions(ref, 200_000)[0], SCHEMA, tmp_path / "cache", 0.2)
    trained = train_candidate(Window([summary.parquet_path], SCHEMA), ModelSpec(), tmp_path / "m.skops")
    registry = ModelRegistry(home / "registry")
    registry.register(trained.model_path, {"model_sha256": trained.model_sha256,
                                           "lineage": {"schema": SCHEMA.model_dump()}})
    registry.promote("v0001")
    return home


def test_predict_treats_inf_as_missing_and_exits_0(tmp_path: Path) -> None:
    home = deployed_home(tmp_path)
    rows = sample_frame(5, 9).drop(columns=["churned"]).astype(str)
    rows.loc[0, "income"], rows.loc[1, "age"], rows.loc[2, "usage_hours"] = "inf", "-inf", "forty"
    csv = tmp_path / "new.csv"
    rows.to_csv(csv, index=False)
    out = tmp_path / "predictions.csv"
    result = subprocess.run([sys.executable, "-m", "service.cli", "predict", str(csv), "--home", str(home),
                             "--output", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    # The value that is not a number is named, once, and predicted with as missing.
    assert "column 'usage_hours' expects numbers but 1 value(s) are not" in result.stderr
    predictions = pd.read_csv(out)
    assert len(predictions) == 5 and predictions["prediction"].notna().all()
