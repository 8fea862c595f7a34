"""The data's schema: resolving the configured schema against real columns, and
validating/cleaning a frame against the resolved schema."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from core.errors import InvalidDataError
from core.records import ResolvedSchema
from core.specs import SchemaSpec
from flows.data.features import EXAMPLES, clean_text, normalise_text, parse_numbers

_EXAMPLE_CHARS = 40  # an example value is cut to this length, so the message stays short


def _parses_as_number(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").notna()


def _missing_column_error(file_name: str, target: str, missing: list[str],
                          columns: list[str], fix: str) -> InvalidDataError:
    """One message shape for every missing column, whichever step finds it."""
    if missing == [target]:
        what = f"target column '{target}'"
        fix = "add the column or set schema.target"
    else:
        what = f"column(s) {', '.join(repr(c) for c in missing)}"
    return InvalidDataError(
        f"{file_name}: missing {what} (columns: {', '.join(columns)}); {fix}",
        {"missing_columns": missing, "columns": columns},
        hint=f"every file needs the columns {', '.join(missing)}",
    )


def resolve_schema(spec: SchemaSpec, sample: pd.DataFrame, file_name: str) -> ResolvedSchema:
    """Fill in what the config leaves open, from a sample of one file (header + first rows,
    read with every column as text).

    features = spec.features or every column except target and spec.drop;
    categorical = spec.categorical, or (when None) the features whose non-missing sample
    values do not all parse as numbers; numeric = the other features. When features are
    inferred, text columns that look like identifiers (nearly every value distinct) are
    left out and listed in ``ignored``. Column order is the file's (or spec.features').
    """
    columns = [str(c) for c in sample.columns]
    if spec.target not in columns:
        raise _missing_column_error(file_name, spec.target, [spec.target], columns,
                                    "add the column or set schema.target")
    if spec.features:
        missing = [c for c in spec.features if c not in columns]
        if missing:
            raise _missing_column_error(file_name, spec.target, missing, columns,
                                        "add them or change schema.features")
        features = list(spec.features)
    else:
        features = [c for c in columns if c not in (spec.target, spec.id) and c not in spec.drop]
    if not features:
        raise InvalidDataError(f"{file_name}: no feature columns besides the target "
                               f"'{spec.target}'; add feature columns or change schema.drop",
                               {"columns": columns}, hint="a model needs at least one feature")
    ignored: list[str] = []
    if spec.categorical is None:
        categorical = []
        for column in features:
            values = normalise_text(sample[column]).dropna()
            if len(values) and not _parses_as_number(values).all():
                if not spec.features and _looks_like_identifier(values):
                    ignored.append(column)  # one-hot encoding an id would only memorise rows
                else:
                    categorical.append(column)
        features = [c for c in features if c not in ignored]
        if not features:
            raise InvalidDataError(
                f"{file_name}: every feature column looks like an identifier "
                f"({', '.join(ignored)}); list the features in schema.features",
                {"ignored": ignored}, hint="set schema.features to the columns to learn from")
    else:
        unknown = [c for c in spec.categorical if c not in features]
        if unknown:
            raise InvalidDataError(
                f"{file_name}: categorical column(s) {', '.join(unknown)} are not features; "
                "fix schema.categorical", {"unknown_columns": unknown, "features": features},
                hint="schema.categorical may only name feature columns")
        categorical = [c for c in features if c in spec.categorical]
    numeric = [c for c in features if c not in categorical]
    return ResolvedSchema(target=spec.target, task=spec.task, numeric=numeric,
                          categorical=categorical, max_bad_row_fraction=spec.max_bad_row_fraction,
                          ignored=ignored, id=spec.id)


def _looks_like_identifier(values: pd.Series) -> bool:
    """Text whose values are nearly all distinct (ids, free text): not a usable category."""
    distinct = values.nunique()
    return distinct > 50 and distinct > 0.5 * len(values)


def validate_frame(frame: pd.DataFrame, schema: ResolvedSchema, file_name: str,
                   first_line: int = 2) -> tuple[pd.DataFrame, int]:
    """Check and clean one partition read with every column as text.

    Returns (clean frame with exactly the features + target: numeric columns as float64,
    categorical as object strings stripped, empty -> NaN; number of rows dropped).
    Rows are dropped when the target is missing or a numeric value does not parse; above
    schema.max_bad_row_fraction the partition is rejected with InvalidDataError naming
    the columns, counts and example lines.

    ``first_line`` is the file line of the frame's first row when rows map one to one
    onto lines (examples then carry ``line``); 0 when that is unknown (a later partition,
    blank or skipped lines), and examples carry ``row_in_part`` (1-based) instead.
    """
    needed = [*schema.features, schema.target]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise _missing_column_error(file_name, schema.target, missing,
                                    [str(c) for c in frame.columns],
                                    "add them or change the schema")
    rows = len(frame)
    out: dict[str, pd.Series] = {}
    bad = np.zeros(rows, dtype=bool)
    problems: dict[str, dict[str, Any]] = {}

    numeric_cols = list(schema.numeric)
    if schema.task == "regression":
        numeric_cols.append(schema.target)
    for column in numeric_cols:
        values, unparsed = parse_numbers(frame[column])
        if unparsed.any():
            bad |= unparsed
            positions = np.flatnonzero(unparsed)[:EXAMPLES]
            text = frame[column]
            problems[column] = {
                "expected": "numbers",
                "unparseable_values": int(unparsed.sum()),
                "examples": [_example(p, str(text.iloc[p]).strip(), first_line) for p in positions],
            }
        out[column] = pd.Series(values, index=frame.index)
    for column in schema.categorical:
        out[column] = clean_text(frame[column])
    if schema.task == "classification":
        out[schema.target] = clean_text(frame[schema.target])
    target_missing = out[schema.target].isna().to_numpy() & ~bad
    if target_missing.any():
        problems.setdefault(schema.target, {})["missing_values"] = int(target_missing.sum())
        bad |= target_missing

    dropped = int(bad.sum())
    if rows and dropped / rows > schema.max_bad_row_fraction:
        raise _too_many_bad_rows(problems, rows, dropped, schema, file_name)
    clean = pd.DataFrame({c: out[c] for c in needed}, index=frame.index)
    clean = clean.loc[~bad].reset_index(drop=True)
    return clean, dropped


def _example(position: int, value: Any, first_line: int) -> dict[str, Any]:
    where = ({"line": int(first_line + position)} if first_line > 0
             else {"row_in_part": int(position + 1)})
    return {**where, "value": str(value)}


def _too_many_bad_rows(problems: dict[str, dict[str, Any]], rows: int, dropped: int,
                       schema: ResolvedSchema, file_name: str) -> InvalidDataError:
    worst = max(problems, key=lambda c: problems[c].get("unparseable_values", 0)
                + problems[c].get("missing_values", 0))
    detail = problems[worst]
    if "unparseable_values" in detail:
        examples = ", ".join(
            f"{'line ' + str(e['line']) if 'line' in e else 'row ' + str(e['row_in_part']) + ' of this part'}"
            f": {_shorten(e['value'])!r}" for e in detail["examples"])
        what = (f"column '{worst}' expects numbers but {detail['unparseable_values']} of {rows} "
                f"values are not ({examples})")
    else:
        what = f"target '{worst}' is missing in {detail['missing_values']} of {rows} rows"
    others = [c for c in problems if c != worst]
    also = f" (also bad: {', '.join(others)})" if others else ""
    return InvalidDataError(
        f"{file_name}: {what}{also}; {dropped} of {rows} rows unusable, over the limit of "
        f"{schema.max_bad_row_fraction:.0%}; fix the values or raise schema.max_bad_row_fraction",
        {"rows": rows, "unusable_rows": dropped, "columns": problems,
         "max_bad_row_fraction": schema.max_bad_row_fraction},
        hint="fix the values (or the column's type), or raise schema.max_bad_row_fraction",
    )


def _shorten(value: str) -> str:
    return value if len(value) <= _EXAMPLE_CHARS else value[: _EXAMPLE_CHARS - 1] + "…"
