"""``retrain predict`` (a CSV file) and ``retrain serve`` (HTTP): predictions of a deployed
model."""

from __future__ import annotations

import argparse
import os
import sys

from service.cli.base import existing_home, load
from service.cli.models import open_registry


def add_predict(sub, common: argparse.ArgumentParser) -> None:
    predict = sub.add_parser("predict", parents=[common], help="predictions of the current model",
                             description="Predict every row of CSV with the current model.")
    predict.add_argument("csv", metavar="CSV")
    predict.add_argument("--output", metavar="PATH", help="write a CSV here (default: stdout)")
    predict.add_argument("--version", help="use this registry version instead of current")
    predict.set_defaults(func=cmd_predict)


def add_serve(sub, common: argparse.ArgumentParser) -> None:
    serve = sub.add_parser("serve", parents=[common], help="HTTP predictions from the current model",
                           description="POST /predict (JSON rows or CSV), GET /health, /ready, /model, "
                                       "/metrics, /docs. A newly deployed version is picked up without "
                                       "a restart. Each flag overrides its [serve] setting.")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--workers", type=int, metavar="N", help="server processes (default 1)")
    serve.add_argument("--max-rows", type=int, metavar="N",
                       help="rows per request above which it is refused with 413 (default 100000)")
    serve.add_argument("--max-body-bytes", type=int, metavar="BYTES",
                       help="request body size above which it is refused with 413 (default 64 MiB)")
    serve.set_defaults(func=cmd_serve)


def cmd_predict(args: argparse.Namespace) -> int:
    from core.errors import ModelNotFoundError
    from core.records import ResolvedSchema
    from flows.models.predict import predict_rows, read_rows

    settings, registry = open_registry(args)
    version = registry.get(args.version) if args.version else registry.current()
    if version is None:
        raise ModelNotFoundError("no model is deployed yet; drop data into the inbox first")
    schema = ResolvedSchema.model_validate(version.lineage["schema"])
    model = registry.load_model(version.version, settings.model.trusted_types)
    frame = read_rows(args.csv)
    result, prepared = predict_rows(model, frame, schema, args.csv)
    if prepared.unparsed:
        print(f"retrain: warning: {prepared.unparsed_message(args.csv)}; predicted with those "
              "values missing", file=sys.stderr)
    out = frame.join(result)
    if args.output:
        out.to_csv(args.output, index=False)
        print(f"{len(out)} predictions of {version.version} written to {args.output}", file=sys.stderr)
    else:
        out.to_csv(sys.stdout, index=False)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load(args, **{"serve.host": args.host, "serve.port": args.port, "serve.workers": args.workers,
                             "serve.max_rows_per_request": args.max_rows,
                             "serve.max_body_bytes": args.max_body_bytes})
    existing_home(settings)
    # One OpenMP/BLAS thread per prediction: a request has few rows, and concurrent requests
    # (threads, serve.workers processes) are the parallelism; thread pools per request would
    # spin against each other. Set before the libraries load: OpenMP reads it once, and a
    # limit set later holds only for the thread that sets it, not the request threads.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    from service.serving.app import serve

    serve(settings, args.log_format, args.verbose)
    return 0
