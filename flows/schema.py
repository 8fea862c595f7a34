"""The data's schema: resolving the configured schema against real columns, and
validating/cleaning a frame against the resolved schema."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flows.errors import InvalidDataError
from flows.records import ResolvedSchema
from flows.specs import SchemaSpec

EXAMPLES = 3  # example bad values shown in an error


def _parses_as_number(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").notna()


def resolve_schema(spec: SchemaSpec, sample: pd.DataFrame, file_name: str) -> ResolvedSchema:
    """Fill in what the config leaves open, from a sample of one file (header + first rows,
    read with every column as text).

    features = spec.features or every column except target and spec.drop;
    categorical = spec.categorical, or (when None) the features whose non-missing sample
    values do not all parse as numbers; numeric = the other features. When features are
    inferred, text columns that look like identifiers (nearly every value distinct) are
    left out and listed in ``ignored``.
    """
    columns = list(sample.columns)
    if spec.target not in columns:
        raise InvalidDataError(
            f"{file_name}: missing target column '{spec.target}' (columns: {', '.join(columns)}); "
            "add the column or set schema.target",
            {"missing_columns": [spec.target], "columns": columns},
            hint=f"every file needs the target column '{spec.target}'",
        )
    if spec.features:
        missing = [c for c in spec.features if c not in columns]
        if missing:
            raise InvalidDataError(
                f"{file_name}: missing feature column(s) {', '.join(missing)}; add them or change "
                "schema.features",
                {"missing_columns": missing, "columns": columns},
                hint="every file needs the configured feature columns",
            )
        features = list(spec.features)
    else:
        features = [c for c in columns if c != spec.target and c not in spec.drop]
    if not features:
        raise InvalidDataError(f"{file_name}: no feature columns besides the target; add feature columns",
                               {"columns": columns})
    ignored: list[str] = []
    if spec.categorical is None:
        categorical = []
        for column in features:
            values = sample[column].dropna()
            if len(values) and not _parses_as_number(values).all():
                if not spec.features and _looks_like_identifier(values):
                    ignored.append(column)  # one-hot encoding an id would only memorise rows
                else:
                    categorical.append(column)
        features = [c for c in features if c not in ignored]
    else:
        unknown = [c for c in spec.categorical if c not in features]
        if unknown:
            raise InvalidDataError(
                f"{file_name}: categorical column(s) {', '.join(unknown)} are not features; "
                "fix schema.categorical", {"unknown_columns": unknown})
        categorical = [c for c in features if c in spec.categorical]
    numeric = [c for c in features if c not in categorical]
    return ResolvedSchema(target=spec.target, task=spec.task, numeric=numeric,
                          categorical=categorical, max_bad_row_fraction=spec.max_bad_row_fraction,
                          ignored=ignored)


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
    """
    needed = [*schema.features, schema.target]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        what = "target column" if missing == [schema.target] else "column(s)"
        raise InvalidDataError(
            f"{file_name}: missing {what} {', '.join(repr(c) for c in missing)} "
            f"(columns: {', '.join(frame.columns)}); add them or change the schema",
            {"missing_columns": missing, "columns": list(frame.columns)},
            hint="every file must have the same columns as the first file of the batch",
        )
    rows = len(frame)
    out = pd.DataFrame(index=frame.index)
    bad = pd.Series(False, index=frame.index)
    problems: dict[str, dict] = {}

    numeric_cols = list(schema.numeric)
    if schema.task == "regression":
        numeric_cols.append(schema.target)
    for column in numeric_cols:
        text = frame[column]
        values = pd.to_numeric(text, errors="coerce").astype("float64")
        unparsed = text.notna() & values.isna()
        values[np.isinf(values)] = np.nan
        if unparsed.any():
            bad |= unparsed
            positions = np.flatnonzero(unparsed.to_numpy())[:EXAMPLES]
            problems[column] = {
                "expected": "numbers",
                "unparseable_values": int(unparsed.sum()),
                "examples": [{"line": int(first_line + p), "value": str(text.iloc[p])} for p in positions],
            }
        out[column] = values
    for column in schema.categorical:
        out[column] = _clean_text(frame[column])
    if schema.task == "classification":
        out[schema.target] = _clean_text(frame[schema.target])
    target_missing = out[schema.target].isna() & ~bad
    if target_missing.any():
        problems.setdefault(schema.target, {})["missing_values"] = int(target_missing.sum())
        bad |= target_missing

    dropped = int(bad.sum())
    if rows and dropped / rows > schema.max_bad_row_fraction:
        worst = max(problems, key=lambda c: problems[c].get("unparseable_values", 0)
                    + problems[c].get("missing_values", 0))
        detail = problems[worst]
        if "unparseable_values" in detail:
            examples = ", ".join(f"line {e['line']}: {e['value']!r}" for e in detail["examples"])
            what = (f"column '{worst}' expects numbers but {detail['unparseable_values']} of {rows} "
                    f"values are not ({examples})")
        else:
            what = f"target '{worst}' is missing in {detail['missing_values']} of {rows} rows"
        raise InvalidDataError(
            f"{file_name}: {what}; {dropped} of {rows} rows unusable, over the limit of "
            f"{schema.max_bad_row_fraction:.0%}",
            {"rows": rows, "unusable_rows": dropped, "columns": problems,
             "max_bad_row_fraction": schema.max_bad_row_fraction},
            hint="fix the values (or the column's type), or raise schema.max_bad_row_fraction",
        )
    clean = out.loc[~bad, [*schema.features, schema.target]].reset_index(drop=True)
    return clean, dropped


def _clean_text(values: pd.Series) -> pd.Series:
    """Strings stripped; empty and missing as NaN; object dtype (what scikit-learn's
    imputers and encoders expect)."""
    text = values.astype(object)
    stripped = text.where(text.isna(), text.astype(str).str.strip())
    stripped = stripped.where(stripped != "", np.nan)
    return stripped.astype(object)
