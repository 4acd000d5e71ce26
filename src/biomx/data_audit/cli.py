"""`biomx audit-data CONFIG`: argparse only at import (the `biomx` parser stays light); the
command imports what it runs. (`biomx audit` is another command: the de-identification audit.)"""

from __future__ import annotations

import argparse

from biomx.argtypes import positive_int

DEFAULT_NEAR_MAX = 20_000  # biomx.data_audit.inputs.DEFAULT_NEAR_MAX (not imported: --help stays light)


def _cmd_audit_data(args: argparse.Namespace) -> None:
    from biomx.data_audit.audit import audit_lines, summary_text
    from biomx.data_audit.run import run_audit
    from biomx.errors import BiomxError

    audit, path = run_audit(args.config, args.set, args.out, args.near_max)
    for line in audit_lines(audit):
        print(line)
    print(f"{summary_text(audit)}; wrote {path}")
    if args.strict and audit["summary"]["problem"]:
        raise BiomxError(f"audit-data --strict: {audit['summary']['problem']} problem(s) found (see above)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit-data", help="audit a config's data before training: labels, missing values, "
                       "patients, duplicates and near-duplicates across splits, outliers (docs/trust.md)")  # fmt: skip
    p.add_argument("config", help="experiment YAML whose data (as split) to audit")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.path=DIR (repeatable)")  # fmt: skip
    p.add_argument("--out", metavar="FILE", help="audit JSON to write (default: <output.dir>/data_audit-<name>.json)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a check finds a problem (default: exit 0)")
    p.add_argument("--near-max", type=positive_int, default=DEFAULT_NEAR_MAX, metavar="N",
                   help="samples compared for near duplicates; more are sampled (default: %(default)s)")  # fmt: skip
    p.set_defaults(func=_cmd_audit_data)
