"""`biomx deid IN OUT`: every DICOM file under IN de-identified into OUT, an audit CSV of what
changed per file (keywords, never values) and, only when asked, a mapping file (the secret, the
pseudonyms, date offsets and UID pairs: it re-identifies, so it is written owner-only).

Output files keep their path relative to IN (so a folder-per-class layout and a manifest still
match), or with `rename` take pseudonymous names (<patient pseudonym>/<series>/<instance>.dcm)
for inputs whose folder or file names carry identifiers.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.datadict import keyword_dict
from pydicom.errors import InvalidDicomError

from biomx.engine.checkpoint import atomic_write_bytes
from biomx.errors import BiomxError, DataError
from biomx.modalities.common.deid.dataset import Changes, Deidentifier
from biomx.modalities.common.deid.pixels import BlankRule, blank_regions, unmarked_text_risk
from biomx.modalities.common.deid.scan import patient_values
from biomx.runs import write_csv

_COLUMNS = ("n", "output", "status", "removed", "emptied", "replaced", "remapped", "shifted", "blanked")


@dataclass
class DeidResult:
    written: int
    refused: int
    skipped: int
    audit: Path
    flagged: int = 0  # written with accept_unmarked although they may carry burned-in text


def deidentify_folder(src: Path, out: Path, *, audit: Path | None = None, mapping: Path | None = None,
                      shift_days: int = 365, keep: tuple[str, ...] = (), rename: bool = False,
                      skip_errors: bool = False, blank: tuple[str | BlankRule, ...] = (),
                      accept_unmarked: bool = False, identifiers: tuple[str, ...] = (), echo=print) -> DeidResult:  # fmt: skip
    """De-identify every file under `src` (a folder, or one file) into `out`.

    Files are taken in sorted relative-path order; `n` in the audit is that position. A file
    with BurnedInAnnotation YES is refused (not written, listed as refused): text in the pixels
    is beyond what a header profile removes, unless a `blank` rule
    (MODALITY[/MANUFACTURER]:X,Y,W,H, `pixels.py`) matched it and blanked that region. So is an
    image of a kind that often carries such text (US, XA, RF, secondary capture, ...:
    `pixels.unmarked_text_risk`) without the attribute, unless a blank rule matched it or
    `accept_unmarked` (then it is written and flagged in the audit). A file that still holds one
    of `identifiers` after the profile is refused too.
    """
    src, out = Path(src), Path(out)
    files = _inputs(src)
    rules = tuple(rule if isinstance(rule, BlankRule) else BlankRule.parse(rule) for rule in blank)
    needles = tuple(dict.fromkeys(v.strip().lower().encode() for v in identifiers if v.strip()))
    if out.resolve() == src.resolve() or (src.is_dir() and src.resolve() in out.resolve().parents):
        raise BiomxError(f"{out}: the output folder must be outside the input {src}; choose another folder")
    if mapping is not None and out.resolve() in Path(mapping).resolve().parents:
        raise BiomxError(f"--mapping {mapping}: it re-identifies the output, so it must not sit inside "
                         f"{out} (which is meant to be shared); put it elsewhere")  # fmt: skip
    if shift_days < 1:
        raise BiomxError(f"--date-shift-days: must be at least 1; got {shift_days}")
    _check_keywords(keep)
    deid = Deidentifier(secret=_secret(mapping), shift_days=shift_days, keep=frozenset(keep))
    _load_mapping(mapping, deid)
    rows: dict[str, list] = {c: [] for c in _COLUMNS}
    counts = {"written": 0, "refused": 0, "skipped": 0, "flagged": 0}
    policy = _Policy(rules, accept_unmarked, needles, rename, skip_errors)
    for n, path in enumerate(files, 1):
        rel = path.relative_to(src) if src.is_dir() else Path(path.name)
        status, output, changes = _one(path, rel, out, deid, policy, echo, n)
        counts[status.split(":")[0]] += 1
        counts["flagged"] += status.startswith("written: flagged")
        _row(rows, n, output, status, changes)
    audit = Path(audit) if audit else out / "deid_audit.csv"
    write_csv(audit, rows)
    if mapping is not None:
        _write_mapping(mapping, deid, files, src)
    return DeidResult(counts["written"], counts["refused"], counts["skipped"], audit, counts["flagged"])


def _check_keywords(keep: tuple[str, ...]) -> None:
    for keyword in keep:
        if keyword not in keyword_dict:
            close = difflib.get_close_matches(keyword, list(keyword_dict), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise BiomxError(f"--keep: {keyword!r} is not a DICOM attribute keyword{hint}; "
                             "use keywords as pydicom spells them, e.g. PatientAge")  # fmt: skip


def _inputs(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise BiomxError(f"{src}: no such file or folder; give a DICOM file or a folder of them")
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise BiomxError(f"{src}: no files in this folder; give a folder of DICOM files")
    return files


@dataclass(frozen=True)
class _Policy:
    blank: tuple[BlankRule, ...]
    accept_unmarked: bool
    identifiers: tuple[bytes, ...]  # lowercased
    rename: bool
    skip_errors: bool


def _one(path: Path, rel: Path, out: Path, deid: Deidentifier, policy: _Policy, echo, n: int
         ) -> tuple[str, str, Changes | None]:  # fmt: skip
    skip_errors = policy.skip_errors
    try:
        ds = pydicom.dcmread(path, force=True)  # files without the preamble (raw streams) too
        if "SOPInstanceUID" not in ds:
            raise InvalidDicomError("no SOPInstanceUID")
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        line = f"{path}: not a readable DICOM file ({type(err).__name__})"
        if not skip_errors:
            raise DataError(f"{line}; remove it or pass --skip-errors") from None
        echo(f"skipped file {n}: {line}")
        return "skipped: not DICOM", "", None
    identifiers = patient_values(ds)
    try:
        blanked = blank_regions(ds, policy.blank)
        status = _burned_in(ds, blanked, policy.accept_unmarked)
        if status.startswith("refused"):
            echo(f"refused file {n} ({path}): {status.removeprefix('refused: ')}")
            return status, "", None
        changes = deid.apply(ds)
        changes.blanked.update(blanked)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError, OverflowError, RuntimeError) as err:
        # The error's text may quote a value: only its type is shown.
        line = f"{path}: cannot be de-identified ({type(err).__name__} in pydicom)"
        if not skip_errors:
            raise DataError(f"{line}; remove it or pass --skip-errors") from None
        echo(f"skipped file {n}: {line}")
        return "skipped: not writable", "", None
    left = _listed_left(buffer.getvalue(), policy.identifiers)
    if left:
        echo(f"refused file {n} ({path}): identifier {left} of the list is still in it after the profile")
        return f"refused: listed identifier {left} left", "", None
    if policy.rename:
        rel = _pseudonymous_name(ds, changes.pseudonym)
    else:
        rel, renamed = _without(rel, identifiers, changes.pseudonym)
        if renamed:
            changes.replaced.add("file path")
    target = out / rel
    atomic_write_bytes(target, buffer.getvalue())
    return status, str(target.relative_to(out)), changes


def _burned_in(ds: pydicom.Dataset, blanked: list[str], accept_unmarked: bool) -> str:
    """The file's status as far as text in its pixels goes: "written", "written: flagged ..." or
    "refused: ..."; a file a blank rule cleaned is marked BurnedInAnnotation NO."""
    marked = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if blanked:
        ds.BurnedInAnnotation = "NO"  # the site's rule for this make says where the text is
        return "written"
    if marked == "YES":
        return "refused: BurnedInAnnotation YES"
    risk = unmarked_text_risk(ds)
    if not risk:
        return "written"
    if accept_unmarked:
        return f"written: flagged, {risk} without BurnedInAnnotation (accepted unchecked)"
    return f"refused: {risk} without BurnedInAnnotation (--accept-unmarked, or a blank rule)"


def _listed_left(data: bytes, identifiers: tuple[bytes, ...]) -> int:
    """The 1-based number of the first listed identifier still in `data` (0: none)."""
    lowered = data.lower() if identifiers else b""
    return next((n for n, value in enumerate(identifiers, 1) if value in lowered), 0)


def _without(rel: Path, identifiers: dict[str, str], pseudonym: str) -> tuple[Path, bool]:
    """`rel` with the patient's own name, name parts and IDs replaced by the pseudonym (exports
    often name folders or files after the patient: PACS exports, Doe_John/IM0001.dcm)."""
    if not identifiers:
        return rel, False
    alternatives = "|".join(re.escape(v) for v in sorted(identifiers, key=len, reverse=True))
    pattern = re.compile(f"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.IGNORECASE)
    parts = [pattern.sub(pseudonym, part) for part in rel.parts]
    return Path(*parts), parts != list(rel.parts)


def _pseudonymous_name(ds: pydicom.Dataset, pseudonym: str) -> Path:
    def short(uid: str) -> str:
        return hashlib.sha256(uid.encode()).hexdigest()[:12]

    return Path(pseudonym, short(str(ds.get("SeriesInstanceUID", ""))), short(str(ds.SOPInstanceUID)) + ".dcm")


def _row(rows: dict[str, list], n: int, output: str, status: str, changes: Changes | None) -> None:
    rows["n"].append(n)
    rows["output"].append(output)
    rows["status"].append(status)
    for name in _COLUMNS[3:]:
        rows[name].append(";".join(sorted(getattr(changes, name))) if changes else "")


def _secret(mapping: Path | None) -> bytes:
    """The mapping file's secret when one exists (a later batch of the same patients gets the same
    pseudonyms, offsets and UIDs); else a fresh one, kept in memory only."""
    if mapping is not None and Path(mapping).is_file():
        try:
            return bytes.fromhex(json.loads(Path(mapping).read_text())["secret"])
        except (ValueError, KeyError, TypeError) as err:
            raise BiomxError(f"{mapping}: not a biomx deid mapping file ({type(err).__name__}); "
                             "give a new path or the file an earlier `biomx deid --mapping` wrote") from None  # fmt: skip
    return secrets.token_bytes(32)


def _load_mapping(mapping: Path | None, deid: Deidentifier) -> None:
    if mapping is None or not Path(mapping).is_file():
        return
    data = json.loads(Path(mapping).read_text())
    deid.shift_days = int(data.get("date_shift_days", deid.shift_days))
    deid.patients.update(data.get("patients", {}))
    deid.uids.update(data.get("uids", {}))


def _write_mapping(mapping: Path, deid: Deidentifier, files: list[Path], src: Path) -> None:
    """Owner-only (0600) from the first byte: the temp file is made 0600 before it is filled."""
    data = {"secret": deid.secret.hex(), "date_shift_days": deid.shift_days, "patients": deid.patients,
            "uids": deid.uids, "inputs": {str(n): str(p) for n, p in enumerate(files, 1)}}  # fmt: skip
    text = json.dumps(data, indent=1, sort_keys=True)
    mapping = Path(mapping)
    mapping.parent.mkdir(parents=True, exist_ok=True)
    tmp = mapping.with_name(f".{mapping.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # the umask may have taken bits off, never added: this is exact
        os.replace(tmp, mapping)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
