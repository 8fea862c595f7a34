"""The OpenAPI document of the prediction server, built from the model it serves: the
request body of ``POST /predict`` names each feature, its type and the categories seen in
training; the response names the prediction and each class's probability. It is rebuilt
when a swap brings another version, so ``/docs`` always describes the model answering."""

from __future__ import annotations

import copy
from typing import Any

from flows.data.features import MISSING_TOKENS
from service.serving.holder import LoadedModel

ERROR = {"type": "object", "required": ["error"], "properties": {
    "error": {"type": "string", "description": "one line: what was wrong and what to send instead"},
    "version": {"type": "string", "description": "the model version the request was checked against"},
}}
# Shown when a categorical column has more categories than that: the rest are in /model.
MAX_EXAMPLES = 50


def document(base: dict[str, Any], loaded: LoadedModel | None, max_rows: int) -> dict[str, Any]:
    """``base`` (FastAPI's document of the routes) with /predict described for ``loaded``."""
    doc = copy.deepcopy(base)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR
    schemas["Row"] = row_schema(loaded)
    schemas["Predictions"] = predictions_schema(loaded)
    rows = {"type": "array", "items": {"$ref": "#/components/schemas/Row"}, "minItems": 1, "maxItems": max_rows}
    example = example_row(loaded)
    operation = doc["paths"]["/predict"]["post"]
    operation["requestBody"] = {"required": True, "content": {
        "application/json": {"schema": {"anyOf": [rows, {"type": "object", "required": ["rows"],
                                                         "properties": {"rows": rows}}]},
                             "example": [example]},
        "text/csv": {"schema": {"type": "string", "description": "a header line naming the features, "
                                                                 "then one line per row"},
                     "example": _csv_example(example)},
    }}
    errors = {"400": "unreadable body (empty, not UTF-8, malformed JSON or CSV)",
              "413": f"body over serve.max_body_bytes, or more than {max_rows} rows",
              "415": "Content-Type other than application/json or text/csv",
              "422": "rows that do not fit the model: a missing feature, a value that is not a number",
              "503": "no model is deployed yet"}
    operation["responses"] = {
        "200": {"description": "one prediction per row, in order, and the version that answered",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Predictions"}}}},
        **{code: {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
           for code, text in errors.items()},
    }
    if loaded is not None:
        doc["info"]["version"] = loaded.version
        doc["info"]["description"] = (f"Predictions of model version {loaded.version} ({loaded.schema.task}, "
                                      f"target '{loaded.schema.target}'). Features: "
                                      f"{', '.join(loaded.schema.features)}.")
    return doc


def row_schema(loaded: LoadedModel | None) -> dict[str, Any]:
    if loaded is None:
        return {"type": "object", "description": "no model is deployed yet: its features are not known"}
    missing = ", ".join(repr(t) for t in MISSING_TOKENS if t) + ", inf, -inf"
    properties: dict[str, Any] = {}
    for column in loaded.schema.numeric:
        properties[column] = {"type": ["number", "string", "null"],
                              "description": f"a number (also as text); null, empty, {missing} count as "
                                             "missing. Other text is refused (422)"}
    for column in loaded.schema.categorical:
        seen = loaded.categories.get(column, [])
        listed = f" (the first {MAX_EXAMPLES} as examples, all in GET /model)" if len(seen) > MAX_EXAMPLES else ""
        described: dict[str, Any] = {
            "type": ["string", "number", "null"],
            "description": f"a category: {len(seen)} seen in training{listed}; other values count as "
                           "unseen; null or empty count as missing"}
        if seen:
            described["examples"] = seen[:MAX_EXAMPLES]
        properties[column] = described
    return {"type": "object", "title": f"Row of {loaded.version}", "required": loaded.schema.features,
            "properties": properties, "additionalProperties": True,
            "description": "one row to predict: every feature (other columns are ignored)"}


def predictions_schema(loaded: LoadedModel | None) -> dict[str, Any]:
    prediction: dict[str, Any] = {"id": {"type": "string", "description": "the row's id: its [schema] id column, or "
                                         "the request's X-Request-ID (-N for its Nth row), or made up"},
                                  "prediction": {"description": f"the predicted {loaded.schema.target}"
                                                 if loaded else "the prediction"}}
    for label in loaded.classes if loaded else []:
        prediction[f"probability_{label}"] = {"type": "number", "minimum": 0, "maximum": 1}
    return {"type": "object", "required": ["version", "predictions"], "properties": {
        "version": {"type": "string", "description": "the model version that answered"},
        "predictions": {"type": "array", "items": {"type": "object", "properties": prediction}},
    }}


def example_row(loaded: LoadedModel | None) -> dict[str, Any]:
    if loaded is None:
        return {}
    row: dict[str, Any] = {column: 0 for column in loaded.schema.numeric}
    for column in loaded.schema.categorical:
        seen = loaded.categories.get(column)
        row[column] = seen[0] if seen else None
    return {column: row[column] for column in loaded.schema.features}


def _csv_example(row: dict[str, Any]) -> str:
    values = ["" if v is None else str(v) for v in row.values()]
    return ",".join(row) + "\n" + ",".join(values) + "\n"
