"""``retrain serve``: predictions over HTTP from the current model (FastAPI on uvicorn).

POST /predict  JSON rows (``[{...}, ...]`` or ``{"rows": [...]}``) or CSV (text/csv)
               -> {"version": "v0003", "predictions": [{"prediction": ..., "probability_<class>": ...}]}
GET  /health   liveness: 200 while the process answers
GET  /ready    200 once a model is loaded, 503 before
GET  /model    the version answering: metrics, schema, categories, when it became current
GET  /metrics  Prometheus metrics (service.serving.metrics)
GET  /docs, /openapi.json   the API, with the request schema of the model answering

Every answer of /predict names the version that answered (in the body and the
X-Model-Version header). Anything a client sends that the model cannot use gets a 4xx and
``{"error": "one line"}``; no answer ever carries a traceback. The model is hot-swapped
(service.serving.holder): a request is answered by one whole model. Concurrent requests are
micro-batched (service.serving.batching): one model call for the rows of several requests of
the same version.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

import pandas as pd
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import values as prometheus_values
from starlette.exceptions import HTTPException

from core.errors import RetrainError
from flows.models.registry import ModelRegistry
from service.config import ServeSpec, Settings
from service.intake.home import Home
from service.serving.batching import MicroBatcher, check_features
from service.serving.holder import LoadedModel, ModelHolder
from service.serving.metrics import (
    MULTIPROCESS_VARIABLE,
    MetricsMiddleware,
    ServeMetrics,
    forget_process,
)
from service.serving.openapi import document
from service.serving.prediction_log import PredictionLogWriter, request_ids
from service.serving.rows import ClientError, body_format, parse_rows, read_body
from service.serving.workers import ForkedServers

__all__ = ["create_app", "parse_rows", "running_server", "serve"]

log = logging.getLogger("retrain.serve")
ROUTES = "POST /predict, GET /health, /ready, /model, /metrics, /docs"

# Bodies up to this size are parsed on the event loop (well under a millisecond); larger
# ones on a thread, so that a big request never holds up the others.
INLINE_PARSE_BYTES = 16 * 1024

routes = APIRouter()


# -- the app --------------------------------------------------------------------------------

def create_app(registry: ModelRegistry, trusted_types: list[str], spec: ServeSpec,
               prediction_log: str | None = None) -> FastAPI:
    """The prediction app, its model holder primed (a broken model is reported at once);
    ``prediction_log``: the folder its answers are logged to (``[serve] log_predictions``)."""
    metrics = ServeMetrics()
    holder = ModelHolder(registry, trusted_types,
                         on_swap=lambda old, new: metrics.swapped(old, new.version, new.load_seconds),
                         on_failure=lambda version: metrics.load_failures.inc())
    app = FastAPI(title="retrain", summary="Predictions of the deployed model", version="no model yet",
                  redoc_url=None, lifespan=_lifespan)
    app.state.holder, app.state.metrics, app.state.spec = holder, metrics, spec
    app.state.prediction_log = PredictionLogWriter(prediction_log) if prediction_log else None
    app.state.batcher = MicroBatcher(spec.max_batch_rows, spec.max_batch_wait_ms / 1000, on_batch=metrics.batched,
                                     log=app.state.prediction_log)
    app.include_router(routes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_error_handlers(app)
    publish_model_schema(app, holder, spec.max_rows_per_request)
    try:
        holder.get()
    except RetrainError as exc:
        log.warning("%s; answering 503 until a loadable version is deployed", exc)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    app.state.batcher.close()  # the server stops: its batching task and model thread with it


@routes.post("/predict", summary="Predictions of the model answering, one per row")
async def predict(request: Request) -> Response:
    state = request.app.state
    content_type = request.headers.get("content-type", "")
    body_format(content_type)  # a wrong Content-Type is refused before the body is read
    with state.batcher.arriving():  # the batch being formed may wait for these rows
        loaded = model_or_503(state.holder)
        body = await read_body(request.headers.get("content-length"), request.stream(), state.spec.max_body_bytes)
        if len(body) <= INLINE_PARSE_BYTES:
            frame = request_rows(loaded, body, content_type, state.spec.max_rows_per_request)
        else:
            frame = await run_in_threadpool(request_rows, loaded, body, content_type,
                                            state.spec.max_rows_per_request)
    ids = request_ids(frame, loaded.schema.id, request.headers.get("x-request-id"))
    answer = await state.batcher.predict(loaded, frame, ids)
    if answer.error is not None:
        raise answer.error
    return Response(answer.payload, media_type="application/json", headers={"X-Model-Version": answer.version})


def request_rows(loaded: LoadedModel, body: bytes, content_type: str, max_rows: int) -> pd.DataFrame:
    """The request's rows, refused (4xx naming the version) when the model cannot use them."""
    try:
        frame = parse_rows(body, content_type, loaded.schema.features, max_rows)
        check_features(frame, loaded)
        return frame
    except ClientError as exc:
        exc.version = loaded.version
        raise


def model_or_503(holder: ModelHolder) -> LoadedModel:
    try:
        loaded = holder.get()
    except RetrainError as exc:
        raise HTTPException(503, str(exc)) from None
    if loaded is None:
        raise HTTPException(503, "no model is deployed yet; the first deployment is picked up without a restart")
    return loaded


@routes.get("/health", summary="Liveness: the process answers")
async def health(request: Request) -> dict[str, Any]:
    loaded = request.app.state.holder.serving
    return {"status": "ok", "version": loaded.version if loaded else None}


@routes.get("/ready", summary="Readiness: a model is loaded (503 before)")
def ready(request: Request) -> dict[str, Any]:
    return {"status": "ready", "version": model_or_503(request.app.state.holder).version}


@routes.get("/model", summary="The version answering: metrics, schema, categories, since when")
def model(request: Request) -> dict[str, Any]:
    loaded = model_or_503(request.app.state.holder)
    record = loaded.record
    return {
        "version": loaded.version, "created_at": record.created_at,
        "current_since": _iso(loaded.current_since), "loaded_at": _iso(loaded.loaded_at),
        "load_seconds": round(loaded.load_seconds, 3),
        "metric": record.lineage.get("metric"), "metrics": record.metrics,
        "schema": {"target": loaded.schema.target, "task": loaded.schema.task,
                   "numeric": loaded.schema.numeric, "categorical": loaded.schema.categorical},
        "categories": loaded.categories, "classes": loaded.classes,
    }


@routes.get("/metrics", summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    try:  # a scrape notices a deployment too, so the model in use is reported even without traffic
        request.app.state.holder.get()
    except RetrainError:
        pass  # counted in the load failures
    data, content_type = request.app.state.metrics.exposition(request.headers.get("accept", ""))
    return Response(data, headers={"Content-Type": content_type})


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def publish_model_schema(app: FastAPI, holder: ModelHolder, max_rows: int) -> None:
    """/openapi.json (and so /docs) describes the model answering, rebuilt after a swap."""
    built: dict[str | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        try:
            loaded = holder.get()
        except RetrainError:
            loaded = None
        key = loaded.version if loaded else None
        if key not in built:
            base = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            built.clear()
            built[key] = document(base, loaded, max_rows)
        return built[key]

    app.openapi = openapi  # type: ignore[method-assign]


# -- errors: one line, never a traceback ------------------------------------------------------

def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientError, _client_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)


def error_response(status: int, message: str, version: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    content = {"error": " ".join(message.split())[:1000]}
    if version is not None:
        content["version"] = version
        headers = {**(headers or {}), "X-Model-Version": version}
    return JSONResponse(content, status_code=status, headers=headers)


async def _client_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClientError)
    return error_response(exc.status, str(exc), exc.version)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path[:200]}"
    if exc.status_code == 404:
        message = f"no route {where}; the routes are {ROUTES}"
    elif exc.status_code == 405:
        message = f"{where} is not allowed; {request.url.path[:200]} takes {(exc.headers or {}).get('Allow', '?')}"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(422, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # Uvicorn logs the traceback on the server's side; the client gets one line.
    return error_response(500, f"internal error ({type(exc).__name__}); the server's log has the details")


# -- the server ---------------------------------------------------------------------------------

def serve(settings: Settings, log_format: str = "plain", verbose: bool = False) -> None:
    """Serve until SIGTERM or Ctrl+C, with ``settings.serve.workers`` processes."""
    spec = settings.serve
    sock = bind(spec.host, spec.port, reuse_port=spec.workers > 1)
    registry = ModelRegistry(Home(Path(settings.home)).registry)
    if threading.current_thread() is threading.main_thread():
        # Uvicorn shuts down gracefully on SIGTERM, then raises it again: end with status 0.
        signal.signal(signal.SIGTERM, _exit_quietly)
    port = sock.getsockname()[1]
    if spec.workers == 1:
        app = create_app(registry, settings.model.trusted_types, spec, prediction_log(settings))
        server = uvicorn.Server(server_config(app, spec))
        log.info("serving predictions on http://%s:%d (POST /predict, docs at /docs); press Ctrl+C to quit",
                 spec.host, port)
        try:
            server.run(sockets=[sock])
        finally:
            close_prediction_log(app)
        return
    with multiprocess_metrics():
        app = create_app(registry, settings.model.trusted_types, spec, prediction_log(settings))  # loaded once, before the fork
        forget_process(os.getpid())  # the parent answers nothing: only its servers' metrics count
        log.info("serving predictions on http://%s:%d with %d processes; press Ctrl+C to quit",
                 spec.host, port, spec.workers)
        ForkedServers(app, lambda forked: server_config(forked, spec), sock, spec.workers,
                      on_start=_announce_model, on_end=forget_process, on_stop=close_prediction_log).run()


def close_prediction_log(app: FastAPI) -> None:
    """Write what a server process still buffers of its answers (``[serve] log_predictions``),
    once it stopped answering: explicitly, as SIGTERM ends the process right after uvicorn's
    own shutdown."""
    if getattr(app.state, "prediction_log", None) is not None:
        app.state.prediction_log.close()


def prediction_log(settings: Settings) -> str | None:
    """Where the answers are logged for their late labels, when ``[serve] log_predictions``."""
    return str(Home(Path(settings.home)).prediction_log) if settings.serve.log_predictions else None


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _announce_model(app: FastAPI) -> None:
    """In a forked server process: its metrics name the model it inherited."""
    loaded = app.state.holder.serving
    if loaded is not None:
        app.state.metrics.announce(loaded.version, loaded.load_seconds)


@contextmanager
def multiprocess_metrics() -> Iterator[None]:
    """A fresh folder where the server processes write their metrics, for /metrics to add up.
    prometheus_client picks its file-backed values when it is imported, before this folder
    exists: the choice is made again here, before any metric of the servers is created."""
    folder = tempfile.mkdtemp(prefix="retrain-serve-metrics-")
    os.environ[MULTIPROCESS_VARIABLE] = folder
    in_memory, prometheus_values.ValueClass = prometheus_values.ValueClass, prometheus_values.get_value_class()
    try:
        yield
    finally:
        prometheus_values.ValueClass = in_memory
        os.environ.pop(MULTIPROCESS_VARIABLE, None)
        shutil.rmtree(folder, ignore_errors=True)


def server_config(app: Any, spec: ServeSpec) -> uvicorn.Config:
    return uvicorn.Config(app, host=spec.host, port=spec.port,
                          log_config=None, access_log=False, timeout_graceful_shutdown=10)


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The listening socket, bound here so that a port in use is one line, not uvicorn's exit.
    Its protocol is named: asyncio turns Nagle's algorithm off only on sockets whose proto is
    IPPROTO_TCP, and with it on, every response body waits for the client's delayed ACK (40 ms)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # several server processes, each listening with a socket of its own
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RetrainError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    return sock


@contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` from a thread while the context lasts; yields its base URL (port 0:
    a free port). For tests and benchmarks: the same uvicorn set-up as ``retrain serve``."""
    sock = bind(host, port)
    server = uvicorn.Server(server_config(app, ServeSpec(host=host, port=sock.getsockname()[1])))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        if not server.started:
            raise RetrainError(f"the server on {host}:{sock.getsockname()[1]} did not start")
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        close_prediction_log(app)
