"""`biomx deid` from YAML (examples/deid.yaml) and Python, the burned-in default for images that
often carry text without saying so (US, secondary capture), the identifier list, and `biomx
audit` on a run whose inputs are not DICOM: all on real files (pydicom's test images, the
embedded chest X-rays)."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from biomx.cli import main
from biomx.errors import ConfigError
from biomx.modalities.common.deid import (
    DeidConfig,
    audit_run,
    deidentify_folder,
    load_deid_config,
    run_deid,
)
from servers import train_image_run

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "deid.yaml"
# CT, MR, an ultrasound (G.E., 320x240 RGB) and a secondary capture: none has BurnedInAnnotation.
FILES = ("CT_small.dcm", "MR_small.dcm", "examples_rgb_color.dcm", "SC_rgb_small_odd.dcm")


def _copy(folder: Path, names=FILES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(get_testdata_file(name), folder / name)
    return folder


def _rows(audit: Path) -> dict[str, dict[str, str]]:
    """Audit rows by input file name (the inputs are taken in sorted order, `n` from 1)."""
    rows = list(csv.DictReader(open(audit)))
    return {name: row for name, row in zip(sorted(FILES), rows, strict=True)}


def test_the_example_yaml_deidentifies_real_files_from_the_cli(tmp_path, capsys):
    (tmp_path / "examples").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "examples" / "deid.yaml")
    _copy(tmp_path / "pydicom_dicoms")
    assert main(["deid", str(tmp_path / "examples" / "deid.yaml")]) == 0
    assert "de-identified 3 files" in capsys.readouterr().out
    out = tmp_path / "pydicom_dicoms_deid"
    rows = _rows(out / "deid_audit.csv")
    assert rows["SC_rgb_small_odd.dcm"]["status"].startswith("refused: secondary capture without BurnedInAnnotation")
    assert rows["examples_rgb_color.dcm"]["blanked"] == "0,0,320,24"  # the example's US rule of this make
    for name in ("CT_small.dcm", "MR_small.dcm", "examples_rgb_color.dcm"):
        raw = (out / name).read_bytes()
        assert b"CompressedSamples" not in raw and rows[name]["status"] == "written"
        original = pydicom.dcmread(get_testdata_file(name))
        ds = pydicom.dcmread(out / name)
        assert ds.PatientSex == original.PatientSex  # kept: `keep: [PatientSex]`
        assert ds.StudyInstanceUID != original.StudyInstanceUID and ds.PatientIdentityRemoved == "YES"
    us = pydicom.dcmread(out / "examples_rgb_color.dcm")
    before = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm")).pixel_array
    assert us.BurnedInAnnotation == "NO" and (us.pixel_array[:24] == before.min()).all()
    assert np.array_equal(us.pixel_array[24:], before[24:])


def test_python_door_gives_what_the_cli_gives(tmp_path):
    src = _copy(tmp_path / "in")
    result = run_deid(DeidConfig(input=src, output=tmp_path / "py", accept_unmarked=True), echo=lambda line: None)
    assert (result.written, result.refused, result.flagged) == (4, 0, 2)
    assert main(["deid", str(src), str(tmp_path / "cli"), "--accept-unmarked"]) == 0
    cli = list(csv.DictReader(open(tmp_path / "cli" / "deid_audit.csv")))
    assert cli == list(csv.DictReader(open(result.audit)))  # same statuses, same changes
    assert sorted(p.name for p in (tmp_path / "py").iterdir()) == sorted([*FILES, "deid_audit.csv"])


def test_unmarked_ultrasound_and_secondary_capture_are_refused_by_default(tmp_path, capsys):
    src = _copy(tmp_path / "in", ("CT_small.dcm", "examples_palette.dcm", "SC_rgb_small_odd.dcm"))
    marked = pydicom.dcmread(get_testdata_file("examples_palette.dcm"))
    marked.BurnedInAnnotation = "NO"  # the device says: no text in these pixels
    marked.SOPInstanceUID = "1.2.826.0.1.3680043.99.5"
    marked.save_as(src / "us_marked_no.dcm")
    assert main(["deid", str(src), str(tmp_path / "out")]) == 0
    assert "1 written" not in (printed := capsys.readouterr().out) and "(2 refused" in printed
    assert "US without BurnedInAnnotation" in printed and "--accept-unmarked" in printed
    written = sorted(p.name for p in (tmp_path / "out").glob("*.dcm"))
    assert written == ["CT_small.dcm", "us_marked_no.dcm"]
    statuses = [r["status"] for r in csv.DictReader(open(tmp_path / "out" / "deid_audit.csv"))]
    assert statuses[0] == "written" and statuses[3] == "written"
    assert statuses[1].startswith("refused: secondary capture") and statuses[2].startswith("refused: US without")
    # Accepted: written, and the audit says these were not checked for text.
    assert main(["deid", str(src), str(tmp_path / "out2"), "--accept-unmarked"]) == 0
    assert "2 flagged: written unchecked for burned-in text" in capsys.readouterr().out
    statuses = [r["status"] for r in csv.DictReader(open(tmp_path / "out2" / "deid_audit.csv"))]
    assert statuses[1:3] == ["written: flagged, secondary capture without BurnedInAnnotation (accepted unchecked)",
                             "written: flagged, US without BurnedInAnnotation (accepted unchecked)"]  # fmt: skip
    # A blank rule of the make covers it: blanked, written, marked NO.
    assert main(["deid", str(src), str(tmp_path / "out3"), "--blank", "US/philips:0,0,800,30"]) == 0
    assert pydicom.dcmread(tmp_path / "out3" / "examples_palette.dcm").BurnedInAnnotation == "NO"


def test_a_listed_identifier_left_by_the_profile_refuses_the_file(tmp_path):
    src = _copy(tmp_path / "in", ("CT_small.dcm",))
    ds = pydicom.dcmread(src / "CT_small.dcm")
    ds.StudyDescription = "TRIAL-X-42 baseline"
    ds.save_as(src / "CT_small.dcm")
    result = deidentify_folder(src, tmp_path / "out", identifiers=("trial-x-42",), echo=lambda line: None)
    assert result.written == 1  # the profile removes StudyDescription: nothing left
    result = deidentify_folder(src, tmp_path / "out2", identifiers=("nobody", "trial-x-42"),
                               keep=("StudyDescription",), echo=lambda line: None)  # fmt: skip
    assert (result.written, result.refused) == (0, 1)
    (row,) = csv.DictReader(open(result.audit))
    assert row["status"] == "refused: listed identifier 2 left" and "TRIAL" not in result.audit.read_text()


def test_config_mistakes_are_one_line_naming_the_key(tmp_path, capsys):
    cfg = tmp_path / "deid.yaml"
    cfg.write_text("input: in\noutput: out\nshift_day: 30\n")
    with pytest.raises(ConfigError, match=r"deid\.yaml: shift_day: unknown key; did you mean 'shift_days'\?"):
        load_deid_config(cfg)
    cfg.write_text("input: in\noutput: out\nblank: [{modality: US, region: [0, 0, 0, 10]}]\n")
    assert main(["deid", "--config", str(cfg)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "blank.0.region: region is [x, y, width, height]" in line
    cfg.write_text("input: in\noutput: out\n")
    assert load_deid_config(cfg).input == tmp_path / "in"  # relative to the file
    assert main(["deid", str(cfg), "--rename"]) == 1
    assert "a config file holds every option; put --rename into it" in capsys.readouterr().err
    assert main(["deid", str(tmp_path / "in")]) == 1
    assert "give IN OUT" in capsys.readouterr().err


@pytest.fixture(scope="module")
def named_png_run(tmp_path_factory, png_folder) -> Path:
    """A tiny run on real PNG X-rays whose file names carry patient names (DICOM style and
    DOE_JANE style): inputs that are not DICOM, so no header names the patient."""
    root = tmp_path_factory.mktemp("pngaudit")
    for i, path in enumerate(sorted(png_folder.rglob("*.png"))[:48] + sorted(png_folder.rglob("*.png"))[-48:]):
        name = ("Doe^Jane" if i == 3 else "SMITH_JOHN" if i == 60 else "img") + f"_{i:03d}.png"
        (root / "data" / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "data" / path.parent.name / name)
    return train_image_run(root, root / "data", "pngaudit", batch_size=32)


def test_audit_finds_patient_names_in_non_dicom_input_paths(named_png_run, capsys):
    capsys.readouterr()
    assert main(["audit", str(named_png_run)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(re.fullmatch(r"\S+:\d+: name pattern in the path of input \d+", line) for line in lines)
    assert any(line.startswith("split.csv:") for line in lines) and not any("Doe" in line for line in lines)
    found = audit_run(named_png_run, echo=lambda line: None, name_pattern=r"[A-Z]{2,}_[A-Z]{2,}")
    assert found >= 1  # SMITH_JOHN, with the site's own pattern
    assert main(["audit", str(named_png_run), "--name-pattern", "[A-Z"]) == 1
    assert "--name-pattern: '[A-Z' is not a regular expression" in capsys.readouterr().err


def test_attributes_found_missing_by_the_coverage_comparison_are_removed(tmp_path):
    """benchmarks/deid_coverage.py: pydicom's `deid` removed these, biomx's profile did not."""
    src = _copy(tmp_path / "in", ("CT_small.dcm",))
    ds = pydicom.dcmread(src / "CT_small.dcm")
    planted = {"PatientBirthDateInAlternativeCalendar": "1381-02-03 Hijri", "ContactDisplayName": "Nurse Ratched",
               "AssignedLocation": "WARD-7B", "ClinicalTrialSiteName": "Mercy General", "DeviceID": "CT-GANTRY-0042",
               "ClinicalTrialProtocolEthicsCommitteeName": "Mercy IRB"}  # fmt: skip
    for keyword, value in planted.items():
        setattr(ds, keyword, value)
    ds.ClinicalTrialSubjectID = "SUBJ-0007"  # the trial's pseudonym: kept
    ds.save_as(src / "CT_small.dcm")
    result = deidentify_folder(src, tmp_path / "out", echo=lambda line: None)
    raw = (tmp_path / "out" / "CT_small.dcm").read_bytes()
    assert result.written == 1 and not [v for v in planted.values() if v.encode() in raw]
    assert pydicom.dcmread(tmp_path / "out" / "CT_small.dcm").ClinicalTrialSubjectID == "SUBJ-0007"
    (row,) = csv.DictReader(open(result.audit))
    assert set(planted) <= set(row["removed"].split(";"))
