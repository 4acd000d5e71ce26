"""`biomx audit RUN`: look through every text file of a run for patient identifiers.

The identifiers are read at audit time from the DICOM files the run's split.csv names (patient
tags: name, name parts, IDs, birth date, accession number...), from the input paths themselves
(whatever in a path matches the patient-name pattern: a DICOM-style `Doe^Jane` by default, or the
site's own, e.g. `[A-Z]+_[A-Z]+` for DOE_JANE folders; inputs of any format, DICOM or not) plus a
user list; a finding is printed as `file:line: <what> of <input N>` (N: the row in split.csv),
never the value itself.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from biomx.errors import BiomxError

PATIENT_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames",
                "PatientBirthName", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers",
                "AccessionNumber", "MedicalRecordLocator")  # fmt: skip
_MIN_LENGTH = 3  # shorter values (a sex "M", an ID "1") would match everywhere
NAME_PATTERN = r"[A-Za-z][A-Za-z'-]*\^[A-Za-z][A-Za-z'-]*"  # a DICOM person name: Family^Given
_BINARY = (".safetensors", ".pt", ".onnx", ".png", ".jpg", ".jpeg", ".npz", ".npy", ".gz", ".zip")


def audit_run(run: Path | str, identifiers: Path | str | None = None, echo: Callable[[str], None] = print,
              name_pattern: str = NAME_PATTERN) -> int:  # fmt: skip
    """Print each finding and return how many there are (0: clean)."""
    run = Path(run)
    if not (run / "split.csv").is_file():
        raise BiomxError(f"{run}: no split.csv here; give a run folder (runs/<name>)")
    try:
        compiled = re.compile(name_pattern)
    except re.error as err:
        raise BiomxError(f"--name-pattern: {name_pattern!r} is not a regular expression ({err})") from None
    ids = _input_ids(run)
    needles = _dicom_identifiers(run, ids)
    for value, what in _path_names(ids, compiled).items():
        needles.setdefault(value, what)
    if identifiers is not None:
        needles.update(_listed(Path(identifiers)))
    if not needles:
        echo(f"{run}: no identifiers to look for (no DICOM patient tags in its inputs, no input path "
             "matching the name pattern, no list)")
        return 0
    # Whole tokens only: a 3-letter surname inside base64 (an image embedded in report.html) or
    # an ID inside a longer number is not a finding.
    alternatives = "|".join(re.escape(v) for v in sorted(needles, key=len, reverse=True))
    pattern = re.compile(f"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.IGNORECASE)
    lowered = {v.lower(): what for v, what in needles.items()}
    found = 0
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        for number, line in _text_lines(path):
            for match in pattern.finditer(line):
                echo(f"{path.relative_to(run)}:{number}: {lowered[match.group(0).lower()]}")
                found += 1
    return found


def _input_ids(run: Path) -> list[str]:
    with open(run / "split.csv", newline="") as f:
        return [row.get("id", "") or "" for row in csv.DictReader(f)]


def _path_names(ids: list[str], pattern: re.Pattern) -> dict[str, str]:
    """value -> 'name pattern in the path of input N' for what in an input path looks like a name."""
    found: dict[str, str] = {}
    for n, sample in enumerate(ids, 1):
        for match in pattern.finditer(sample):
            if len(match.group(0)) >= _MIN_LENGTH:
                found.setdefault(match.group(0), f"name pattern in the path of input {n}")
    return found


def _dicom_identifiers(run: Path, ids: list[str]) -> dict[str, str]:
    """value -> '<tag> of input N' for the patient tags of every DICOM input the run names."""
    root = _data_root(run)
    found: dict[str, str] = {}
    for n, sample in enumerate(ids, 1):
        path = Path(sample) if Path(sample).is_absolute() or root is None else root / sample
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # not a DICOM file (or gone): nothing of its header to look for
        for value, tag in patient_values(ds).items():
            found.setdefault(value, f"{tag} of input {n}")
    return found


def patient_values(ds: pydicom.Dataset) -> dict[str, str]:
    """value -> tag keyword for the patient tags of one DICOM header (names also by parts)."""
    found: dict[str, str] = {}
    for tag in PATIENT_TAGS:
        for value in _values(ds.get(tag), tag):
            found.setdefault(value, tag)
    return found


def _data_root(run: Path) -> Path | None:
    try:
        path = json.loads((run / "data.json").read_text()).get("path")
    except (OSError, ValueError):
        return None
    if not path:
        return None
    root = Path(path)
    return root if root.is_dir() else root.parent


def _values(value: object, tag: str) -> list[str]:
    """The strings to look for: each value, and for a name its parts (Doe^John: Doe, John)."""
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    out = []
    for item in items:
        text = str(item).strip()
        out.append(text)
        if "Name" in tag:
            out += [part.strip() for part in re.split(r"[\^=]", text)]
    return [v for v in dict.fromkeys(out) if len(v) >= _MIN_LENGTH]


def _listed(path: Path) -> dict[str, str]:
    """An identifier list: one string a line; # starts a comment line."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise BiomxError(f"{path}: cannot read the identifier list ({type(err).__name__}); "
                         "give a text file with one identifier a line") from None  # fmt: skip
    values = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return {v: f"identifier {n} of {path.name}" for n, v in enumerate(values, 1) if len(v) >= _MIN_LENGTH}


def _text_lines(path: Path):
    """(line number, text) of a text file; binary files (weights, images) are skipped."""
    if path.name.lower().endswith(_BINARY):
        return
    try:
        data = path.read_bytes()
    except OSError:
        return
    if b"\0" in data[:8192]:
        return
    text = data.decode("utf-8", errors="replace")
    yield from enumerate(text.splitlines(), 1)
