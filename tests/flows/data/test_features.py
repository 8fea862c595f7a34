"""One preparation of feature rows: the same odd rows give the same features and the
same predictions through training (preprocessing -> cache -> data layer), ``retrain
predict`` (CSV) and ``retrain serve`` (JSON and CSV bodies), and never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.files import sha256_file
from core.records import FileRef, ResolvedSchema
from core.specs import ModelSpec
from flows.data.features import parse_numbers, prepare_features
from flows.data.preprocess import plan_partitions, preprocess_partition
from flows.data.window import Window, load_partitions
from flows.models.modelfile import load_model_file
from flows.models.predict import predict_rows, read_rows
from flows.training.train import train_candidate
from service.sample import sample_frame

SCHEMA = ResolvedSchema(target="churned", task="classification",
                        numeric=["age", "income", "tenure_months", "usage_hours", "support_calls"],
                        categorical=["plan", "region"], max_bad_row_fraction=0.05)
LONG = "x" * 5000
# Every value a careless export produces, column by column.
ODD = {
    "age": ["inf", "-inf", "NaN", " 7 ", "1e3", "+5", "", "NA", "null", "42", "Infinity", "-0"],
    "income": ["52000", " 1e4", "-inf", "", "3.5", "+7", "None", "nan", "0", "1E2", "  ", "12"],
    "tenure_months": ["1"] * 12,
    "usage_hours": ["2.5", "inf", "", "N/A", "4", "5", "6", "7", "8", "9", "10", "11"],
    "support_calls": ["0", "1", "2", "3", "", "5", "6", "7", "8", "9", "10", "-inf"],
    "plan": ["basic", " pro ", "unseen-plan", "", LONG, "  basic", "null", "premium", "basic\t",
             "NULL", "pro", "N/A"],
    "region": ["south", "north ", " east", "", "moon", "south", "west", LONG, "NA", "north", "x", "south"],
}


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def training_features(tmp_path: Path, csv: Path) -> pd.DataFrame:
    """The odd rows as training sees them: preprocessed into the cache, read back."""
    ref = FileRef(file_id=1, name=csv.name, path=str(csv), sha256=sha256_file(csv), size=csv.stat().st_size)
    summary = preprocess_partition(plan_partitions(ref, 200_000)[0], SCHEMA, tmp_path / "cache", 0.2)
    assert summary.rejection is None and summary.rejected_rows == 0, summary
    return load_partitions([summary.parquet_path], SCHEMA.features)


def as_values(frame: pd.DataFrame) -> pd.DataFrame:
    """Values only (categoricals and object strings alike), NaN for missing."""
    return frame.astype(object).where(frame.notna(), np.nan).reset_index(drop=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    csv = write_csv(folder / "train.csv", sample_frame(3000, 1))
    ref = FileRef(file_id=1, name=csv.name, path=str(csv), sha256=sha256_file(csv), size=csv.stat().st_size)
    summary = preprocess_partition(plan_partitions(ref, 200_000)[0], SCHEMA, folder / "cache", 0.2)
    trained = train_candidate(Window([summary.parquet_path], SCHEMA), ModelSpec(), folder / "m.skops")
    return load_model_file(trained.model_path, trained.model_sha256)


def test_odd_rows_give_identical_features_and_predictions_everywhere(tmp_path: Path, model) -> None:
    from service.serving.app import parse_rows

    odd = pd.DataFrame({**ODD, "churned": ["0", "1"] * 6})
    csv = write_csv(tmp_path / "odd.csv", odd)
    from_training = as_values(training_features(tmp_path, csv))

    from_predict_csv = prepare_features(read_rows(csv), SCHEMA, "odd.csv")
    body_csv = csv.read_bytes()
    from_serve_csv = prepare_features(parse_rows(body_csv, "text/csv"), SCHEMA, "request")
    body_json = json.dumps(odd.drop(columns="churned").to_dict(orient="records")).encode()
    from_serve_json = prepare_features(parse_rows(body_json, "application/json"), SCHEMA, "request")

    for prepared in (from_predict_csv, from_serve_csv, from_serve_json):
        assert prepared.unparsed == {}
        pd.testing.assert_frame_equal(as_values(prepared.features), from_training, check_dtype=False)
    # inf and -inf are missing, as in training; numbers with signs, exponents, padding parse.
    assert from_training["age"].isna().tolist()[:3] == [True, True, True]
    assert from_training["age"].tolist()[3:6] == [7.0, 1000.0, 5.0]
    assert from_training["plan"].tolist()[1] == "pro" and pd.isna(from_training["plan"].tolist()[3])

    expected = model.predict(training_features(tmp_path, csv))
    for frame in (read_rows(csv), parse_rows(body_csv, "text/csv"), parse_rows(body_json, "application/json")):
        result, _ = predict_rows(model, frame, SCHEMA, "rows")
        assert result["prediction"].tolist() == expected.tolist()
        assert np.isfinite(result.filter(like="probability_").to_numpy()).all()


def test_values_that_are_not_numbers_are_missing_and_reported(tmp_path: Path, model) -> None:
    frame = pd.DataFrame({**{k: v[:2] for k, v in ODD.items()}})
    frame.loc[0, "age"] = "forty"
    result, prepared = predict_rows(model, frame, SCHEMA, "rows")
    assert len(result) == 2 and np.isnan(prepared.features["age"].iloc[0])
    assert prepared.unparsed["age"]["count"] == 1
    assert "column 'age' expects numbers but 1 value(s) are not (e.g. row 1: 'forty')" in prepared.unparsed_message("rows")


def test_missing_feature_column_is_one_line(tmp_path: Path) -> None:
    from core.errors import InvalidDataError

    with pytest.raises(InvalidDataError, match=r"rows: missing feature column\(s\) region; the model needs"):
        prepare_features(pd.DataFrame({k: v for k, v in ODD.items() if k != "region"}), SCHEMA, "rows")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(), st.integers(min_value=-2**63, max_value=2**63 - 1)), max_size=20))
def test_numbers_sent_as_numbers_give_what_their_text_gives(values: list) -> None:
    """JSON numbers skip the parsing of text; the features must be the same either way."""
    typed = pd.Series(values, dtype="float64" if any(isinstance(v, float) for v in values) else "int64")
    numbers, unparsed = parse_numbers(typed)
    from_text, text_unparsed = parse_numbers(typed.astype(object).map(repr))
    np.testing.assert_array_equal(numbers, from_text)
    assert not unparsed.any() and not text_unparsed.any()
