"""One DICOM dataset through the Basic Profile (`profile.py`): what is removed, emptied, replaced,
remapped and shifted, recorded by attribute keyword only (never a value).

Every pseudonym, UID and date offset is an HMAC of the original under one secret, so the same
input gives the same output in one run (a series still stacks, a study still groups) and, with
the secret kept in a mapping file, in a later run too; without the secret nobody can recompute
or reverse them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from biomx.modalities.common.deid.profile import (
    DICOM_ROOT,
    DUMMY,
    EMPTY,
    KEEP,
    REMOVE,
    UID,
    action_for,
)

METHOD = "biomx deid: PS3.15 Annex E Basic Profile, dates shifted"  # LO: 64 characters at most
# PS3.16 CID 7050 codes of the profile and the options applied.
_METHOD_CODES = (("113100", "Basic Application Confidentiality Profile"),
                 ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))  # fmt: skip


@dataclass
class Changes:
    """The keywords one file lost or had changed (sorted, each once)."""

    removed: set[str] = field(default_factory=set)
    emptied: set[str] = field(default_factory=set)
    replaced: set[str] = field(default_factory=set)
    remapped: set[str] = field(default_factory=set)
    shifted: set[str] = field(default_factory=set)
    blanked: set[str] = field(default_factory=set)  # pixel regions "x,y,w,h" (pixels.py)
    pseudonym: str = ""


@dataclass
class Deidentifier:
    """De-identifies datasets under one secret; remembers what a mapping file would hold."""

    secret: bytes
    shift_days: int = 365  # dates move back by 1..shift_days days, the same for one patient
    keep: frozenset[str] = frozenset()
    patients: dict[str, dict[str, object]] = field(default_factory=dict)
    uids: dict[str, str] = field(default_factory=dict)

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self.secret, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uid_for(self, uid: str) -> str:
        """A new UID under 2.25 (a UUID-derived root needs no registration): the same for the
        same input and secret."""
        if uid not in self.uids:
            self.uids[uid] = "2.25." + str(int.from_bytes(self._digest("uid", uid)[:16], "big"))
        return self.uids[uid]

    def patient(self, key: str) -> tuple[str, int]:
        """(pseudonym, days to shift back) for the patient whose PatientID (or name) is `key`."""
        if key not in self.patients:
            pseudonym = "ANON-" + self._digest("patient", key).hex()[:12].upper()
            days = 1 + int.from_bytes(self._digest("days", key)[:8], "big") % max(self.shift_days, 1)
            self.patients[key] = {"pseudonym": pseudonym, "shift_days": -days}
        entry = self.patients[key]
        return str(entry["pseudonym"]), -int(entry["shift_days"])  # type: ignore[call-overload]

    def apply(self, ds: Dataset) -> Changes:
        """De-identify `ds` in place (its file meta rebuilt) and say what changed."""
        key = str(ds.get("PatientID", "") or ds.get("PatientName", "") or "")
        pseudonym, days = self.patient(key)
        changes = Changes(pseudonym=pseudonym)
        self._clean(ds, pseudonym, days, changes)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        ds.DeidentificationMethodCodeSequence = Sequence([_code(v, m) for v, m in _METHOD_CODES])
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = _transfer_syntax(ds)
        ds.file_meta = meta
        ds.preamble = b"\0" * 128  # the preamble is free bytes: anything may sit there
        return changes

    def _clean(self, ds: Dataset, pseudonym: str, days: int, changes: Changes) -> None:
        for elem in list(ds):
            self._element(ds, elem, pseudonym, days, changes)

    def _element(self, ds: Dataset, elem: DataElement, pseudonym: str, days: int, changes: Changes) -> None:
        keyword = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.tag.is_private or _curve_or_overlay_text(elem.tag.group, elem.tag.element):
            del ds[elem.tag]
            changes.removed.add("private tags" if elem.tag.is_private else keyword)
            return
        if keyword in self.keep:
            return
        action = action_for(keyword)
        if action == REMOVE:
            del ds[elem.tag]
            changes.removed.add(keyword)
        elif action == EMPTY or (action is None and elem.VR == "PN"):
            if elem.VR == "SQ":
                elem.value = Sequence()
            elif not elem.is_empty:
                elem.value = ""
            changes.emptied.add(keyword)
        elif action == DUMMY:
            elem.value = pseudonym
            changes.replaced.add(keyword)
        elif elem.VR == "SQ":
            for item in elem.value:
                self._clean(item, pseudonym, days, changes)
        elif elem.VR == "UI" and (action == UID or action is None) and not elem.is_empty:
            self._remap(elem, changes)
        elif elem.VR in ("DA", "DT") and action is None and not elem.is_empty:
            elem.value = _shift(elem.value, elem.VR, days)
            changes.shifted.add(keyword)
        elif action not in (None, KEEP, UID):
            raise AssertionError(f"unknown profile action {action!r} for {keyword}")

    def _remap(self, elem: DataElement, changes: Changes) -> None:
        values = elem.value if elem.VM > 1 else [elem.value]
        new = [str(v) if str(v).startswith(DICOM_ROOT) else self.uid_for(str(v)) for v in values]
        if new != [str(v) for v in values]:
            elem.value = new if elem.VM > 1 else new[0]
            changes.remapped.add(elem.keyword)


def _transfer_syntax(ds: Dataset) -> str:
    """The file's transfer syntax; for a raw stream without file meta, the encoding it was read in."""
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax:
        return syntax
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _curve_or_overlay_text(group: int, element: int) -> bool:
    """Curve data (group 50xx) and overlay data and comments (60xx,3000 and 60xx,4000): Annex E X."""
    return (group & 0xFF00) == 0x5000 or ((group & 0xFF00) == 0x6000 and element in (0x3000, 0x4000))


def _shift(value: object, vr: str, days: int) -> object:
    """A DA (YYYYMMDD) or DT (YYYYMMDD...) value `days` earlier; a multi-valued element each.
    A value that is not a date is emptied: it cannot be shifted and may still identify."""
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        return [_shift(v, vr, days) for v in value]
    text = str(value)
    try:
        day = dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    return (day - dt.timedelta(days=days)).strftime("%Y%m%d") + (text[8:] if vr == "DT" else "")


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item
