"""`biomx drift RUN INPUTS...`: argparse only at import (the `biomx` parser stays light); the
command imports what it runs."""

from __future__ import annotations

import argparse

from biomx.argtypes import positive_int

DEFAULT_REFERENCE = 1000  # biomx.drift.run.DEFAULT_REFERENCE (not imported: --help stays light)


def _cmd_drift(args: argparse.Namespace) -> None:
    from biomx.drift.run import run_drift, verdict_lines
    from biomx.errors import BiomxError

    result, folder = run_drift(args.run, args.inputs, args.out, reference_size=args.reference_size, seed=args.seed,
                               alpha=args.alpha, permutations=args.permutations, skip_errors=args.skip_errors,
                               from_log=args.from_log)  # fmt: skip
    for line in verdict_lines(result):
        print(line)
    print(f"wrote {folder / 'drift.json'} and {folder / 'drift.md'}")
    if args.fail_on_drift and result["drift"]:
        raise BiomxError(f"drift --fail-on-drift: {result['verdict']}")


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drift", help="compare new inputs with a run's training data: input statistics, the "
                       "model's embeddings (MMD), its predicted labels; a verdict with p-values (docs/trust.md)")  # fmt: skip
    p.add_argument("run", help="run directory")
    p.add_argument("inputs", nargs="*", help="new inputs: files or folders, as `biomx predict RUN INPUTS` takes")
    p.add_argument("--from-log", metavar="FILE", help="compare what a server logged instead of inputs "
                   "(`biomx serve RUN --drift-log FILE`: input statistics and predictions, no embeddings)")
    p.add_argument("--out", metavar="DIR", help="where drift.json and drift.md go (default: RUN/drift/)")
    p.add_argument("--reference-size", type=positive_int, default=DEFAULT_REFERENCE, metavar="N",
                   help="training rows compared (a seeded sample of more; default: %(default)s)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and permutations (default: 0)")
    p.add_argument("--alpha", type=_alpha, default=0.05, help="significance level after Holm's correction "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--permutations", type=positive_int, default=500, metavar="B",
                   help="permutations of the MMD test (default: %(default)s)")  # fmt: skip
    p.add_argument("--skip-errors", action="store_true", help="leave out unreadable inputs instead of failing")
    p.add_argument("--fail-on-drift", action="store_true", help="exit 1 when drift is detected (default: exit 0)")
    p.set_defaults(func=_cmd_drift)
