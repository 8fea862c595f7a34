"""What every command shares: the common options, the cluster options, loading the
settings, and finding the home."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from core.errors import RetrainError

# The common options' defaults, filled in by ``parse_args`` when given neither before nor
# after the command. Not ``set_defaults``: the parsers share the options' actions, so a
# default set on one would be applied by the command's parser over a value given before it.
COMMON_DEFAULTS = {"config": None, "home": None, "log_format": "plain", "verbose": False}


def common_options() -> argparse.ArgumentParser:
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


def cluster_options() -> argparse.ArgumentParser:
    """Where the flow's tasks run; each flag overrides its [dask] setting."""
    cluster = argparse.ArgumentParser(add_help=False)
    group = cluster.add_argument_group("Dask cluster")
    group.add_argument("--dask-address", metavar="URL",
                       help="run tasks on this existing Dask scheduler (e.g. tcp://10.0.0.5:8786)")
    group.add_argument("--workers", type=int, metavar="N", help="local cluster: worker processes")
    group.add_argument("--threads-per-worker", type=int, metavar="N", help="local cluster: threads per worker")
    group.add_argument("--memory-limit", metavar="SIZE",
                       help="local cluster: memory per worker, e.g. 4GiB (default: auto, a share of RAM)")
    group.add_argument("--adapt", metavar="MIN:MAX", type=adapt_bounds,
                       help="local cluster: scale adaptively between MIN and MAX workers")
    return cluster


def adapt_bounds(text: str) -> tuple[int, int]:
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


def existing_home(settings):
    """The home of ``settings``, once a retrain process has set it up."""
    from service.intake.home import Home

    home = Home(Path(settings.home))
    if not home.exists():
        raise RetrainError(f"no retrain home at {home.root.resolve()}; start `retrain watch` there first, "
                           "or pass --home")
    return home
