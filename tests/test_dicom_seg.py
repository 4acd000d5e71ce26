"""Masks predicted on a DICOM series are also written as a DICOM SEG (highdicom) referencing the
source slices: read back with highdicom, every segment holds the mask, on the right slice and the
right pixels (checked through world coordinates, not through our own axis bookkeeping).

Real files only: pydicom's 5-slice CT series (file names in reverse slice order), and a sagittal
series built from pydicom's CT_small slice; then a tiny segmentation run predicted on a series.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from biomx.cli import main
from biomx.modalities.volume import dicom_seg
from biomx.modalities.volume.lesions import write_lesion_dataset
from biomx.modalities.volume.scans import read_scan, scan_reference, write_mask

CT5N = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"
CLASSES = ["background", "liver", "lesion"]


def _sagittal_series(folder: Path, n: int = 4) -> Path:
    """CT_small's pixels as sagittal slices 3 mm apart, instance numbers against slice order."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder.mkdir()
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # rows run P, columns run I
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    for k in range(n):
        ds.ImagePositionPatient = [10.0 - 3.0 * k, -50.0, 40.0]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / f"IM{(7 * k) % n}")
    return folder


def _known_mask(shape: tuple[int, ...]) -> np.ndarray:
    """Two classes in boxes that no flip or transpose maps onto themselves."""
    mask = np.zeros(shape, np.uint8)
    x, y, z = shape
    mask[1 : x // 2, 2 : y - 1, 0] = 1
    mask[x // 3 : x - 1, 1 : y // 4, z - 1] = 2
    mask[0:2, y // 2 :, :] = 1
    return mask


def _expected_frame(ds: pydicom.Dataset, mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The canonical mask sampled where the source slice's pixels lie in the world."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    row_dir, col_dir = np.asarray(ds.ImageOrientationPatient, float).reshape(2, 3)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    lps = np.asarray(ds.ImagePositionPatient, float) + (c * col_spacing)[..., None] * row_dir \
        + (r * row_spacing)[..., None] * col_dir
    ras = np.concatenate([lps * [-1, -1, 1], np.ones((rows, cols, 1))], axis=-1)
    index = np.rint(ras @ np.linalg.inv(affine).T)[..., :3].astype(int)
    return mask[index[..., 0], index[..., 1], index[..., 2]]


@pytest.mark.parametrize("series", ["ct5n", "sagittal"])
def test_seg_holds_each_class_on_its_source_slice_and_pixels(series, tmp_path):
    folder = shutil.copytree(CT5N, tmp_path / "ct5n") if series == "ct5n" else _sagittal_series(tmp_path / "sag")
    scan = read_scan(folder)
    reference = scan_reference(scan)
    assert len(reference["dicom_files"]) == len(list(folder.iterdir()))
    mask = _known_mask(scan.array.shape[1:])
    nifti = write_mask(mask, reference, tmp_path / "out" / "case.nii.gz", classes=CLASSES, model="unet")
    seg = hd.seg.segread(tmp_path / "out" / "case.seg.dcm")
    np.testing.assert_array_equal(read_scan(nifti, mask=True).array, mask)  # NIfTI as before

    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [(1, "liver"), (2, "lesion")]
    assert seg.SegmentationType == "BINARY"
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmParameters) == ("biomx", "model=unet")
    sources = [pydicom.dcmread(f) for f in reference["dicom_files"]]
    assert all(s.SeriesInstanceUID == sources[0].SeriesInstanceUID for s in sources)
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    uids = [s.SOPInstanceUID for s in sources]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    assert pixels.shape == (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    for k, ds in enumerate(sources):
        np.testing.assert_array_equal(pixels[k], _expected_frame(ds, mask, scan.reference.affine))
    for number in (1, 2):  # each segment alone: exactly its class
        one = seg.get_pixels_by_source_instance(uids, segment_numbers=[number])[..., 0]
        np.testing.assert_array_equal(one, pixels == number)
    positions = [float(np.dot(s.ImagePositionPatient, np.cross(*np.reshape(s.ImageOrientationPatient, (2, 3)))))
                 for s in sources]
    assert positions == sorted(positions)  # the recorded order is the slice order


def test_reference_records_paths_only_and_seg_needs_no_class_names(tmp_path):
    reference = scan_reference(read_scan(CT5N))
    text = repr(reference)
    ds = pydicom.dcmread(reference["dicom_files"][0])
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate"):
        value = str(ds.get(tag, "")).strip()
        assert not value or value not in text, tag
    mask = np.zeros((16, 16, 5), np.uint8)
    mask[3, 4, 2] = 2
    write_mask(mask, reference, tmp_path / "m.nii.gz")
    seg = hd.seg.segread(tmp_path / "m.seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["class 1", "class 2"]


def test_without_highdicom_the_nifti_is_written_with_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if the deploy extra were not installed
    dicom_seg.highdicom_or_warn.cache_clear()
    try:
        reference = scan_reference(read_scan(CT5N))
        for name in ("a", "b"):
            write_mask(np.ones((16, 16, 5), np.uint8), reference, tmp_path / f"{name}.nii.gz", classes=CLASSES)
    finally:
        dicom_seg.highdicom_or_warn.cache_clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['warning: writing DICOM SEG masks needs highdicom: pip install "biomx[deploy]"; '
                   "writing NIfTI masks only"]


def test_predict_on_a_dicom_series_writes_nifti_and_a_matching_seg(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOMX_CACHE", str(tmp_path / "cache"))
    lesions = write_lesion_dataset(tmp_path / "lesions", n_cases=4, seed=3).parent
    cfg = tmp_path / "seg.yaml"
    cfg.write_text(
        "name: seg\n"
        f"data: {{source: msd, modality: volume, path: {lesions}, split: {{method: random, val: 0.25, test: 0.25}},"
        " volume: {spacing: [2.0, 2.0, 3.0], intensity: ct, ct_window: [-200, 200]}}\n"
        "task: {kind: segmentation, patch_size: [16, 16, 16], patches_per_case: 1, sw_batch_size: 2}\n"
        "model: {name: unet, args: {channels: [4, 8], strides: [2], num_res_units: 0}}\n"
        "train: {epochs: 1, batch_size: 2, progress: false, monitor: val_dice}\n"
        "eval: {bootstrap: 10, explain: 0}\n"
        f"output: {{dir: {tmp_path / 'runs'}, name: seg, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    series = _sagittal_series(tmp_path / "series", n=6)
    assert main(["predict", str(tmp_path / "runs" / "seg"), str(series), "-o", str(tmp_path / "p.csv"),
                 "--masks", str(tmp_path / "masks")]) == 0
    nifti = nib.load(tmp_path / "masks" / "series.nii.gz")
    seg = hd.seg.segread(tmp_path / "masks" / "series.seg.dcm")
    reference = scan_reference(read_scan(series))
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in reference["dicom_files"]]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    # NIfTI of a DICOM series: (columns, rows, slices) in slice order; the SEG: (slices, rows, columns)
    np.testing.assert_array_equal(pixels, np.asarray(nifti.dataobj).transpose(2, 1, 0))


def test_deidentified_series_gets_a_seg_and_one_without_a_frame_of_reference_a_warning(tmp_path, capsys):
    for name, dropped in (("deid", ("PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID")),
                          ("nofor", ("FrameOfReferenceUID",))):  # fmt: skip
        folder = tmp_path / name
        folder.mkdir()
        for f in CT5N.iterdir():
            ds = pydicom.dcmread(f)
            for key in dropped:
                del ds[key]
            ds.save_as(folder / f.name)
        write_mask(_known_mask((16, 16, 5)), scan_reference(read_scan(folder)), tmp_path / "out" / f"{name}.nii.gz",
                   classes=CLASSES)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["deid.nii.gz", "deid.seg.dcm", "nofor.nii.gz"]
    assert hd.seg.segread(tmp_path / "out" / "deid.seg.dcm").PatientName == ""
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {tmp_path / 'nofor'}: no DICOM SEG written (its slices lack FrameOfReferenceUID); "
                   "NIfTI mask only"]
