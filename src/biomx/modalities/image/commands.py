"""The image modality's own commands: `biomx deid` (DICOM de-identification) and `biomx audit`
(patient identifiers left in a run). Both live in `modalities/common/deid`."""

from __future__ import annotations

import argparse
from pathlib import Path

from biomx.argtypes import positive_int
from biomx.errors import BiomxError


def _cmd_deid(args: argparse.Namespace) -> None:
    from biomx.modalities.common.deid.config import run_deid

    cfg = _deid_config(args)
    result = run_deid(cfg)
    flagged = f", {result.flagged} flagged: written unchecked for burned-in text" if result.flagged else ""
    print(f"de-identified {result.written} files into {cfg.output} ({result.refused} refused, "
          f"{result.skipped} skipped{flagged}); audit: {result.audit}"
          + (f"; mapping (keep it private): {cfg.mapping}" if cfg.mapping else ""))


_FLAGS = {"mapping": "--mapping", "audit": "--audit", "date_shift_days": "--date-shift-days", "keep": "--keep",
          "rename": "--rename", "blank": "--blank", "skip_errors": "--skip-errors",
          "accept_unmarked": "--accept-unmarked"}  # fmt: skip


def _deid_config(args: argparse.Namespace):
    """The config from `biomx deid CONFIG.yaml` / `--config FILE`, or from IN OUT and the flags."""
    from pydantic import ValidationError

    from biomx.config import format_validation_error
    from biomx.modalities.common.deid.config import BlankRuleConfig, DeidConfig, load_deid_config
    from biomx.modalities.common.deid.pixels import BlankRule

    path = args.config
    if path is None and args.output is None and str(args.input).lower().endswith((".yaml", ".yml")):
        path, args.input = args.input, None
    if path is not None:
        given = [flag for key, flag in _FLAGS.items() if getattr(args, key) not in (None, False, [])]
        if args.input is not None:
            given.insert(0, f"the input {args.input}" + (f" and output {args.output}" if args.output else ""))
        if given:
            raise BiomxError(f"{path}: a config file holds every option; put {', '.join(given)} into it instead")
        return load_deid_config(path)
    if args.input is None or args.output is None:
        raise BiomxError("biomx deid: give IN OUT (a DICOM folder and an output folder) or a config file "
                         "(biomx deid deid.yaml; see examples/deid.yaml)")  # fmt: skip
    rules = [BlankRule.parse(text) for text in args.blank]
    blank = [BlankRuleConfig(modality=r.modality, manufacturer=r.manufacturer, region=(r.x, r.y, r.width, r.height))
             for r in rules]  # fmt: skip
    try:
        return DeidConfig(input=Path(args.input), output=Path(args.output), audit=args.audit, mapping=args.mapping,
                          shift_days=args.date_shift_days or 365, keep=list(args.keep), rename=args.rename,
                          skip_errors=args.skip_errors, blank=blank, accept_unmarked=args.accept_unmarked)  # fmt: skip
    except ValidationError as err:
        raise BiomxError(f"biomx deid: {format_validation_error(err, DeidConfig)}") from None


def _cmd_audit(args: argparse.Namespace) -> None:
    from biomx.modalities.common.deid.scan import NAME_PATTERN, audit_run

    found = audit_run(Path(args.run), args.identifiers, name_pattern=args.name_pattern or NAME_PATTERN)
    if found:
        raise BiomxError(f"{args.run}: {found} patient identifier(s) found (listed above); remove them "
                         "from those files before sharing the run")  # fmt: skip
    print(f"{args.run}: no patient identifiers found")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deid", help="de-identify DICOM files (PS3.15 Annex E Basic Profile)",
                       description="biomx deid IN OUT [options], or biomx deid deid.yaml (examples/deid.yaml)")
    p.add_argument("input", nargs="?", help="a DICOM file or a folder of them (searched recursively), "
                   "or a deid YAML file holding every option")
    p.add_argument("output", nargs="?", help="folder for the de-identified files (same relative paths)")
    p.add_argument("--config", type=Path, help="a deid YAML file (instead of IN OUT and the options)")
    p.add_argument("--mapping", type=Path, help="also write the re-identification mapping here "
                   "(owner-only, 0600); an existing one is continued (same pseudonyms and UIDs)")
    p.add_argument("--audit", type=Path, help="audit CSV (default OUTPUT/deid_audit.csv)")
    p.add_argument("--date-shift-days", type=positive_int, default=None,
                   help="each patient's dates move back by a secret 1..N days (default 365)")
    p.add_argument("--keep", nargs="+", default=[], metavar="KEYWORD",
                   help="attributes to keep as they are (e.g. PatientAge PatientSex)")
    p.add_argument("--rename", action="store_true",
                   help="name outputs <patient pseudonym>/<series>/<instance>.dcm, not as the inputs")
    p.add_argument("--blank", action="append", default=[], metavar="MODALITY[/MAKER]:X,Y,W,H",
                   help="blank this pixel rectangle (burned-in text) in the images of that modality "
                   "(and manufacturer); such files are written even with BurnedInAnnotation YES")
    p.add_argument("--accept-unmarked", action="store_true",
                   help="write US, XA, RF, ES, XC, GM, OT and secondary-capture images that lack "
                   "BurnedInAnnotation (refused by default: such images often have text in the pixels); "
                   "they are flagged in the audit CSV")
    p.add_argument("--skip-errors", action="store_true", help="skip files that are not DICOM")
    p.set_defaults(func=_cmd_deid)

    p = sub.add_parser("audit", help="look for patient identifiers in a run's files")
    p.add_argument("run", help="a run folder (runs/<name>)")
    p.add_argument("--identifiers", type=Path, help="a text file of more identifiers, one a line")
    p.add_argument("--name-pattern", metavar="REGEX", help="what a patient name looks like in your input "
                   r"paths (default: DICOM style Family^Given); e.g. '[A-Z]+_[A-Z]+' for DOE_JANE folders")
    p.set_defaults(func=_cmd_audit)
