"""The ``retrain`` command line: one module per group of commands, over ``base``.

Commands import what they need lazily: ``retrain status`` must answer in a fraction of a
second, without importing Prefect or Dask.
"""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Sequence

from core.errors import RetrainError
from service.cli import files, models, predictions, run, status
from service.cli.base import COMMON_DEFAULTS, cluster_options, common_options
from service.log import setup_logging


def build_parser() -> argparse.ArgumentParser:
    common, cluster = common_options(), cluster_options()
    parser = argparse.ArgumentParser(
        prog="retrain", parents=[common],
        description="Keep a model fresh: drop CSV files into the inbox; each batch is "
                    "preprocessed, trained, evaluated and deployed only when it wins.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # One function per command, in the order `retrain --help` lists them.
    run.add_run_commands(sub, common, cluster)
    for add in (status.add_status, status.add_pause, models.add_models, predictions.add_predict, files.add_sample,
                predictions.add_serve, models.add_report, files.add_requeue):
        add(sub, common)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv, namespace=argparse.Namespace(**COMMON_DEFAULTS))


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


if __name__ == "__main__":
    sys.exit(main())
