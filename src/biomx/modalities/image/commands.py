"""The image modality's own commands: `biomx deid` (DICOM de-identification) and `biomx audit`
(patient identifiers left in a run). Both live in `modalities/common/deid`."""

from __future__ import annotations

import argparse
from pathlib import Path

from biomx.argtypes import positive_int
from biomx.errors import BiomxError


def _cmd_deid(args: argparse.Namespace) -> None:
    from biomx.modalities.common.deid.files import deidentify_folder

    result = deidentify_folder(Path(args.input), Path(args.output), audit=args.audit, mapping=args.mapping,
                               shift_days=args.date_shift_days, keep=tuple(args.keep), rename=args.rename,
                               skip_errors=args.skip_errors, blank=tuple(args.blank))  # fmt: skip
    print(f"de-identified {result.written} files into {args.output} ({result.refused} refused, "
          f"{result.skipped} skipped); audit: {result.audit}"
          + (f"; mapping (keep it private): {args.mapping}" if args.mapping else ""))


def _cmd_audit(args: argparse.Namespace) -> None:
    from biomx.modalities.common.deid.scan import audit_run

    found = audit_run(Path(args.run), args.identifiers)
    if found:
        raise BiomxError(f"{args.run}: {found} patient identifier(s) found (listed above); remove them "
                         "from those files before sharing the run")  # fmt: skip
    print(f"{args.run}: no patient identifiers found")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deid", help="de-identify DICOM files (PS3.15 Annex E Basic Profile)")
    p.add_argument("input", help="a DICOM file or a folder of them (searched recursively)")
    p.add_argument("output", help="folder for the de-identified files (same relative paths)")
    p.add_argument("--mapping", type=Path, help="also write the re-identification mapping here "
                   "(owner-only, 0600); an existing one is continued (same pseudonyms and UIDs)")
    p.add_argument("--audit", type=Path, help="audit CSV (default OUTPUT/deid_audit.csv)")
    p.add_argument("--date-shift-days", type=positive_int, default=365,
                   help="each patient's dates move back by a secret 1..N days (default 365)")
    p.add_argument("--keep", nargs="+", default=[], metavar="KEYWORD",
                   help="attributes to keep as they are (e.g. PatientAge PatientSex)")
    p.add_argument("--rename", action="store_true",
                   help="name outputs <patient pseudonym>/<series>/<instance>.dcm, not as the inputs")
    p.add_argument("--blank", action="append", default=[], metavar="MODALITY[/MAKER]:X,Y,W,H",
                   help="blank this pixel rectangle (burned-in text) in the images of that modality "
                   "(and manufacturer); such files are written even with BurnedInAnnotation YES")
    p.add_argument("--skip-errors", action="store_true", help="skip files that are not DICOM")
    p.set_defaults(func=_cmd_deid)

    p = sub.add_parser("audit", help="look for patient identifiers in a run's files")
    p.add_argument("run", help="a run folder (runs/<name>)")
    p.add_argument("--identifiers", type=Path, help="a text file of more identifiers, one a line")
    p.set_defaults(func=_cmd_audit)
