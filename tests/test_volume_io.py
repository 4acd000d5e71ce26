"""Reading 3D volumes (NIfTI, DICOM series, MetaImage, NRRD) and writing masks back.

Real files only: nibabel's and pydicom's test data (a real 5-slice CT series, a real series
with missing slices, a real localizer folder), and real voxels re-saved in other formats.
"""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from biomx.errors import DataError
from biomx.modalities.volume import itk_formats
from biomx.modalities.volume.files import check_same_geometry, read_volume, write_nifti

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
ANATOMICAL = NIB_DATA / "anatomical.nii"  # (33, 41, 25) int16, LAS: x runs right to left
DICOM_DATA = Path(get_testdata_file("CT_small.dcm")).parent
CT5N = DICOM_DATA / "dicomdirtests" / "98892001" / "CT5N"  # 5 CT slices, 2.5 mm apart
CT2N = DICOM_DATA / "dicomdirtests" / "98892001" / "CT2N"  # another series of that study
CT2_GAP = DICOM_DATA / "dicomdirtests" / "77654033" / "CT2"  # slices at -99.5, 103, 104, 105.5
MR700 = DICOM_DATA / "dicomdirtests" / "98892003" / "MR700"  # localizers: mixed orientations


def _world(affine: np.ndarray, index: tuple[float, ...]) -> np.ndarray:
    return (affine @ np.array([*index, 1.0]))[:3]


def _copy_series(files: list[Path], folder: Path, names: list[str]) -> Path:
    folder.mkdir()
    for f, name in zip(files, names, strict=True):
        shutil.copy(f, folder / name)
    return folder


# ---- NIfTI -----------------------------------------------------------------------------------


def test_nifti_is_reoriented_to_ras_with_matching_affine():
    original = nib.load(ANATOMICAL)
    data = np.asarray(original.dataobj)
    vol = read_volume(ANATOMICAL)
    assert nib.aff2axcodes(original.affine) == ("L", "A", "S")
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.array.dtype == np.float32 and vol.array.shape == (33, 41, 25)
    assert vol.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_array_equal(vol.array, data[::-1])  # x flipped, nothing else
    np.testing.assert_array_equal(vol.original_affine, original.affine)
    assert vol.original_shape == (33, 41, 25)
    # The same voxel sits at the same world position in both.
    np.testing.assert_allclose(_world(vol.affine, (0, 5, 7)), _world(original.affine, (32, 5, 7)))


def test_nifti_4d_puts_channels_first_and_masks_stay_integer():
    vol = read_volume(NIB_DATA / "example4d.nii.gz")
    assert vol.array.shape == (2, 128, 96, 24) and vol.original_shape == (128, 96, 24, 2)
    np.testing.assert_allclose(vol.spacing, (2.0, 2.0, 2.2), atol=1e-5)
    mask = read_volume(NIB_DATA / "standard.nii.gz", mask=True)
    assert mask.array.dtype == np.uint8
    with pytest.raises(DataError, match="whole numbers"):
        read_volume(NIB_DATA / "reoriented_anat_moved.nii", mask=True)  # float intensities


def test_nan_voxels_raise_with_their_count_or_become_zero(tmp_path):
    data = np.asarray(nib.load(ANATOMICAL).dataobj).astype(np.float32)
    data[1, 2, 3] = data[4, 5, 6] = data[7, 8, 9] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, nib.load(ANATOMICAL).affine), path)
    with pytest.raises(DataError, match=r"nan\.nii\.gz: 3 of 33825 voxels are NaN"):
        read_volume(path)
    vol = read_volume(path, nan_policy="zero")
    assert vol.array[31, 2, 3] == 0  # x flipped: 32 - 1 and np.isfinite(vol.array).all()
    with pytest.raises(ValueError, match="nan_policy"):
        read_volume(path, nan_policy="ignore")


def test_bad_files_give_one_line_naming_the_file(tmp_path):
    truncated = tmp_path / "truncated.nii"
    truncated.write_bytes(ANATOMICAL.read_bytes()[:20_000])
    text = tmp_path / "notes.nii.gz"
    text.write_text("not an image\n")
    unknown = tmp_path / "scan.xyz"
    unknown.write_bytes(b"\x00" * 400)
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (truncated, text, unknown, empty, tmp_path / "missing.nii",
                 DICOM_DATA / "MR_truncated.dcm"):
        with pytest.raises(DataError) as info:
            read_volume(path)
        message = str(info.value)
        assert message.startswith(str(path)) and "\n" not in message, message


# ---- DICOM series ----------------------------------------------------------------------------


def test_dicom_series_geometry_in_hu_whatever_the_file_names():
    files = sorted(CT5N.iterdir())
    vol = read_volume(CT5N)
    assert vol.array.shape == (16, 16, 5) and vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.spacing, (0.488281, 0.488281, 2.5), atol=1e-6)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    inverse = np.linalg.inv(vol.affine)
    for f in files:  # each stored pixel lands, in HU, where the DICOM header puts it
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        row_dir, col_dir = np.asarray(ds.ImageOrientationPatient, float).reshape(2, 3)
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        for r, c in ((0, 0), (3, 11), (15, 15)):
            lps = np.asarray(ds.ImagePositionPatient, float) + c * col_spacing * row_dir \
                + r * row_spacing * col_dir
            ras = lps * [-1, -1, 1]
            index = np.round(_world(inverse, tuple(ras))).astype(int)
            assert vol.array[tuple(index)] == hu[r, c]


def test_dicom_slice_order_comes_from_positions_not_names(tmp_path):
    files = sorted(CT5N.iterdir())
    shuffled = _copy_series(files, tmp_path / "s", ["e.dcm", "a.dcm", "d.dcm", "b.dcm", "c.dcm"])
    reference, vol = read_volume(CT5N), read_volume(shuffled)
    np.testing.assert_array_equal(vol.array, reference.array)
    np.testing.assert_array_equal(vol.affine, reference.affine)


def test_dicom_single_slice_is_a_volume_of_depth_one(tmp_path):
    ct = Path(get_testdata_file("CT_small.dcm"))
    folder = _copy_series([ct], tmp_path / "one", ["slice.dcm"])
    vol = read_volume(folder)
    ds = pydicom.dcmread(ct)
    assert vol.array.shape == (128, 128, 1)
    assert vol.spacing[2] == 5.0  # SliceThickness
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert vol.array.min() == hu.min() and vol.array.max() == hu.max()
    np.testing.assert_array_equal(read_volume(ct).array, vol.array)  # the file itself works too


def test_dicom_series_built_from_one_real_slice(tmp_path):
    """CT_small written 6 times by pydicom, 5 mm apart, instance numbers reversed."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder = tmp_path / "series"
    folder.mkdir()
    z0 = float(ds.ImagePositionPatient[2])
    for k in range(6):
        ds.ImagePositionPatient[2] = z0 + 5.0 * k
        ds.InstanceNumber = 6 - k
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / f"IM{k:02d}")  # no suffix: found by the DICM magic
    vol = read_volume(folder)
    assert vol.array.shape == (128, 128, 6) and vol.spacing[2] == pytest.approx(5.0)
    assert vol.affine[2, 3] == pytest.approx(z0)
    (folder / "IM03").unlink()
    with pytest.raises(DataError, match=r"missing slice\(s\) between .* \(IM02\) and .* \(IM04\)"):
        read_volume(folder)


def test_dicom_missing_slices_are_refused_with_the_gap_position(tmp_path):
    with pytest.raises(DataError) as info:
        read_volume(CT2_GAP)  # a real series: one slice, then three 202 mm further
    assert str(info.value).startswith(str(CT2_GAP))
    assert "missing slice(s) between -99.48 mm" in str(info.value)
    assert "103.02 mm" in str(info.value) and "1.25 mm apart" in str(info.value)
    files = sorted(CT5N.iterdir())
    holed = _copy_series(files[:2] + files[3:], tmp_path / "h", ["1", "2", "4", "5"])
    with pytest.raises(DataError, match="missing slice"):
        read_volume(holed)


def test_dicom_refuses_mixed_series_orientations_and_duplicates(tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    for f in [*CT5N.iterdir(), *CT2N.iterdir()]:
        shutil.copy(f, both / f"{f.parent.name}_{f.name}.dcm")
    with pytest.raises(DataError, match=r"holds 2 DICOM series \(.*\); pass the folder of one"):
        read_volume(both)
    with pytest.raises(DataError, match=r"MR700: slices differ in orientation"):
        read_volume(MR700)
    one = sorted(CT5N.iterdir())[0]
    twice = _copy_series([one, one], tmp_path / "dup", ["a.dcm", "b.dcm"])
    with pytest.raises(DataError, match="same position"):
        read_volume(twice)


def test_dicom_truncated_slice_is_named(tmp_path):
    files = sorted(CT5N.iterdir())
    folder = _copy_series(files, tmp_path / "t", [f.name + ".dcm" for f in files])
    bad = folder / (files[2].name + ".dcm")
    bad.write_bytes(bad.read_bytes()[:-200])
    with pytest.raises(DataError, match=rf"^{bad}: cannot"):
        read_volume(folder)


# ---- MetaImage and NRRD: the real anatomical voxels, re-saved ----------------------------------


def _metaimage_header(compressed: bool, data_file: str, n_bytes: int) -> str:
    """ITK's header for anatomical.nii: world LPS, TransformMatrix = axis directions in turn."""
    img = nib.load(ANATOMICAL)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    directions = (lps[:3, :3] / spacing).T.ravel()
    lines = ["ObjectType = Image", "NDims = 3", "BinaryData = True",
             "BinaryDataByteOrderMSB = False", f"CompressedData = {compressed}"]
    if compressed:
        lines.append(f"CompressedDataSize = {n_bytes}")
    lines += [f"TransformMatrix = {' '.join(f'{v:g}' for v in directions)}",
              f"Offset = {' '.join(f'{v:g}' for v in lps[:3, 3])}",
              "AnatomicalOrientation = RAI",
              f"ElementSpacing = {' '.join(f'{v:g}' for v in spacing)}",
              f"DimSize = {' '.join(str(s) for s in img.shape)}",
              "ElementType = MET_SHORT", f"ElementDataFile = {data_file}"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("compressed", [False, True])
def test_metaimage_matches_the_nifti_it_came_from(tmp_path, compressed):
    voxels = np.asarray(nib.load(ANATOMICAL).dataobj).astype("<i2").ravel(order="F").tobytes()
    payload = zlib.compress(voxels) if compressed else voxels
    mha = tmp_path / "anatomical.mha"
    mha.write_bytes(_metaimage_header(compressed, "LOCAL", len(payload)).encode() + payload)
    mhd = tmp_path / "anatomical.mhd"
    mhd.write_text(_metaimage_header(compressed, "anatomical.raw", len(payload)))
    (tmp_path / "anatomical.raw").write_bytes(payload)
    expected = read_volume(ANATOMICAL)
    for path in (mha, mhd):
        vol = read_volume(path)
        np.testing.assert_array_equal(vol.array, expected.array)
        np.testing.assert_allclose(vol.affine, expected.affine, atol=1e-6)
    mha.write_bytes(mha.read_bytes()[:-1000])
    with pytest.raises(DataError, match=r"anatomical\.mha: .*(truncated|Error)"):
        read_volume(mha)


def _write_nrrd(path: Path) -> None:
    """anatomical.nii as NRRD by hand (a text header, a blank line, raw little-endian voxels)."""
    img = nib.load(ANATOMICAL)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
    axes = " ".join("(" + ",".join(f"{v:g}" for v in lps[:3, i]) + ")" for i in range(3))
    header = ("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
              f"sizes: {' '.join(str(s) for s in img.shape)}\nspace directions: {axes}\n"
              "kinds: domain domain domain\nendian: little\nencoding: raw\n"
              f"space origin: ({','.join(f'{v:g}' for v in lps[:3, 3])})\n\n")
    voxels = np.asarray(img.dataobj).astype("<i2").ravel(order="F").tobytes()
    path.write_bytes(header.encode() + voxels)


def test_nrrd_matches_the_nifti_it_came_from(tmp_path):
    pytest.importorskip("nrrd")
    path = tmp_path / "anatomical.nrrd"
    _write_nrrd(path)
    vol, expected = read_volume(path), read_volume(ANATOMICAL)
    np.testing.assert_array_equal(vol.array, expected.array)
    np.testing.assert_allclose(vol.affine, expected.affine, atol=1e-6)


@pytest.mark.skipif(itk_formats.nrrd is not None, reason="pynrrd is installed")
def test_nrrd_without_pynrrd_says_what_to_install(tmp_path):
    path = tmp_path / "anatomical.nrrd"
    _write_nrrd(path)
    with pytest.raises(DataError, match=r"anatomical\.nrrd: install pynrrd"):
        read_volume(path)


# ---- Writing back, geometry checks -----------------------------------------------------------


def test_write_nifti_restores_the_original_orientation(tmp_path):
    vol = read_volume(ANATOMICAL)
    original = nib.load(ANATOMICAL)
    out = write_nifti(vol.array, vol, tmp_path / "back.nii.gz")
    written = nib.load(out)  # no canonicalisation: the file's own voxel order
    np.testing.assert_array_equal(written.get_fdata(), original.get_fdata())
    np.testing.assert_array_equal(written.affine, original.affine)
    mask = vol.array > 100
    written = nib.load(write_nifti(mask, vol, tmp_path / "mask.nii"))
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), original.get_fdata() > 100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.nii.gz", "mask.nii"]  # no temp


def test_write_nifti_round_trips_4d_and_dicom_geometry(tmp_path):
    vol = read_volume(NIB_DATA / "example4d.nii.gz")
    written = nib.load(write_nifti(vol.array, vol, tmp_path / "4d.nii.gz"))
    original = nib.load(NIB_DATA / "example4d.nii.gz")
    np.testing.assert_array_equal(written.get_fdata(), original.get_fdata())
    ct = read_volume(CT5N)
    labels = (ct.array > 0).astype(np.int64) * 300  # needs int16
    again = read_volume(write_nifti(labels, ct, tmp_path / "ct_mask.nii.gz"), mask=True)
    assert again.array.dtype == np.int16
    np.testing.assert_array_equal(again.array, labels)
    np.testing.assert_allclose(again.affine, ct.affine, atol=1e-5)
    check_same_geometry(ct, again)
    with pytest.raises(DataError, match=r"ct_mask\.png: a NIfTI output must end in"):
        write_nifti(labels, ct, tmp_path / "ct_mask.png")


def test_check_same_geometry_names_both_files(tmp_path):
    image = read_volume(ANATOMICAL)
    check_same_geometry(image, read_volume(ANATOMICAL, mask=True))
    other = read_volume(NIB_DATA / "reoriented_anat_moved.nii")
    with pytest.raises(DataError, match=r"reoriented_anat_moved\.nii: shape .*/anatomical\.nii"):
        check_same_geometry(image, other)
    original = nib.load(ANATOMICAL)
    shifted_affine = original.affine.copy()
    shifted_affine[0, 3] += 0.5
    shifted = tmp_path / "shifted.nii"
    nib.save(nib.Nifti1Image(np.asarray(original.dataobj), shifted_affine), shifted)
    with pytest.raises(DataError, match=r"shifted\.nii: voxel positions differ from the image "
                                        r".*anatomical\.nii by up to 0\.5 mm"):
        check_same_geometry(image, read_volume(shifted, mask=True))
