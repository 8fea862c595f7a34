"""Schema resolution, validation and partitioned preprocessing, on real files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core.errors import InvalidDataError
from core.files import sha256_file
from core.records import FileRef, ResolvedSchema
from core.specs import SchemaSpec
from flows.data.preprocess import (
    HOLDOUT_COLUMN,
    cache_key,
    is_holdout,
    plan_partitions,
    preprocess_partition,
    read_header,
    read_sample,
)
from flows.data.schema import resolve_schema, validate_frame
from flows.data.window import load_partitions
from service.sample import sample_frame

SCHEMA = ResolvedSchema(target="churned", task="classification",
                        numeric=["age", "income", "tenure_months", "usage_hours", "support_calls"],
                        categorical=["plan", "region"], max_bad_row_fraction=0.05)


def ref(path: Path, file_id: int = 1) -> FileRef:
    return FileRef(file_id=file_id, name=path.name, path=str(path), sha256=sha256_file(path),
                   size=path.stat().st_size)


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def rows_of(path: Path, rows_per_partition: int, cache: Path) -> tuple[pd.DataFrame, int]:
    plans = plan_partitions(ref(path), rows_per_partition)
    summaries = [preprocess_partition(p, SCHEMA, cache, 0.2) for p in plans]
    assert all(s.rejection is None for s in summaries), summaries
    return load_partitions([s.parquet_path for s in summaries]), len(plans)


def test_resolve_infers_types_and_leaves_identifiers_out(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", sample_frame(500, 1).to_csv(index=False))
    schema = resolve_schema(SchemaSpec(), read_sample(path), "a.csv")
    assert schema.categorical == ["plan", "region"]
    assert schema.numeric == ["age", "income", "tenure_months", "usage_hours", "support_calls"]
    assert schema.ignored == ["customer_id"]
    explicit = resolve_schema(SchemaSpec(features=["age", "plan"], categorical=["plan"]), read_sample(path), "a.csv")
    assert explicit.numeric == ["age"] and explicit.categorical == ["plan"] and explicit.ignored == []


def test_missing_target_names_file_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "no target.csv", sample_frame(20, 1).drop(columns="churned").to_csv(index=False))
    with pytest.raises(InvalidDataError, match=r"no target\.csv: missing target column 'churned'"):
        resolve_schema(SchemaSpec(), read_sample(path), path.name)


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"age,plan,churned\n", "has a header but no rows"),
    (b"age,plan,churned\n31,caf\xe9,1\n", "not UTF-8 text (byte 0xe9 at offset 23)"),
    (b"age,plan\x00\x01\x02,churned\n", "binary content"),
    (b"a,a,churned\n1,2,3\n", "duplicated column name"),
])
def test_unreadable_files_get_one_line_reasons(tmp_path: Path, content: bytes, message: str) -> None:
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(InvalidDataError) as info:
        read_sample(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("bad.csv: ")


def test_wrong_type_column_rejected_with_examples(tmp_path: Path) -> None:
    frame = sample_frame(100, 2).astype(object)
    frame["age"] = "old"
    path = write(tmp_path / "w.csv", frame.to_csv(index=False))
    summary = preprocess_partition(plan_partitions(ref(path), 200_000)[0], SCHEMA, tmp_path / "c", 0.2)
    assert summary.parquet_path is None
    reason = summary.rejection.reason
    assert "column 'age' expects numbers" in reason and "line 2: 'old'" in reason
    assert summary.rejection.details["columns"]["age"]["unparseable_values"] == 100


def test_few_bad_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    frame = sample_frame(1000, 3).astype(object)
    frame.loc[:9, "income"] = "???"
    text = frame.to_csv(index=False) + "1,2,3\n"  # a ragged row
    path = write(tmp_path / "few.csv", text)
    summary = preprocess_partition(plan_partitions(ref(path), 200_000)[0], SCHEMA, tmp_path / "c", 0.2)
    assert summary.rejection is None
    assert summary.rows == 990 and summary.rejected_rows == 11


def test_validate_frame_types_and_cleaning() -> None:
    raw = pd.DataFrame({"age": ["31", " 40 ", None], "income": ["1.5", "2", "3"], "tenure_months": ["1"] * 3,
                        "usage_hours": ["1"] * 3, "support_calls": ["0"] * 3, "plan": [" pro ", "", None],
                        "region": ["n", "s", "e"], "churned": ["1", "0", None]})
    clean, dropped = validate_frame(raw, SCHEMA.model_copy(update={"max_bad_row_fraction": 0.5}), "x.csv")
    assert dropped == 1 and len(clean) == 2
    assert clean["age"].dtype == "float64" and clean["age"].tolist() == [31.0, 40.0]
    assert clean["plan"].iloc[0] == "pro" and pd.isna(clean["plan"].iloc[1])


@pytest.mark.parametrize("newline, trailing", [("\n", True), ("\r\n", True), ("\n", False)])
def test_partitions_read_every_row_exactly_once(tmp_path: Path, newline: str, trailing: bool) -> None:
    text = sample_frame(5003, 4).to_csv(index=False, lineterminator=newline)
    if not trailing:
        text = text.rstrip("\r\n")
    path = write(tmp_path / "big é.csv", "\ufeff" + text)  # with a BOM, too
    split, parts = rows_of(path, 1000, tmp_path / "c1")
    whole, one = rows_of(path, 100_000, tmp_path / "c2")
    assert parts >= 4 and one == 1
    assert len(whole) == 5003
    pd.testing.assert_frame_equal(split, whole)


def test_cache_hits_and_invalidation(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", sample_frame(500, 5).to_csv(index=False))
    plan = plan_partitions(ref(path), 200_000)[0]
    first = preprocess_partition(plan, SCHEMA, tmp_path / "c", 0.2)
    again = preprocess_partition(plan, SCHEMA, tmp_path / "c", 0.2)
    assert not first.cached and again.cached and again.parquet_path == first.parquet_path
    assert (again.rows, again.holdout_rows) == (first.rows, first.holdout_rows)
    other = SCHEMA.model_copy(update={"categorical": ["plan"], "numeric": SCHEMA.numeric + []})
    assert cache_key(plan, other, 0.2) != cache_key(plan, SCHEMA, 0.2)
    assert cache_key(plan, SCHEMA, 0.3) != cache_key(plan, SCHEMA, 0.2)


def test_holdout_is_a_stable_function_of_the_row() -> None:
    frame = sample_frame(20_000, 6).drop(columns="customer_id")
    columns = list(frame.columns)
    first = is_holdout(frame, columns, 0.2)
    shuffled = frame.sample(frac=1.0, random_state=1)
    assert (is_holdout(shuffled, columns, 0.2) == first.loc[shuffled.index]).all()
    assert 0.18 < first.mean() < 0.22


def test_read_header_strips_bom_and_spaces(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", "\ufeff a , b ,c\n1,2,3\n")
    assert read_header(path) == ["a", "b", "c"]
    assert HOLDOUT_COLUMN == "__holdout"


def test_load_partitions_one_side_and_first_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "many.csv", sample_frame(5000, 7).to_csv(index=False))
    plans = plan_partitions(ref(path), 1000)
    paths = [preprocess_partition(p, SCHEMA, tmp_path / "c", 0.2).parquet_path for p in plans]
    everything = load_partitions(paths)
    holdout = load_partitions(paths, ["age", "plan", "churned"], holdout=True)
    expected = everything[everything[HOLDOUT_COLUMN]][["age", "plan", "churned"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(holdout, expected)
    first = load_partitions(paths, ["age", "plan", "churned"], holdout=True, limit=150)
    pd.testing.assert_frame_equal(first, expected.head(150))
    training = load_partitions(paths, ["age"], holdout=False)
    assert len(training) + len(holdout) == len(everything) == 5000
