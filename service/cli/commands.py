"""The ``retrain`` command line.

Commands import what they need lazily: ``retrain status`` must answer in a fraction of a
second, without importing Prefect or Dask.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import os
import shutil
import sys
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Sequence

from core.errors import RetrainError


def build_parser() -> argparse.ArgumentParser:
    common, cluster = _common_options(), _cluster_options()
    parser = argparse.ArgumentParser(
        prog="retrain", parents=[common],
        description="Keep a model fresh: drop CSV files into the inbox; each batch is "
                    "preprocessed, trained, evaluated and deployed only when it wins.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # One function per command, in the order `retrain --help` lists them.
    _add_run_commands(sub, common, cluster)
    for add in (_add_status, _add_pause, _add_models, _add_predict, _add_sample, _add_serve, _add_report,
                _add_requeue):
        add(sub, common)
    return parser


# The common options' defaults, filled in by ``parse_args`` when given neither before nor
# after the command. Not ``set_defaults``: the parsers share the options' actions, so a
# default set on one would be applied by the command's parser over a value given before it.
COMMON_DEFAULTS = {"config": None, "home": None, "log_format": "plain", "verbose": False}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv, namespace=argparse.Namespace(**COMMON_DEFAULTS))


def _common_options() -> argparse.ArgumentParser:
    """Options accepted before or after the command. SUPPRESS keeps a subcommand's parser
    from resetting a value given before the command to its default."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--config", metavar="PATH",
                        help="settings file (default: config/retrain.toml when present; env RETRAIN_CONFIG)")
    common.add_argument("--home", metavar="DIR",
                        help="home folder with inbox/, archive/, registry/... (default: var; env RETRAIN_HOME)")
    common.add_argument("--log-format", choices=["plain", "json"],
                        help="log lines as plain text (default) or one JSON object per line")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return common


def _cluster_options() -> argparse.ArgumentParser:
    """Where the flow's tasks run; each flag overrides its [dask] setting."""
    cluster = argparse.ArgumentParser(add_help=False)
    group = cluster.add_argument_group("Dask cluster")
    group.add_argument("--dask-address", metavar="URL",
                       help="run tasks on this existing Dask scheduler (e.g. tcp://10.0.0.5:8786)")
    group.add_argument("--workers", type=int, metavar="N", help="local cluster: worker processes")
    group.add_argument("--threads-per-worker", type=int, metavar="N", help="local cluster: threads per worker")
    group.add_argument("--memory-limit", metavar="SIZE",
                       help="local cluster: memory per worker, e.g. 4GiB (default: auto, a share of RAM)")
    group.add_argument("--adapt", metavar="MIN:MAX", type=_adapt_bounds,
                       help="local cluster: scale adaptively between MIN and MAX workers")
    return cluster


def _add_run_commands(sub, common: argparse.ArgumentParser, cluster: argparse.ArgumentParser) -> None:
    watch = sub.add_parser("watch", parents=[common, cluster], help="run the daemon (foreground, Ctrl+C to stop)",
                           description="Watch the inbox and retrain on every batch of new files.")
    watch.set_defaults(func=cmd_watch)

    run = sub.add_parser("run", parents=[common, cluster], help="run one batch of files through the flow, no daemon",
                         description="Copy FILEs into the home and run them through the flow as one "
                                     "batch. The originals are never moved. With no FILE: retrain on the "
                                     "current window now, whatever [policy] says (through the daemon when "
                                     "one holds the home). Exit 0: the run completed (deployed, rejected or kept) "
                                     "and every file was used; 3: it completed but a file was quarantined; "
                                     "1: it failed.")
    run.add_argument("files", nargs="*", metavar="FILE",
                     help="CSV files (none: retrain on the current window, as an operator's request)")
    run.set_defaults(func=cmd_run)


def _add_status(sub, common: argparse.ArgumentParser) -> None:
    status = sub.add_parser("status", parents=[common], help="files per state, last runs, current model",
                            description="What the service is doing and has done.")
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl+C")
    status.add_argument("--runs", type=int, default=10, metavar="N", help="how many runs to show")
    status.set_defaults(func=cmd_status)


def _add_pause(sub, common: argparse.ArgumentParser) -> None:
    for name, doing in (("pause", "take files into the queue but start no run"), ("resume", "start runs again")):
        command = sub.add_parser(name, parents=[common], help=f"{name} the daemon's Prefect deployment: {doing}",
                                 description=f"{name.capitalize()} the Prefect deployment the daemon runs "
                                             f"(as `prefect deployment {name}` does): {doing}.")
        command.set_defaults(func=cmd_pause, pause=name == "pause")


def _add_models(sub, common: argparse.ArgumentParser) -> None:
    models = sub.add_parser("models", parents=[common], help="the model registry",
                            description="List versions; show, roll back or compare them.")
    models.add_argument("--json", action="store_true", help="one JSON document")
    models.set_defaults(func=cmd_models_list)
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    show = msub.add_parser("show", parents=[common], help="metadata, lineage and metrics of a version")
    show.add_argument("version")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_models_show)
    rollback = msub.add_parser("rollback", parents=[common],
                               help="point current back at the previous (or a named) deployed version")
    rollback.add_argument("version", nargs="?")
    rollback.set_defaults(func=cmd_models_rollback)
    diff = msub.add_parser("diff", parents=[common], help="metrics and training data that differ")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(func=cmd_models_diff)


def _add_predict(sub, common: argparse.ArgumentParser) -> None:
    predict = sub.add_parser("predict", parents=[common], help="predictions of the current model",
                             description="Predict every row of CSV with the current model.")
    predict.add_argument("csv", metavar="CSV")
    predict.add_argument("--output", metavar="PATH", help="write a CSV here (default: stdout)")
    predict.add_argument("--version", help="use this registry version instead of current")
    predict.set_defaults(func=cmd_predict)


def _add_serve(sub, common: argparse.ArgumentParser) -> None:
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


def _add_report(sub, common: argparse.ArgumentParser) -> None:
    report = sub.add_parser("report", parents=[common], help="PNG chart of the metric of every version",
                            description="Two panels: each trained version's metric next to the "
                                        "champion's on the same holdout rows (what its gate compared; "
                                        "deployed and rejected told apart, with the threshold), and the "
                                        "deployed model's live metric on each batch's new rows, with the "
                                        "policy's bar and the moments a new version took over.")
    report.add_argument("--out", default=None, metavar="PATH", help="default: HOME/report.png")
    report.add_argument("--metric", help="another metric than the gate's")
    report.set_defaults(func=cmd_report)


def _add_sample(sub, common: argparse.ArgumentParser) -> None:
    sample = sub.add_parser("sample", parents=[common], help="write synthetic CSV batches",
                            description="Synthetic data matching the default schema, for demos, "
                                        "tests and benchmarks.")
    sample.add_argument("--out", required=True, metavar="DIR", help="folder to write into (e.g. var/inbox)")
    sample.add_argument("--files", type=int, default=1, metavar="K")
    sample.add_argument("--rows", type=int, default=5000, metavar="N", help="rows per file")
    sample.add_argument("--seed", type=int, default=0, metavar="S")
    sample.add_argument("--label-noise", type=float, default=0.0, metavar="P",
                        help="share of labels replaced by noise; 0.5 leaves nothing to learn")
    sample.add_argument("--task", choices=["classification", "regression"], default="classification")
    sample.add_argument("--covariate-shift", type=float, default=0.0, metavar="S",
                        help="covariate shift: move the distribution of income by S standard deviations "
                             "(log scale); the relation between features and label stays the same")
    sample.add_argument("--concept-shift", type=float, default=0.0, metavar="C",
                        help="concept shift: change the relation between features and label, from 0 "
                             "(unchanged) through 0.5 (no relation left) to 1 (every feature acts the "
                             "other way); the features' distribution stays the same")
    sample.set_defaults(func=cmd_sample)


def _add_requeue(sub, common: argparse.ArgumentParser) -> None:
    requeue = sub.add_parser("requeue", parents=[common], help="put a fixed quarantined file back in the inbox")
    requeue.add_argument("name", help="its name in quarantine/")
    requeue.set_defaults(func=cmd_requeue)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_format, args.verbose)
    try:
        return int(args.func(args) or 0)
    except RetrainError as exc:
        print(f"retrain: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        # Everything is closed by now; the interpreter's last garbage collection over the
        # objects of pandas, scikit-learn, Dask and Prefect would only add about half a
        # second to every command's exit.
        gc.freeze()


# -- settings and logging --------------------------------------------------------------------

def _adapt_bounds(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    try:
        bounds = int(low), int(high)
    except ValueError:
        bounds = None
    if not sep or bounds is None or not 0 <= bounds[0] <= bounds[1] or bounds[1] < 1:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX with 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return bounds


def cluster_overrides(args: argparse.Namespace) -> dict[str, Any]:
    adapt = getattr(args, "adapt", None)
    return {
        "dask.address": args.dask_address,
        "dask.n_workers": args.workers,
        "dask.threads_per_worker": args.threads_per_worker,
        "dask.memory_limit": args.memory_limit,
        "dask.adaptive_minimum": adapt[0] if adapt else None,
        "dask.adaptive_maximum": adapt[1] if adapt else None,
    }


def load(args: argparse.Namespace, **overrides: Any):
    from service.config import load_settings

    return load_settings(config_path=args.config, home=args.home,
                         overrides=overrides)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(fmt: str, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("retrain")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def existing_home(settings) -> Path:
    home = Path(settings.home)
    if not (home / "state").is_dir():
        raise RetrainError(f"no retrain home at {home.resolve()}; start `retrain watch` there first, "
                           "or pass --home")
    return home


# -- commands ----------------------------------------------------------------------------------

def cmd_watch(args: argparse.Namespace) -> int:
    settings = load(args, **cluster_overrides(args))
    from service.runtime.api import prepare_environment

    prepare_environment(Path(settings.home))
    from service.runner.daemon import RetrainDaemon

    return RetrainDaemon(settings).serve()


def cmd_run(args: argparse.Namespace) -> int:
    settings = load(args, **cluster_overrides(args))
    sources = [Path(f) for f in args.files]
    for source in sources:
        if not source.is_file():
            raise RetrainError(f"{source}: no such file; give paths of CSV files")
    from service.intake.inbox import Home
    from service.runner.handoff import (
        ask_daemon_to_retrain,
        daemon_holds,
        hand_to_daemon,
    )

    if daemon_holds(Path(settings.home)):
        home = Home(Path(settings.home))
        return hand_to_daemon(sources, home) if sources else ask_daemon_to_retrain(home)
    from service.runtime.api import prepare_environment

    prepare_environment(Path(settings.home))
    from service.intake.ledger import FileState
    from service.runner.runs import (
        OPERATOR,
        batch_start,
        build_request,
        record_cancelled,
        record_result,
        window_start,
    )
    from service.runner.session import RunSession

    log = logging.getLogger("retrain.run")
    with ExitStack() as resources:
        session = RunSession(settings, "retrain run", resources)
        ledger = session.open_home()
        waiting = ledger.files(FileState.QUEUED)
        if waiting:
            log.info("%d file(s) from before wait in the queue for `retrain watch`", len(waiting))
        # Reach the scheduler and the API before taking the files: when either does not
        # answer, the files are left alone.
        address = session.start_runtime(in_process=settings.dask.run_in_process)
        from service.runner.flowruns import RunStop, execute
        from service.runtime import events

        claimed = claim_copies(sources, session.home, ledger, settings, str(session.deployment.id))
        if sources and not claimed:
            raise RetrainError("no file to run on; see the lines above")
        if sources:
            run = ledger.start_run(claimed, {"trigger": "files"})
            start = batch_start(session.deployment, run, ledger, "retrain run")
        else:  # no file: a run on the window, asked for by an operator
            run = ledger.start_run([], {"trigger": "operator", "requested_by": OPERATOR})
            start = window_start(session.deployment, run, "operator", reason=OPERATOR)
        request = build_request(settings, session.home, ledger, run, requested_by=None if sources else OPERATOR)
        before, stop = session.registry.current_version(), RunStop()
        # The flow run's id is recorded as soon as it is opened: a cut run can be marked Crashed.
        record_flow_run_id = functools.partial(ledger.set_flow_run_id, run.id)
        with show_progress(log):
            result = execute(start, request, address, stop, record_flow_run_id)
        if result.cancelled:
            run = record_cancelled(ledger, session.home, session.registry, run, result, before)
        else:
            run = record_result(ledger, session.home, run, result, settings)
        events.run_ended(ledger, session.registry, run.id, str(session.deployment.id), result.outcome, settings)
        return report_run(ledger, run, result)


@contextmanager
def show_progress(log: logging.Logger) -> Iterator[None]:
    """Progress of the run per stage: bars on a terminal, plain log lines otherwise."""
    from flows.reporting import progress

    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        bars = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=Console(stderr=True))
        tasks: dict[str, Any] = {}

        def listener(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
            bars.update(tasks[stage], completed=done, total=total)
    else:
        bars = nullcontext()

        def listener(stage: str, done: int, total: int) -> None:
            if stage == "preprocess":
                log.info("preprocess: %d/%d partitions", done, total)
            elif done == total:
                log.info("%s: done", stage)

    with bars:
        progress.add_listener(listener)
        try:
            yield
        finally:
            progress.remove_listener(listener)


def claim_copies(sources: list[Path], home, ledger, settings, deployment_id: str) -> list[int]:
    """Copy each source into the inbox and claim it like an inbox file; returns the ids of
    the files queued for this run (duplicates and rejected files are reported)."""
    from core.files import write_atomically
    from service.intake.inbox import claim_file
    from service.intake.ledger import FileState
    from service.runtime import events

    claimed = []
    for source in sources:
        # The copy appears under its real name complete, like a well-behaved inbox writer.
        with open(source, "rb") as original:
            target = write_atomically(home.inbox / source.name,
                                      lambda copy: shutil.copyfileobj(original, copy))
        record = claim_file(ledger, home, target, time.time(), settings.watcher.max_file_bytes)
        if record is None:
            continue
        events.file_event(record, deployment_id)
        if record.state == FileState.QUEUED:
            claimed.append(record.id)
        elif record.state == FileState.DUPLICATE:
            print(f"retrain: {source.name}: same content as a file already used; not trained on again",
                  file=sys.stderr)
        else:
            print(f"retrain: {source.name}: {(record.error or {}).get('reason', record.state)}",
                  file=sys.stderr)
    return claimed


def report_run(ledger, run, result) -> int:
    from service.intake.ledger import FileState
    from service.runner.runs import outcome_line

    if result.cancelled:
        print(f"retrain: error: run {run.id} was cancelled in Prefect; its files are in quarantine",
              file=sys.stderr)
        return 1
    if result.outcome is None:
        print(f"retrain: error: run {run.id} failed: {result.error}", file=sys.stderr)
        return 1
    outcome = result.outcome
    quarantined = 0
    for f in outcome.files:
        if not f.accepted:
            quarantined += 1
            where = ledger.get(f.file_id).path
            print(f"retrain: error: {f.rejection.reason if f.rejection else 'rejected'} "
                  f"(quarantined as {where})", file=sys.stderr)
    if outcome.decision == "no_valid_data":
        if not outcome.files:  # a run on the window alone: nothing else says why
            print(f"retrain: error: run {run.id}: {outcome.reason}", file=sys.stderr)
        return 1
    print(outcome_line(run.id, outcome))
    states = {ledger.get(f.file_id).state for f in outcome.files}
    return 3 if quarantined or FileState.QUARANTINED in states else 0


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause or resume the deployment through the API the daemon reports to (its embedded
    one while it runs, or PREFECT_API_URL)."""
    from service.runtime.deployment import FLOW_NAME, deployment_name, set_paused
    from service.status import daemon_status

    settings = load(args)
    home = existing_home(settings)
    api = daemon_status(home)["prefect_api_url"] or os.environ.get("PREFECT_API_URL")
    if not api:
        raise RetrainError("no Prefect API to ask: the daemon is not running and PREFECT_API_URL is not set; "
                           "start `retrain watch` (its embedded API holds the deployment) or set PREFECT_API_URL")
    from service.runtime.api import prepare_environment

    prepare_environment(home)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    name = f"{FLOW_NAME}/{deployment_name(home)}"
    with temporary_settings(updates={PREFECT_API_URL: api}):
        was = set_paused(name, args.pause)
    if args.pause:
        print(f"{name} {'was already' if was else 'is now'} paused: the daemon takes files into its queue and "
              "starts no run until `retrain resume`")
    else:
        print(f"{name} {'is running again' if was else 'was not paused'}: the daemon starts runs")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from service.status import collect_status, print_status, watch_status

    settings = load(args)
    home = existing_home(settings)
    if args.watch is not None:
        if args.json or args.watch <= 0:
            raise RetrainError("--watch takes a positive number of seconds and does not combine "
                               "with --json; poll `retrain status --json` instead")
        watch_status(lambda: collect_status(home, settings, runs=args.runs), args.watch)
        return 0
    status = collect_status(home, settings, runs=args.runs)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print_status(status)
    return 0


def _registry(args: argparse.Namespace):
    from flows.models.registry import ModelRegistry

    settings = load(args)
    return settings, ModelRegistry(existing_home(settings) / "registry")


def cmd_models_list(args: argparse.Namespace) -> int:
    from service.status import print_models

    settings, registry = _registry(args)
    versions = _history(settings, registry)
    current = registry.current_version()
    if args.json:
        print(json.dumps({"current": current, "versions": [v.model_dump() for v in versions]},
                         indent=2, default=str))
    else:
        print_models(versions, current)
    return 0


def _history(settings, registry):
    """Every version ever trained: on disk, and removed by retention (from the ledger)."""
    from service.intake.inbox import Home
    from service.intake.ledger import Ledger
    from service.runner.retention import version_history

    ledger = Ledger(Home(settings.home).ledger_path, readonly=True)
    try:
        return version_history(registry, ledger)
    finally:
        ledger.close()


def cmd_models_show(args: argparse.Namespace) -> int:
    _, registry = _registry(args)
    version = registry.get(args.version)
    data = version.model_dump()
    data["current"] = registry.current_version() == version.version
    # A model search: every candidate's parameters and validation score, first.
    data = {"candidates": version.metadata.get("training", {}).get("candidates", []), **data}
    print(json.dumps(data, indent=2, default=str))
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from service.intake.inbox import Home
    from service.intake.ledger import Ledger

    settings, registry = _registry(args)
    old, new = registry.rollback_to(args.version)
    ledger = Ledger(Home(settings.home).ledger_path)
    try:
        ledger.record_event("rollback", {"from": old, "to": new, "by": "retrain models rollback"})
    finally:
        ledger.close()
    print(f"current: {old} -> {new}")
    from service.integrations.mlflow_export import export_to_mlflow

    export_to_mlflow(settings)  # the MLflow alias follows (attempted before the command exits)
    return 0


def cmd_models_diff(args: argparse.Namespace) -> int:
    from service.status import models_diff, print_models_diff

    _, registry = _registry(args)
    diff = models_diff(registry.get(args.a), registry.get(args.b))
    if args.json:
        print(json.dumps(diff, indent=2, default=str))
    else:
        print_models_diff(diff)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from core.errors import ModelNotFoundError
    from core.records import ResolvedSchema
    from flows.models.predict import predict_rows, read_rows

    settings, registry = _registry(args)
    version = registry.get(args.version) if args.version else registry.current()
    if version is None:
        raise ModelNotFoundError("no model is deployed yet; drop data into the inbox first")
    schema = ResolvedSchema.model_validate(version.metadata["schema"])
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


def cmd_sample(args: argparse.Namespace) -> int:
    from service.sample import write_samples

    if args.files < 1 or args.rows < 1:
        raise RetrainError("--files and --rows must be at least 1")
    if not 0.0 <= args.label_noise <= 1.0:
        raise RetrainError("--label-noise must be between 0 and 1")
    if args.covariate_shift < 0 or not 0.0 <= args.concept_shift <= 1.0:
        raise RetrainError("--covariate-shift must be at least 0 and --concept-shift between 0 and 1")
    paths = write_samples(Path(args.out), files=args.files, rows=args.rows, seed=args.seed,
                          label_noise=args.label_noise, task=args.task,
                          covariate_shift=args.covariate_shift, concept_shift=args.concept_shift)
    for path in paths:
        print(path)
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


def cmd_report(args: argparse.Namespace) -> int:
    from flows.reporting.report import write_report
    from service.status import live_history

    settings, registry = _registry(args)
    out = Path(args.out) if args.out else Path(settings.home) / "report.png"
    threshold = settings.evaluation.threshold if not args.metric else None
    write_report(_history(settings, registry), out, threshold, registry.current_version(), args.metric,
                 live=live_history(Path(settings.home), settings, args.metric))
    print(out)
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    from service.intake.inbox import Home, requeue
    from service.intake.ledger import Ledger

    settings = load(args)
    home = Home(existing_home(settings))
    ledger = Ledger(home.ledger_path)
    try:
        target = requeue(ledger, home, args.name)
    finally:
        ledger.close()
    print(f"{args.name} is back in the inbox as {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
