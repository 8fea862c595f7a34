"""``retrain serve``: predictions over HTTP from the current model.

GET  /health   {"status": "ok", "version": "v0003"}   (503 while no model is deployed)
POST /predict  JSON rows (``[{...}, ...]`` or ``{"rows": [...]}``) or a CSV body
               (Content-Type: text/csv) -> {"version": ..., "predictions": [...]}

A newly deployed version is picked up without a restart: each request reads where
``current`` points (one readlink) and, when it moved, the new model is loaded completely
before it replaces the old one, so a request is always answered by one whole model.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pandas as pd

from flows.errors import RetrainError
from flows.predict import predict_rows
from flows.records import ResolvedSchema
from flows.registry import ModelRegistry

log = logging.getLogger("retrain.serve")
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class LoadedModel:
    version: str
    model: Any
    schema: ResolvedSchema


class ModelHolder:
    """The model being served; swapped whole when ``current`` moves."""

    def __init__(self, registry: ModelRegistry, trusted_types: list[str]):
        self.registry = registry
        self.trusted_types = trusted_types
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()

    def get(self) -> LoadedModel | None:
        version = self.registry.current_version()
        loaded = self._loaded
        if version is None:
            return loaded  # current removed (rolled back to nothing): keep serving what we had
        if loaded is not None and loaded.version == version:
            return loaded
        with self._lock:  # one loader at a time; others keep the old model meanwhile
            loaded = self._loaded
            if loaded is None or loaded.version != version:
                meta = self.registry.get(version)
                model = self.registry.load_model(version, self.trusted_types)
                loaded = LoadedModel(version, model, ResolvedSchema.model_validate(meta.metadata["schema"]))
                self._loaded = loaded
                log.info("serving model %s", version)
            return loaded


class BadRequest(Exception):
    pass


def parse_rows(body: bytes, content_type: str) -> pd.DataFrame:
    """Rows of a request as text columns, as prediction expects them."""
    if not body:
        raise BadRequest("empty body; send JSON rows or a CSV with a header line")
    if "csv" in content_type:
        try:
            return pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False, na_filter=False,
                               encoding="utf-8")
        except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise BadRequest(f"unreadable CSV body ({str(exc).strip().splitlines()[0]})") from None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not JSON ({exc}); send a list of row objects or Content-Type: text/csv") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise BadRequest('expected a non-empty list of row objects, e.g. [{"age": 31, "plan": "pro"}]')
    frame = pd.DataFrame(rows)
    return frame.astype(object).where(frame.notna(), None).map(lambda v: None if v is None else str(v))


def make_handler(holder: ModelHolder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "retrain"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, code: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload, default=str).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/health":
                return self._send(404, {"error": f"no route {self.path}; use GET /health or POST /predict"})
            try:
                loaded = holder.get()
            except RetrainError as exc:
                return self._send(503, {"status": "error", "error": str(exc)})
            if loaded is None:
                return self._send(503, {"status": "no model", "error": "no model is deployed yet"})
            self._send(200, {"status": "ok", "version": loaded.version})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/predict":
                return self._send(404, {"error": f"no route {self.path}; use POST /predict"})
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                return self._send(400, {"error": "bad Content-Length"})
            if length > MAX_BODY_BYTES:
                return self._send(413, {"error": f"body over {MAX_BODY_BYTES} bytes; send fewer rows per request"})
            body = self.rfile.read(length)
            try:
                loaded = holder.get()
            except RetrainError as exc:
                return self._send(503, {"error": str(exc)})
            if loaded is None:
                return self._send(503, {"error": "no model is deployed yet"})
            try:
                frame = parse_rows(body, self.headers.get("Content-Type", ""))
                result, _ = predict_rows(loaded.model, frame, loaded.schema, "request")
            except (BadRequest, RetrainError) as exc:
                return self._send(400, {"error": str(exc)})
            self._send(200, {"version": loaded.version,
                             "predictions": result.to_dict(orient="records")})

    return Handler


def make_server(registry: ModelRegistry, trusted_types: list[str], host: str,
                port: int) -> ThreadingHTTPServer:
    """Create the server (not yet serving); the caller runs ``serve_forever``."""
    holder = ModelHolder(registry, trusted_types)
    try:
        holder.get()  # fail early on a broken current model
    except RetrainError as exc:
        log.warning("current model cannot be loaded yet: %s", exc)
    try:
        server = ThreadingHTTPServer((host, port), make_handler(holder))
    except OSError as exc:
        raise RetrainError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    server.daemon_threads = True
    return server
