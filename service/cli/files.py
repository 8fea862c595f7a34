"""``retrain sample`` (synthetic batches) and ``retrain requeue`` (a fixed quarantined file
back into the inbox)."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import RetrainError
from service.cli.base import existing_home, load


def add_sample(sub, common: argparse.ArgumentParser) -> None:
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


def add_requeue(sub, common: argparse.ArgumentParser) -> None:
    requeue = sub.add_parser("requeue", parents=[common], help="put a fixed quarantined file back in the inbox")
    requeue.add_argument("name", help="its name in quarantine/")
    requeue.set_defaults(func=cmd_requeue)


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


def cmd_requeue(args: argparse.Namespace) -> int:
    from service.intake.inbox import requeue
    from service.intake.ledger import Ledger

    settings = load(args)
    home = existing_home(settings)
    with Ledger(home.ledger_path) as ledger:
        target = requeue(ledger, home, args.name)
    print(f"{args.name} is back in the inbox as {target}")
    return 0
