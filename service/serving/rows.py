"""The rows of a prediction request: the body read within its limits and parsed into a
frame of raw values, which ``flows.data.features`` then prepares exactly as training rows.

Every refusal is a ``ClientError``: a 4xx status and one line that says what to send
instead. Nothing a client sends gets past these functions as an exception of another kind.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pandas as pd

from core.errors import InvalidDataError
from flows.models.predict import read_rows

JSON_EXAMPLE = '[{"age": 31, "plan": "pro"}] or {"rows": [...]}'
ACCEPTED = "send Content-Type: application/json (rows) or text/csv (a header line, then rows)"


class ClientError(Exception):
    """A request the server refuses: its HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str, version: str | None = None):
        super().__init__(message)
        self.status = status
        self.version = version  # the model version the request was checked against, once known


def body_format(content_type: str) -> str:
    """"json" or "csv" from a Content-Type header; 415 for anything else or another charset."""
    media, _, parameters = content_type.partition(";")
    media = media.strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        kind = "json"
    elif media in ("text/csv", "application/csv"):
        kind = "csv"
    else:
        raise ClientError(415, f"Content-Type {media or '(none)'} is not accepted; {ACCEPTED}")
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise ClientError(415, f"charset {charset} is not accepted; send the body as UTF-8")
    return kind


async def read_body(declared_length: str | None, chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to be over ``max_bytes``: from
    Content-Length before reading, or while reading a body sent without it (chunked)."""
    too_large = f"body over {max_bytes} bytes (serve.max_body_bytes); send fewer rows per request"
    if declared_length is not None and declared_length.strip().isdigit() and int(declared_length) > max_bytes:
        raise ClientError(413, too_large)
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise ClientError(413, too_large)
        parts.append(chunk)
    return b"".join(parts)


def parse_rows(body: bytes, content_type: str, required: Sequence[str] = (),
               max_rows: int | None = None) -> pd.DataFrame:
    """Rows of a request body as a frame of raw values (CSV: text, as ``retrain predict``
    reads files; JSON: numbers, text and nulls as sent). ``required``: keys every JSON row
    must have; ``max_rows``: more rows are refused (413)."""
    kind = body_format(content_type)
    if not body.strip():
        raise ClientError(400, f"empty body; {ACCEPTED}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClientError(400, f"body is not UTF-8 text (byte {exc.start}); send it as UTF-8") from None
    frame = _csv_frame(text) if kind == "csv" else _json_frame(text, required, max_rows)
    if frame.empty:
        raise ClientError(422, f"no rows in the body; {ACCEPTED}")
    if max_rows is not None and len(frame) > max_rows:
        raise ClientError(413, _too_many(len(frame), max_rows))
    return frame


def _too_many(rows: int, max_rows: int) -> str:
    return (f"{rows} rows in one request, over serve.max_rows_per_request = {max_rows}; "
            "split them over several requests")


def _csv_frame(text: str) -> pd.DataFrame:
    try:
        return read_rows(io.StringIO(text), "CSV body")
    except InvalidDataError as exc:
        raise ClientError(400, str(exc)) from None


def _json_frame(text: str, required: Sequence[str], max_rows: int | None) -> pd.DataFrame:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ClientError(400, f"body is not valid JSON ({exc}); send {JSON_EXAMPLE}") from None
    except RecursionError:
        raise ClientError(400, "body is JSON nested too deeply; send a list of flat row objects") from None
    if isinstance(data, dict):
        if "rows" not in data:
            raise ClientError(422, f'an object body needs the key "rows"; send {JSON_EXAMPLE}')
        data = data["rows"]
    if not isinstance(data, list):
        raise ClientError(422, f"expected a list of row objects, got {_json_type(data)}; send {JSON_EXAMPLE}")
    if max_rows is not None and len(data) > max_rows:  # before any row is looked at
        raise ClientError(413, _too_many(len(data), max_rows))
    for number, row in enumerate(data, start=1):
        _check_row(number, row, required)
    return pd.DataFrame(data)


def _check_row(number: int, row: Any, required: Sequence[str]) -> None:
    if not isinstance(row, dict):
        raise ClientError(422, f"row {number} is {_json_type(row)}, not an object; send {JSON_EXAMPLE}")
    for key, value in row.items():
        if isinstance(value, (dict, list)):
            raise ClientError(422, f"row {number}, column {key!r}: {_json_type(value)} is not a value; "
                                   "send a number, text or null")
    lacking = [c for c in required if c not in row]
    if lacking:
        raise ClientError(422, f"row {number} lacks feature(s) {', '.join(lacking)}; send every feature "
                               "in every row (null when unknown)")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")
