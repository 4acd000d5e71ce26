"""`biomx deid` (PS3.15 Annex E Basic Profile) and `biomx audit` on real DICOM files: pydicom's
CT_small.dcm (a GE CT with private tags and an Other Patient IDs sequence), a 4-slice series made
from it, and the embedded chest X-rays."""

from __future__ import annotations

import csv
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from biomx.cli import main
from biomx.errors import BiomxError
from biomx.modalities.common.deid.files import deidentify_folder
from biomx.modalities.common.deid.profile import BASIC_PROFILE
from biomx.modalities.volume.dicom_series import open_dicom_series
from servers import train_image_run

NAME, PID, BIRTH = "Doe^Jane", "PAT-998877", "19610203"
PHYSICIAN, INSTITUTION, NURSE = "Welby^Marcus", "JFK IMAGING CENTER", "Ratched^Mildred"


def _ct(**changes) -> Dataset:
    """CT_small.dcm with identifiers planted where a profile must find them: top level, inside a
    sequence (a request's physician, a source-image reference) and in private tags."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, PID, BIRTH
    ds.ReferringPhysicianName = PHYSICIAN
    request = Dataset()
    request.RequestingPhysician = PHYSICIAN
    request.AccessionNumber = "ACC-4455"
    ds.RequestAttributesSequence = Sequence([request])
    source = Dataset()
    source.ReferencedSOPClassUID = ds.SOPClassUID
    source.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    source.ContentCreatorName = NURSE  # a PN the profile does not name inside a kept sequence
    ds.SourceImageSequence = Sequence([source])
    ds.add_new(0x00291010, "LO", f"{NAME} private note")
    for key, value in changes.items():
        setattr(ds, key, value)
    return ds


def _series(folder: Path, n: int = 4, patient: str = PID) -> list[Dataset]:
    """`n` slices of one series 5 mm apart (real CT pixels, each slice its own SOP instance)."""
    folder.mkdir(parents=True, exist_ok=True)
    slices = []
    for i in range(n):
        ds = _ct(PatientID=patient)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.99.{i + 1}"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-158.0, -179.0, -5.0 * i]
        ds.save_as(folder / f"{patient}_slice{i}.dcm")
        slices.append(ds)
    return slices


def _identifiers(ds: Dataset) -> list[str]:
    """Every identifying value planted or present in the input, UIDs included."""
    uids = [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID,
            "1.2.3.4.5.6.7.8.9"]  # fmt: skip
    return [NAME, "Doe", PID, BIRTH, PHYSICIAN, NURSE, INSTITUTION, "ACC-4455", "ABCD1234", "1234ABCD",
            "CompressedSamples", "CT01_OC0", "GEMS_IDEN_01", "CLUNIE1", *map(str, uids)]  # fmt: skip


def test_no_identifying_value_left_in_the_output_bytes(tmp_path):
    src = tmp_path / "in"
    slices = _series(src)
    result = deidentify_folder(src, tmp_path / "out", echo=lambda line: None)
    assert result.written == 4 and result.refused == 0
    outputs = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(outputs) == 4
    for path in [*outputs, result.audit]:
        raw = path.read_bytes().lower()
        for value in _identifiers(slices[0]):
            assert value.lower().encode() not in raw, (path.name, value)
    ds = pydicom.dcmread(outputs[0])
    assert ds.PatientIdentityRemoved == "YES" and "Annex E" in ds.DeidentificationMethod
    assert [item.CodeValue for item in ds.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert not [elem for elem in ds if elem.tag.is_private]
    assert "RequestAttributesSequence" not in ds and "OtherPatientIDsSequence" not in ds
    assert "InstitutionName" not in ds and "StationName" not in ds
    (source,) = ds.SourceImageSequence  # cleaned, not dropped: the reference is remapped
    assert source.ReferencedSOPInstanceUID.startswith("2.25.") and source.ContentCreatorName == ""
    assert source.ReferencedSOPClassUID == pydicom.uid.CTImageStorage  # a class UID names nobody
    for keyword in ("PixelSpacing", "ImageOrientationPatient", "SliceThickness", "Rows", "Columns",
                    "RescaleSlope", "RescaleIntercept", "BitsStored", "PhotometricInterpretation"):  # fmt: skip
        assert ds[keyword].value == slices[0][keyword].value, keyword


def test_series_keeps_loading_with_the_same_pixels_geometry_and_consistent_uids(tmp_path):
    src = tmp_path / "in" / "series"
    _series(src)
    deidentify_folder(tmp_path / "in", tmp_path / "out", echo=lambda line: None)
    out = tmp_path / "out" / "series"
    before = open_dicom_series(src, sorted(src.iterdir()))
    after = open_dicom_series(out, sorted(out.iterdir()))
    assert after.shape == before.shape == (128, 128, 4)
    (data0, affine0), (data1, affine1) = before.read(), after.read()
    assert np.array_equal(data0, data1) and np.allclose(affine0, affine1)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(out.iterdir())]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID", "StudyDate"):
        assert len({str(h[keyword].value) for h in headers}) == 1, keyword
    assert len({h.SOPInstanceUID for h in headers}) == 4
    assert all(h.SOPInstanceUID == h.file_meta.MediaStorageSOPInstanceUID for h in headers)


def test_dates_shift_by_one_offset_per_patient(tmp_path):
    _series(tmp_path / "in" / "a", n=2, patient="PAT-A")
    _series(tmp_path / "in" / "b", n=2, patient="PAT-B")
    deidentify_folder(tmp_path / "in", tmp_path / "out", shift_days=3650, echo=lambda line: None)
    original = _ct()

    def days(date: str, then: str) -> int:
        return int((np.datetime64(f"{date[:4]}-{date[4:6]}-{date[6:]}")
                    - np.datetime64(f"{then[:4]}-{then[4:6]}-{then[6:]}")).astype(int))  # fmt: skip

    offsets = {}
    for path in sorted((tmp_path / "out").rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        shifts = {days(ds[k].value, original[k].value) for k in ("StudyDate", "SeriesDate", "ContentDate")}
        assert len(shifts) == 1 and -3650 <= next(iter(shifts)) <= -1  # intervals kept, dates earlier
        offsets.setdefault(ds.PatientID, set()).update(shifts)
        assert ds.PatientBirthDate == "" and ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert len(offsets) == 2 and all(len(v) == 1 for v in offsets.values())  # two pseudonyms, one offset each


def test_burned_in_annotation_is_refused_and_listed(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _ct().save_as(src / "a.dcm")
    _ct(BurnedInAnnotation="YES", SOPInstanceUID="1.2.826.0.1.3680043.99.77").save_as(src / "b.dcm")
    assert main(["deid", str(src), str(tmp_path / "out")]) == 0
    assert "1 refused" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.dcm", "deid_audit.csv"]
    rows = list(csv.DictReader(open(tmp_path / "out" / "deid_audit.csv")))
    assert [(r["n"], r["output"], r["status"]) for r in rows] == [
        ("1", "a.dcm", "written"), ("2", "", "refused: BurnedInAnnotation YES")]  # fmt: skip
    assert "PatientName" in rows[0]["replaced"] and "private tags" in rows[0]["removed"]
    assert "StudyInstanceUID" in rows[0]["remapped"] and "StudyDate" in rows[0]["shifted"]


def test_mapping_is_owner_only_and_continues_the_same_pseudonyms(tmp_path):
    src = tmp_path / "in"
    _series(src, n=2)
    mapping = tmp_path / "private" / "mapping.json"
    assert main(["deid", str(src), str(tmp_path / "out1"), "--mapping", str(mapping), "--rename"]) == 0
    assert stat.S_IMODE(mapping.stat().st_mode) == 0o600
    assert PID in mapping.read_text()  # it re-identifies: that is what it is for
    assert main(["deid", str(src), str(tmp_path / "out2"), "--mapping", str(mapping), "--rename"]) == 0
    first = sorted(p.relative_to(tmp_path / "out1") for p in (tmp_path / "out1").rglob("*.dcm"))
    second = sorted(p.relative_to(tmp_path / "out2") for p in (tmp_path / "out2").rglob("*.dcm"))
    assert first == second and len(first) == 2 and str(first[0]).startswith("ANON-")
    assert pydicom.dcmread(tmp_path / "out1" / first[0]).StudyDate == pydicom.dcmread(tmp_path / "out2" / first[0]).StudyDate
    # Without --mapping the secret lives in memory only: a second run gives other UIDs.
    assert main(["deid", str(src), str(tmp_path / "out3"), "--rename"]) == 0
    assert sorted(p.relative_to(tmp_path / "out3") for p in (tmp_path / "out3").rglob("*.dcm")) != first


def test_keep_retains_named_attributes(tmp_path):
    src = tmp_path / "in"
    _series(src, n=1)
    deidentify_folder(src, tmp_path / "out", keep=("PatientAge", "PatientSex"), echo=lambda line: None)
    ds = pydicom.dcmread(next((tmp_path / "out").glob("*.dcm")))
    assert ds.PatientAge == "000Y" and ds.PatientSex == "O" and ds.PatientName != NAME
    with pytest.raises(BiomxError, match=r"^--keep: 'PatientAg' is not a DICOM attribute keyword \(did you mean PatientAge\?\)"):
        deidentify_folder(src, tmp_path / "out2", keep=("PatientAg",), echo=lambda line: None)


def test_a_file_that_is_not_dicom_is_one_line_or_skipped(tmp_path, capsys):
    src = tmp_path / "in"
    _series(src, n=1)
    (src / "notes.txt").write_text("not an image\n")
    assert main(["deid", str(src), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.txt: not a readable DICOM file" in err[0] and "--skip-errors" in err[0]
    assert main(["deid", str(src), str(tmp_path / "out"), "--skip-errors"]) == 0
    assert "0 refused, 1 skipped" in capsys.readouterr().out
    assert main(["deid", str(src), str(src / "out")]) == 1
    assert "must be outside the input" in capsys.readouterr().err
    assert main(["deid", str(src), str(tmp_path / "out"), "--mapping", str(tmp_path / "out" / "map.json")]) == 1
    assert "must not sit inside" in capsys.readouterr().err and not (tmp_path / "out" / "map.json").exists()


def test_profile_table_names_real_attributes_with_known_actions():
    assert set(BASIC_PROFILE.values()) <= {"X", "Z", "D", "U", "K"}
    assert len(BASIC_PROFILE) > 200
    assert all(pydicom.datadict.tag_for_keyword(k) is not None for k in BASIC_PROFILE)
    assert BASIC_PROFILE["PatientName"] == "D" and BASIC_PROFILE["StudyInstanceUID"] == "U"


def _identified_xrays(data: Path, dicom_folder: Path, n: int = 40) -> None:
    """`n` real chest X-ray DICOM files (half per class), each given a patient name and ID."""
    files = sorted(dicom_folder.rglob("*.dcm"))
    normal = [p for p in files if p.parent.name == "normal"][: n // 2]
    picked = normal + [p for p in files if p.parent.name != "normal"][: n - len(normal)]
    for i, path in enumerate(picked):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = f"Doe^Jane{i}", f"PAT{i:05d}"
        (data / path.parent.name).mkdir(parents=True, exist_ok=True)
        ds.save_as(data / path.parent.name / path.name)


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory, dicom_folder) -> Path:
    """A tiny run on 40 chest X-ray DICOM files that carry patient names and IDs."""
    root = tmp_path_factory.mktemp("audit")
    _identified_xrays(root / "data", dicom_folder)
    return train_image_run(root, root / "data", "audit", batch_size=16)


def test_audit_passes_a_clean_run_and_finds_a_planted_patient_id(tmp_path, dicom_run, capsys):
    capsys.readouterr()
    assert main(["audit", str(dicom_run)]) == 0
    assert "no patient identifiers found" in capsys.readouterr().out
    run = tmp_path / "run"
    shutil.copytree(dicom_run, run)
    (run / "train.log").write_text("epoch 1\nloading PAT00007 ok\n")
    assert main(["audit", str(run)]) == 1
    printed = capsys.readouterr()
    (line,) = printed.out.splitlines()
    assert re.fullmatch(r"train\.log:2: PatientID of input \d+", line)
    assert "PAT00007" not in printed.out + printed.err and "1 patient identifier(s) found" in printed.err


def test_audit_finds_listed_identifiers_and_name_parts(tmp_path, dicom_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(dicom_run, run)
    (run / "notes.yaml").write_text("owner: jane3\nstudy: TRIAL-X-42\n")
    ids = tmp_path / "ids.txt"
    ids.write_text("# our trial codes\nTRIAL-X-42\n")
    capsys.readouterr()
    assert main(["audit", str(run), "--identifiers", str(ids)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and re.fullmatch(r"notes\.yaml:1: PatientName of input \d+", out[0])
    assert out[1] == "notes.yaml:2: identifier 1 of ids.txt"


def test_a_blank_rule_clears_burned_in_text_of_its_make_only(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _ct(BurnedInAnnotation="YES").save_as(src / "ct.dcm")
    mr = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))  # compressed (RLE): decoded to blank
    mr.BurnedInAnnotation = "YES"
    mr.save_as(src / "mr.dcm")
    assert main(["deid", str(src), str(tmp_path / "out"), "--blank", "CT/ge medical:0,0,128,10",
                 "--blank", "MR/SIEMENS:0,0,4,4"]) == 0  # fmt: skip
    assert "1 refused" in capsys.readouterr().out  # the MR is a TOSHIBA: no rule of its make
    ds = pydicom.dcmread(tmp_path / "out" / "ct.dcm")
    before = _ct().pixel_array
    assert ds.BurnedInAnnotation == "NO" and (ds.pixel_array[:10] == before.min()).all()
    assert np.array_equal(ds.pixel_array[10:], before[10:])
    rows = list(csv.DictReader(open(tmp_path / "out" / "deid_audit.csv")))
    assert [r["blanked"] for r in rows] == ["0,0,128,10", ""] and rows[1]["status"].startswith("refused")
    assert main(["deid", str(src), str(tmp_path / "out2"), "--blank", "MR:0,0,4,4"]) == 0
    mr_out = pydicom.dcmread(tmp_path / "out2" / "mr.dcm")
    assert not mr_out.file_meta.TransferSyntaxUID.is_compressed and (mr_out.pixel_array[:4, :4] == mr.pixel_array.min()).all()
    assert np.array_equal(mr_out.pixel_array[4:], mr.pixel_array[4:])
    capsys.readouterr()
    assert main(["deid", str(src), str(tmp_path / "out3"), "--blank", "CT:0,0,0,10"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --blank: 'CT:0,0,0,10' is not MODALITY[/MANUFACTURER]:X,Y,WIDTH,HEIGHT")


def test_deidentified_xrays_train_and_the_run_audits_clean(tmp_path, dicom_folder, capsys):
    """The workflow: identified scans -> biomx deid -> train -> biomx audit (original IDs listed)."""
    _identified_xrays(tmp_path / "data", dicom_folder)
    assert main(["deid", str(tmp_path / "data"), str(tmp_path / "deid"), "--audit", str(tmp_path / "audit.csv")]) == 0
    before = sorted((tmp_path / "data").rglob("*.dcm"))
    after = sorted((tmp_path / "deid").rglob("*.dcm"))
    assert [p.relative_to(tmp_path / "data") for p in before] == [p.relative_to(tmp_path / "deid") for p in after]
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(pydicom.dcmread(a).pixel_array, pydicom.dcmread(b).pixel_array)
        assert b"PAT000" not in b.read_bytes() and b"Jane" not in b.read_bytes()
    run = train_image_run(tmp_path, tmp_path / "deid", "deid", batch_size=16)
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"PAT{i:05d}\nJane{i}\n" for i in range(40)))
    capsys.readouterr()
    assert main(["audit", str(run), "--identifiers", str(ids)]) == 0
    assert "no patient identifiers found" in capsys.readouterr().out


def test_a_raw_stream_without_file_meta_is_written_as_a_proper_file(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("ExplVR_BigEndNoMeta.dcm"), src / "raw.dcm")
    original = pydicom.dcmread(src / "raw.dcm", force=True)
    result = deidentify_folder(src, tmp_path / "out", echo=lambda line: None)
    assert result.written == 1
    ds = pydicom.dcmread(tmp_path / "out" / "raw.dcm")  # preamble and meta: no force needed
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRBigEndian
    assert ds.PatientIdentityRemoved == "YES" and ds.SOPInstanceUID != original.SOPInstanceUID
    assert ds.Modality == original.Modality == "RTPLAN"  # (an RT plan: no pixels)
