"""`biomx tune CONFIG`: the command line of biomx.tune (docs/tuning.md)."""

from __future__ import annotations

import argparse


def _cmd_tune(args: argparse.Namespace) -> None:
    from biomx.tune.search import tune

    tune(args.config, args.set, trials=args.trials, workers=args.workers, worker=args.worker)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Adds `biomx tune`."""
    p = sub.add_parser("tune", help="search hyperparameters (the config's tune section; Optuna), resumable")
    p.add_argument("config", help="experiment YAML with a tune section (see docs/tuning.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")  # fmt: skip
    p.add_argument("--trials", type=_positive, metavar="N", help="finished trials wanted (default: tune.trials)")
    p.add_argument("--workers", type=_positive, default=1, metavar="N",
                   help="processes sharing the study on this machine (default: %(default)s)")  # fmt: skip
    p.add_argument("--worker", action="store_true",
                   help="run trials only, no recovery or summary (what --workers starts)")  # fmt: skip
    p.set_defaults(func=_cmd_tune)
