"""Scoring unlabelled rows partition by partition: ids, the prediction log, predictions/<name>."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from flow_fixtures import CLASSIFY

from core.files import sha256_file
from core.records import FileRef
from flows.data.features import prepare_features
from flows.data.preprocess import plan_partitions, read_partition
from flows.models.modelfile import ModelFile
from flows.models.predict import predict_frame, read_rows
from flows.production import predlog
from flows.production.scoring import (
    output_columns,
    row_offsets,
    score_partition,
    write_predictions,
)
from service.sample import SAMPLE_ID_COLUMN, sample_frame


def _file(path: Path) -> FileRef:
    return FileRef(file_id=7, name=path.name, path=str(path), sha256=sha256_file(path), size=path.stat().st_size)


def _unlabelled(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / "customers.csv"
    sample_frame(rows, seed=5).drop(columns=["churned"]).to_csv(path, index=False)
    return path


def test_row_offsets_number_every_row_once_across_partitions(tmp_path: Path) -> None:
    path = _unlabelled(tmp_path, 5000)
    plans = plan_partitions(_file(path), 1000)
    assert len(plans) > 3
    numbered = []
    for plan, first in zip(plans, row_offsets(plans)):
        frame, _ = read_partition(plan)
        numbered += list(zip(range(first, first + len(frame)), frame[SAMPLE_ID_COLUMN]))
    expected = list(enumerate(pd.read_csv(path)[SAMPLE_ID_COLUMN]))
    assert numbered == expected


@pytest.mark.parametrize("id_column", [SAMPLE_ID_COLUMN, None])
def test_partitions_are_logged_with_ids_and_predict_what_predict_does(tmp_path: Path, trained, id_column) -> None:
    model_path, _ = trained
    model = ModelFile(str(model_path), sha256_file(model_path), "v0001")
    path = _unlabelled(tmp_path, 3000)
    schema = CLASSIFY.model_copy(update={"id": id_column})
    plans = plan_partitions(_file(path), 1000)
    log_dir = tmp_path / "log"
    summaries = [score_partition(plan, first, schema, model, [], id_column, str(log_dir), "v0001", 1.7e9)
                 for plan, first in zip(plans, row_offsets(plans))]
    assert all(s["rejection"] is None for s in summaries) and sum(s["rows"] for s in summaries) == 3000
    logged = predlog.read_predictions(log_dir)
    raw = read_rows(path)
    expected = predict_frame(model.load(), prepare_features(raw, CLASSIFY, "x").features, "classification")
    parts = pd.concat([predlog.read_part(s["path"]) for s in summaries], ignore_index=True)
    assert list(parts["prediction"]) == list(expected["prediction"].astype(str))
    pd.testing.assert_series_equal(parts["probability_1"], expected["probability_1"], check_names=False)
    ids = list(raw[SAMPLE_ID_COLUMN]) if id_column else [f"{_file(path).sha256[:16]}-{n:06d}" for n in range(1, 3001)]
    assert list(parts["id"]) == ids and set(logged["version"]) == {"v0001"}
    assert set(CLASSIFY.features) <= set(logged.columns)

    out = tmp_path / "predictions" / "customers.csv"
    columns = output_columns("classification", ["0", "1"])
    assert write_predictions([s["path"] for s in summaries], str(out), "csv", columns) == 3000
    written = pd.read_csv(out, dtype={"id": str})
    assert list(written.columns) == columns and list(written["id"]) == ids


def test_a_missing_id_or_feature_column_rejects_the_file_with_one_line(tmp_path: Path, trained) -> None:
    model_path, _ = trained
    model = ModelFile(str(model_path), sha256_file(model_path), "v0001")
    path = tmp_path / "no-ids.csv"
    sample_frame(100, seed=5).drop(columns=["churned", SAMPLE_ID_COLUMN]).to_csv(path, index=False)
    plan = plan_partitions(_file(path), 1000)[0]
    summary = score_partition(plan, 0, CLASSIFY, model, [], SAMPLE_ID_COLUMN, str(tmp_path / "log"), "v0001", 1.7e9)
    assert summary["path"] is None and "no id column 'customer_id'" in summary["rejection"]["reason"]
    assert "\n" not in summary["rejection"]["reason"]
    sample_frame(100, seed=5).drop(columns=["churned", "income"]).to_csv(path, index=False)
    summary = score_partition(plan_partitions(_file(path), 1000)[0], 0, CLASSIFY, model, [], SAMPLE_ID_COLUMN,
                              str(tmp_path / "log"), "v0001", 1.7e9)
    assert "missing feature column(s) income" in summary["rejection"]["reason"]


def test_the_log_keeps_keep_days_of_whole_days(tmp_path: Path) -> None:
    day = 86400.0
    now = 1.8e9
    for age in (0, 10, 100):
        frame = pd.DataFrame({"id": ["a"], "version": ["v0001"], "scored_at": [now - age * day],
                              "source": ["x.csv"], "prediction": ["1"]})
        predlog.write_part(tmp_path, frame, f"part-{age}")
    assert len(predlog.prune(tmp_path, keep_days=30, now=now)) == 1
    assert len(predlog.read_predictions(tmp_path)) == 2
    assert predlog.prune(tmp_path, keep_days=0, now=now) == []
