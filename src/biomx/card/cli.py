"""`biomx card RUN`: (re)write a run's model card. Argparse only at import (the `biomx` parser is
built without torch); the command imports what it runs."""

from __future__ import annotations

import argparse


def _cmd_card(args: argparse.Namespace) -> None:
    from biomx.card.write import write_model_card

    md, _ = write_model_card(args.run)
    print(f"model card: {md}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="(re)write a run's model card: model_card.md and model_card.json")
    p.add_argument("run", help="run directory (written by `biomx train`)")
    p.set_defaults(func=_cmd_card)
