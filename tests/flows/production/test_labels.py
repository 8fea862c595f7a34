"""Late labels joined with the prediction log: the production metric, counts of every label
that could not be used, and the joined rows as training data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from flow_fixtures import CLASSIFY, REGRESS
from sklearn.metrics import accuracy_score, mean_absolute_error, roc_auc_score

from core.errors import InvalidDataError
from core.files import sha256_file
from core.records import FileRef
from flows.production import predlog
from flows.production.labels import join_labels, read_label_file

DAY = 86400.0
SCHEMA = CLASSIFY.model_copy(update={"id": "customer_id"})


def _log(log_dir: Path, version: str, ids: list[str], proba: list[float], scored_at: float, source: str) -> None:
    frame = pd.DataFrame({"id": ids, "version": version, "scored_at": scored_at, "source": source,
                          "prediction": ["1" if p >= 0.5 else "0" for p in proba],
                          "probability_0": [1 - p for p in proba], "probability_1": proba})
    for column in SCHEMA.numeric:
        frame[column] = 1.0
    for column in SCHEMA.categorical:
        frame[column] = "x"
    predlog.write_part(log_dir, frame, f"{version}-{source}")


def _labels(folder: Path, name: str, rows: list[tuple[str, str]], id_column: str = "customer_id") -> FileRef:
    path = folder / name
    pd.DataFrame(rows, columns=[id_column, "churned"]).to_csv(path, index=False)
    return FileRef(file_id=abs(hash(name)) % 1000, name=name, path=str(path), sha256=sha256_file(path),
                   size=path.stat().st_size)


def test_the_production_metric_is_the_metric_of_what_each_version_served(tmp_path: Path) -> None:
    log = tmp_path / "log"
    ids = [f"c{i}" for i in range(400)]
    truth = ["1" if i % 3 == 0 else "0" for i in range(400)]
    proba = [((i * 37) % 100) / 100 for i in range(400)]
    _log(log, "v0001", ids[:200], proba[:200], 1.7e9, "monday.csv")
    _log(log, "v0002", ids[200:], proba[200:], 1.7e9 + DAY, "tuesday.csv")
    labels = _labels(tmp_path, "late.csv", list(zip(ids, truth)) + [("c5", "1"), ("ghost", "0"), ("c7", "")])
    report, production, rejections = join_labels([labels], SCHEMA, str(log), str(tmp_path / "out"), "roc_auc",
                                                 "day", min_rows=100)
    assert rejections == {labels.file_id: None}
    assert (report.rows, report.joined, report.unknown_ids, report.duplicate_ids, report.unparseable) == (403, 400, 1, 1, 1)
    by_version = {m.version: m for m in production}
    for version, rows in (("v0001", range(200)), ("v0002", range(200, 400))):
        kept = list(rows)  # c7's empty label came second: the first one counts
        y = [truth[i] == "1" for i in kept]
        assert by_version[version].value == pytest.approx(roc_auc_score(y, [proba[i] for i in kept]), abs=1e-12)
        assert by_version[version].rows == len(kept) and by_version[version].enough
        assert by_version[version].metrics["accuracy"] == pytest.approx(
            accuracy_score(y, [proba[i] >= 0.5 for i in kept]))
    assert list(by_version["v0002"].periods) == ["2023-11-15"] and by_version["v0001"].label_delay_hours

    training = pd.read_csv(report.training_file)
    assert list(training.columns) == ["customer_id", *SCHEMA.features, "churned"] and len(training) == 400
    assert report.origin == ["monday.csv", "tuesday.csv", "late.csv"]

    # The same ids again: already labelled (the first label counts); nothing new to use.
    again = _labels(tmp_path, "again.csv", [("c1", "1"), ("c2", "1")])
    report, production, rejections = join_labels([again], SCHEMA, str(log), str(tmp_path / "out"), "roc_auc",
                                                 "day", min_rows=100)
    assert report.relabelled == 2 and "none of its 2 labels can be used (2 already labelled)" in rejections[again.file_id]["reason"]
    assert {m.version: m.rows for m in production} == {"v0001": 200, "v0002": 200}


def test_a_labels_file_without_its_columns_or_numbers_is_refused_with_one_line(tmp_path: Path) -> None:
    wrong = _labels(tmp_path, "wrong.csv", [("c1", "1")], id_column="customer")
    with pytest.raises(InvalidDataError, match="no 'customer_id' column"):
        read_label_file(wrong, "customer_id", "churned", "classification")
    regression = REGRESS.model_copy(update={"id": "customer_id", "target": "churned"})
    spend = _labels(tmp_path, "spend.csv", [("c1", "12.5"), ("c2", "lots"), ("c3", " 7 ")])
    frame, counts = read_label_file(spend, "customer_id", regression.target, "regression")
    assert frame["label"].to_pylist() == ["12.5", "7.0"] and counts["unparseable"] == 1
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("customer_id,churned\nc1,1\nc2,0,extra\n c3 , 0\n")
    frame, counts = read_label_file(FileRef(file_id=9, name=ragged.name, path=str(ragged), sha256=sha256_file(ragged),
                                            size=ragged.stat().st_size), "customer_id", "churned", "classification")
    assert frame.to_pydict() == {"id": ["c1", "c3"], "label": ["1", "0"]}
    assert (counts["rows"], counts["unparseable"]) == (3, 1)  # a line of three fields is not a label
    log = tmp_path / "log"
    frame = pd.DataFrame({"id": ["c1", "c3"], "version": "v0001", "scored_at": 1.7e9, "source": "s.csv",
                          "prediction": [10.0, 9.0]})
    predlog.write_part(log, frame, "part")
    _, production, _ = join_labels([spend], regression, str(log), str(tmp_path / "out"), "mae", "week", 1)
    assert production[0].value == pytest.approx(mean_absolute_error([12.5, 7.0], [10.0, 9.0]))
    assert list(production[0].periods) == ["2023-W46"]


def test_rows_scored_twice_become_training_rows_once_with_their_latest_features(tmp_path: Path) -> None:
    log = tmp_path / "log"
    ids = [f"c{i}" for i in range(10)]
    _log(log, "v0001", ids, [0.2] * 10, 1.7e9, "monday.csv")
    _log(log, "v0002", ids[::-1], [0.7] * 10, 1.7e9 + DAY, "monday.csv")  # a backfill, features changed
    later = pd.DataFrame({"id": ids, "version": "v0003", "scored_at": 1.7e9 + 2 * DAY, "source": "tuesday.csv",
                          "prediction": "1", "probability_0": 0.1, "probability_1": 0.9,
                          **{c: 2.0 for c in SCHEMA.numeric}, **{c: "y" for c in SCHEMA.categorical}})
    predlog.write_part(log, later[later["id"].isin(ids[:3])], "v0003-tuesday")
    labels = _labels(tmp_path, "late.csv", [(i, str(n % 2)) for n, i in enumerate(ids)])
    report, production, _ = join_labels([labels], SCHEMA, str(log), str(tmp_path / "out"), "roc_auc", "day", 1)
    assert {m.version: m.rows for m in production} == {"v0001": 10, "v0002": 10, "v0003": 3}
    training = pd.read_csv(report.training_file).sort_values("customer_id")
    assert len(training) == 10 and training["customer_id"].is_unique
    latest = training.set_index("customer_id")[SCHEMA.numeric[0]]
    assert list(latest[ids[:3]]) == [2.0] * 3 and list(latest[ids[3:]]) == [1.0] * 7
