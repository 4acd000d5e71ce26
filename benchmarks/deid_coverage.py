"""How much of a DICOM header each de-identifier removes: biomx deid against dicognito and
pydicom's `deid`, on the same real files.

Input: every test file bundled with pydicom that is a real image (pixel data, a SOP Instance UID,
readable without `force`: CT, MR, CR, US, NM, RT dose, SEG, secondary captures, and a two-series
study from its DICOMDIR tests), plus a 4-slice series made from CT_small.dcm with identifiers
planted where a profile must look: inside sequences (a request's physician and accession, a
source-image reference with a person name) and in a private tag.

Per tool: files written, identifying values of each input still in its output's bytes (patient
names and their parts, IDs, birth and study dates, instance/series/study/frame UIDs, institution,
station, physician and operator names, device serials; values of 4+ characters), private tags
left, UIDs consistent across each series (one new Study and Series UID per input series, distinct
instances), geometry kept (the geometry attributes and the pixel bytes unchanged) and wall time.
Then the attribute lists: what biomx's profile acts on that each peer's does not, and the reverse.

The peers are benchmark peers, never biomx dependencies: install them into a throwaway venv,

    python -m venv /tmp/deid-peers && /tmp/deid-peers/bin/pip install dicognito deid
    .venv/bin/python benchmarks/deid_coverage.py [--peer-python /tmp/deid-peers/bin/python]
        [--json benchmarks/results/deid_coverage.json]

The script runs itself under the peer venv's Python (`--peer NAME IN OUT`) for each peer.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import pydicom
from pydicom.datadict import DicomDictionary, keyword_dict

GEOMETRY = ("Rows", "Columns", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness",
            "SpacingBetweenSlices", "RescaleSlope", "RescaleIntercept", "PhotometricInterpretation", "BitsStored",
            "NumberOfFrames", "SamplesPerPixel")  # fmt: skip
# What describes the acquisition (a model's input statistics depend on it); none of it identifies.
ACQUISITION = ("SOPClassUID", "Modality", "ImageType", "EchoTime", "RepetitionTime", "InversionTime", "FlipAngle",
               "KVP", "ExposureTime", "XRayTubeCurrent", "ConvolutionKernel", "MagneticFieldStrength")  # fmt: skip
# What counts as identifying, by category: every value of these attributes, anywhere in the header.
CATEGORIES = {
    "names": ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName"),
    "ids": ("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "MedicalRecordLocator"),
    "dates": ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"),
    "uids": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
             "ReferencedSOPInstanceUID"),  # fmt: skip
    "staff_and_site": ("InstitutionName", "InstitutionAddress", "StationName", "DeviceSerialNumber",
                       "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "RequestingPhysician",
                       "NameOfPhysiciansReadingStudy", "ContentCreatorName"),  # fmt: skip
}
PLANTED = ("Doe^Jane", "PAT-998877", "Welby^Marcus", "JFK IMAGING CENTER", "ACC-4455", "Ratched^Mildred")


# ---------------------------------------------------------------- the input set


def build_inputs(folder: Path) -> list[str]:
    """Copy pydicom's bundled real images into `folder` (flat names) and add the planted series."""
    from pydicom.data import get_testdata_files

    root = Path(pydicom.data.__file__).parent
    names = []
    for path in sorted(map(Path, get_testdata_files())):
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # noqa: BLE001 - not a clean DICOM file: not part of the set
            continue
        if "PixelData" not in ds or "SOPInstanceUID" not in ds or ds.get("BurnedInAnnotation") == "YES":
            continue
        name = str(path.relative_to(root)).replace("/", "__")
        shutil.copy(path, folder / name)
        names.append(name)
    for i in range(4):
        ds = _planted(pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.99.{i + 1}"
        ds.InstanceNumber, ds.ImagePositionPatient = i + 1, [-158.0, -179.0, -5.0 * i]
        ds.save_as(folder / f"planted_slice{i}.dcm")
        names.append(f"planted_slice{i}.dcm")
    return names


def _planted(ds: pydicom.Dataset) -> pydicom.Dataset:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds.PatientName, ds.PatientID, ds.InstitutionName, ds.ReferringPhysicianName = PLANTED[:2] + PLANTED[3:4] + PLANTED[2:3]
    request = Dataset()
    request.RequestingPhysician, request.AccessionNumber = PLANTED[2], PLANTED[4]
    ds.RequestAttributesSequence = Sequence([request])
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = ds.SOPClassUID, "1.2.3.4.5.6.7.8.9"
    source.ContentCreatorName = PLANTED[5]
    ds.SourceImageSequence = Sequence([source])
    ds.add_new(0x00291010, "LO", f"{PLANTED[0]} private note")
    return ds


# ---------------------------------------------------------------- the peers (run in their venv)


def run_peer(name: str, src: Path, out: Path) -> dict:
    """De-identify every file of `src` into `out` with a peer's default profile."""
    files = sorted(p for p in src.iterdir() if p.is_file())
    failed = []
    start = time.perf_counter()
    if name == "dicognito":
        from dicognito.anonymizer import Anonymizer

        anonymizer = Anonymizer()  # one for the whole set: consistent UIDs and one date offset
    else:
        from deid.dicom import replace_identifiers
        from deid.logger import bot

        bot.level = 0
    for path in files:
        try:
            if name == "dicognito":
                ds = pydicom.dcmread(path)
                anonymizer.anonymize(ds)
            else:  # its default recipe (deid.dicom), private tags removed (its documented option)
                (ds,) = replace_identifiers([str(path)], save=False, remove_private=True)
            ds.save_as(out / path.name)
        except Exception as err:  # noqa: BLE001 - a peer's failure on one file is a result
            failed.append(f"{path.name}: {type(err).__name__}")
    return {"wall_s": time.perf_counter() - start, "failed": failed, "version": _version(name)}


def peer_keywords(name: str) -> dict[str, list[str]]:
    """keyword -> what the peer's default profile does with it (standard attributes only)."""
    acts: dict[str, str] = {}
    if name == "dicognito":
        from dicognito.anonymizer import Anonymizer

        for line in Anonymizer().describe_actions().splitlines():
            found = re.match(r"\* (Remove|Replace) (all (\w\w) elements|(\w+))", line)
            if found and found.group(3):  # its UI rule skips class UIDs and the transfer syntax, as ours does
                keywords = [k for k in _by_vr(found.group(3)) if not k.endswith(("ClassUID", "TransferSyntaxUID"))]
                acts.update(dict.fromkeys(keywords, f"{found.group(1).lower()} ({found.group(3)})"))
            elif found:
                acts[found.group(4)] = found.group(1).lower()
    else:
        import deid

        recipe = Path(deid.__file__).parent / "data" / "deid.dicom"
        header = recipe.read_text().split("%header", 1)[1]
        for action, field in re.findall(r"^(REMOVE|BLANK|REPLACE|JITTER|ADD)\s+(\S+)", header, re.MULTILINE):
            acts.update(dict.fromkeys(_matching(field), action.lower()))
    return {k: v for k, v in sorted(acts.items())}  # type: ignore[misc]


def _by_vr(vr: str) -> list[str]:
    """Every standard keyword (retired ones too: a rule by VR acts on them as well) of one VR."""
    return [entry[4] for entry in DicomDictionary.values() if entry[0] == vr and entry[4]]


def _matching(field: str) -> list[str]:
    """deid's field expressions (endswith:, startswith:, contains:) over the standard keywords."""
    kind, _, text = field.rpartition(":")
    tests = {"endswith": str.endswith, "startswith": str.startswith, "contains": str.__contains__}
    if kind in tests:
        return [k for k in keyword_dict if tests[kind](k, text)]
    return [field] if field in keyword_dict else []


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


# ---------------------------------------------------------------- biomx (this venv)


def run_biomx(src: Path, out: Path, accept_unmarked: bool) -> dict:
    from biomx.modalities.common.deid import deidentify_folder

    start = time.perf_counter()
    result = deidentify_folder(src, out, audit=out.parent / f"{out.name}_audit.csv", accept_unmarked=accept_unmarked,
                               echo=lambda line: None, skip_errors=True)  # fmt: skip
    wall = time.perf_counter() - start
    import csv

    rows = list(csv.DictReader(open(result.audit)))
    names = sorted(p.name for p in src.iterdir() if p.is_file())
    refused = [f"{names[int(r['n']) - 1]}: {r['status']}" for r in rows if not r["status"].startswith("written")]
    from importlib.metadata import version

    outputs = {names[int(r["n"]) - 1]: r["output"] for r in rows if r["output"]}  # a name holding an ID is renamed
    return {"wall_s": wall, "failed": refused, "version": version("biomx"), "flagged": result.flagged,
            "outputs": outputs}  # fmt: skip


def biomx_keywords() -> dict[str, str]:
    from biomx.modalities.common.deid.profile import BASIC_PROFILE, KEEP

    acts = {k: {"X": "remove", "Z": "empty", "D": "replace", "U": "remap"}[v] for k, v in BASIC_PROFILE.items()
            if v != KEEP}  # fmt: skip
    for vr, what in (("PN", "empty (PN)"), ("DA", "shift (DA)"), ("DT", "shift (DT)"), ("UI", "remap (UI)")):
        for keyword in _by_vr(vr):
            if vr != "UI" or not keyword.endswith(("ClassUID", "TransferSyntaxUID")):
                acts.setdefault(keyword, what)
    return dict(sorted(acts.items()))


# ---------------------------------------------------------------- scoring


def _walk_values(ds: pydicom.Dataset, keywords: set[str]) -> list[str]:
    found = []

    def visit(dataset, elem):
        if elem.keyword in keywords and elem.VR != "SQ" and not elem.is_empty:
            values = elem.value if elem.VM > 1 else [elem.value]
            for value in values:
                text = str(value).strip()
                found.append(text)
                if elem.VR == "PN":
                    found.extend(part for part in re.split(r"[\^=]", text) if part)

    ds.walk(visit)
    return [v for v in dict.fromkeys(found) if len(v) >= 4]


def _private_count(ds: pydicom.Dataset) -> int:
    count = 0

    def visit(dataset, elem):
        nonlocal count
        count += elem.tag.is_private

    ds.walk(visit)
    return count


def score(src: Path, out: Path, names: list[str], outputs: dict[str, str] | None = None) -> dict:
    """Leaks, private tags, UID consistency and geometry of one tool's outputs (`outputs`: input
    name -> output path, default the same name)."""
    outputs = outputs if outputs is not None else {n: n for n in names if (out / n).is_file()}
    leaks = {c: 0 for c in CATEGORIES}
    leaked_files, private, kept, geometry_changed, series, left_in = set(), 0, 0, [], {}, {}
    acquisition_kept, acquisition_lost = 0, {}
    for name in names:
        if name not in outputs:
            continue
        target = out / outputs[name]
        before = pydicom.dcmread(src / name)
        raw = target.read_bytes()
        after = pydicom.dcmread(target, force=True)
        # A station named after its maker ("TOSHIBA" in TOSHIBA_MEC) is not a leak: every profile
        # keeps Manufacturer (Annex E does), so such values are not counted.
        maker = f"{before.get('Manufacturer', '')} {before.get('ManufacturerModelName', '')}"
        for category, keywords in CATEGORIES.items():
            for value in _walk_values(before, set(keywords)):
                if value.encode() in raw and value not in maker:
                    leaks[category] += 1
                    leaked_files.add(name)
                    for where in _holders(after, value):
                        left_in[where] = left_in.get(where, 0) + 1
        private += _private_count(after)
        same = all(str(before.get(k)) == str(after.get(k)) for k in GEOMETRY if k in before)
        same = same and before.get("PixelData") == after.get("PixelData")
        kept += same
        if not same:
            geometry_changed.append(name)
        lost = [k for k in ACQUISITION if k in before and str(before.get(k)) != str(after.get(k))]
        acquisition_kept += not lost
        for keyword in lost:
            acquisition_lost[keyword] = acquisition_lost.get(keyword, 0) + 1
        key = (str(before.get("StudyInstanceUID")), str(before.get("SeriesInstanceUID")))
        series.setdefault(key, []).append((str(after.get("StudyInstanceUID")), str(after.get("SeriesInstanceUID")),
                                           str(after.get("SOPInstanceUID")), str(before.SOPInstanceUID)))  # fmt: skip
    # A series is consistent when its files share one new Study and Series UID (not the old ones)
    # and its distinct old instances stay distinct (pydicom ships one image in several encodings,
    # with one SOP Instance UID: those map to one new UID).
    multi = [(key, files) for key, files in series.items() if len(files) > 1 and key[1] != "None"]
    consistent = sum(len({(f[0], f[1]) for f in files}) == 1 and len({f[2] for f in files}) == len({f[3] for f in files})
                     and files[0][1] not in ("None", key[1]) for key, files in multi)  # fmt: skip
    written = len(outputs)
    return {"written": written, "identifying_values_left": sum(leaks.values()), "left_by_category": leaks,
            "files_with_values_left": len(leaked_files), "private_tags_left": private,
            "series_consistent": f"{consistent}/{len(multi)}", "geometry_kept": f"{kept}/{written}",
            "geometry_changed": geometry_changed, "acquisition_kept": f"{acquisition_kept}/{written}",
            "acquisition_lost": dict(sorted(acquisition_lost.items())), "left_in": dict(sorted(left_in.items()))}  # fmt: skip


def _holders(ds: pydicom.Dataset, value: str) -> set[str]:
    """The attributes (or "private tag") of `ds` whose value holds `value`."""
    found: set[str] = set()

    def visit(dataset, elem):
        if elem.VR not in ("SQ", "OB", "OW", "UN") and value in str(elem.value):
            found.add("private tag" if elem.tag.is_private else elem.keyword or str(elem.tag))

    ds.walk(visit)
    if "file_meta" in ds.__dict__ or hasattr(ds, "file_meta"):
        ds.file_meta.walk(visit)
    return found or {"binary data"}


def compare_lists(ours: dict[str, str], theirs: dict[str, str]) -> dict:
    only_ours = sorted(set(ours) - set(theirs))
    only_theirs = sorted(set(theirs) - set(ours))
    return {"ours": len(ours), "theirs": len(theirs), "both": len(set(ours) & set(theirs)),
            "only_biomx": only_ours, "only_peer": only_theirs, "only_peer_kinds": _kinds(only_theirs),
            "only_biomx_kinds": _kinds(only_ours)}  # fmt: skip


def _kinds(keywords: list[str]) -> dict:
    """A list's make-up: times of day (TM), retired attributes, and the rest by name."""
    from pydicom.datadict import dictionary_is_retired, dictionary_VR

    kinds: dict = {"TM (times of day)": 0, "retired": 0, "other": []}
    for keyword in keywords:
        tag = keyword_dict.get(keyword)
        if tag is not None and dictionary_VR(tag) == "TM":
            kinds["TM (times of day)"] += 1
        elif tag is not None and dictionary_is_retired(tag):
            kinds["retired"] += 1
        else:
            kinds["other"].append(keyword)
    return kinds


# ---------------------------------------------------------------- main


def _peer_subprocess(python: str, *args: str) -> dict:
    done = subprocess.run([python, __file__, *args], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"peer run failed: {' '.join(args[:2])}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-python", default="/tmp/deid-peers/bin/python")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "deid_coverage.json")
    parser.add_argument("--peer", nargs=3, metavar=("NAME", "IN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--peer-keywords", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # pydicom's notes on the odd test files (invalid VRs, implicit VR)
    if args.peer:  # inside the peer venv
        print(json.dumps(run_peer(args.peer[0], Path(args.peer[1]), Path(args.peer[2]))))
        return
    if args.peer_keywords:
        print(json.dumps(peer_keywords(args.peer_keywords)))
        return
    work = Path(tempfile.mkdtemp(prefix="deid_coverage_"))
    src = work / "in"
    src.mkdir()
    names = build_inputs(src)
    tools, ours = {}, biomx_keywords()
    for label, accept in (("biomx", False), ("biomx --accept-unmarked", True)):
        out = work / label.replace(" ", "_")
        run = run_biomx(src, out, accept)
        tools[label] = {**run, **score(src, out, names, run.pop("outputs"))}
    lists = {}
    for peer in ("dicognito", "deid"):
        out = work / peer
        out.mkdir()
        run = _peer_subprocess(args.peer_python, "--peer", peer, str(src), str(out))
        tools[peer] = {**run, **score(src, out, names)}
        lists[peer] = compare_lists(ours, _peer_subprocess(args.peer_python, "--peer-keywords", peer))
    for label, row in tools.items():
        print(f"{label:24} written {row['written']:3}/{len(names)}  values left {row['identifying_values_left']:4} "
              f"{row['left_by_category']}  private {row['private_tags_left']:4}  series {row['series_consistent']}  "
              f"geometry {row['geometry_kept']}  acquisition {row['acquisition_kept']}  {row['wall_s']:.2f} s")  # fmt: skip
    for peer, diff in lists.items():
        print(f"attributes: biomx {diff['ours']}, {peer} {diff['theirs']}, both {diff['both']}; "
              f"only biomx {len(diff['only_biomx'])}, only {peer} {len(diff['only_peer'])}: {diff['only_peer'][:40]}")
    result = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, Python {platform.python_version()}, pydicom {pydicom.__version__}",
              "inputs": len(names), "input_files": names, "tools": tools, "attribute_lists": lists,
              "biomx_attributes": ours}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
