"""The segmentation datasets written as files: synthetic CT lesions (NIfTI) and real nuclei tiles
(TIFF), read back through the project's own readers, and their `biomx datasets` entries."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from biomx.cli import main
from biomx.errors import ConfigError
from biomx.modalities.common.msd import read_msd, read_plane
from biomx.modalities.image.starter_data import write_nuclei_dataset
from biomx.modalities.volume.files import check_same_geometry, read_volume
from biomx.modalities.volume.lesions import write_lesion_dataset
from data_paths import NUCLEI_2D_IMAGE, NUCLEI_2D_MASK

NUCLEI_IMAGE_SHA256 = "8952cab7611450bd761f81e14b95bdd197d5b17487ed98f6814fd35720e65963"
NUCLEI_MASK_SHA256 = "13ef0db2a960a93cf97cc419d9e02aa90038feb4b143fe6e0623bcfcc10ad5f4"
SHAPE = (48, 40, 24)  # smaller than the default, non-cubic so a transposed file shows


@pytest.fixture(scope="module")
def lesions(tmp_path_factory) -> Path:
    return write_lesion_dataset(tmp_path_factory.mktemp("lesions"), n_cases=8, seed=3, shape=SHAPE)


def test_lesion_dataset_is_msd_with_real_nifti(lesions):
    info = json.loads(lesions.read_text())
    assert info["labels"] == {"0": "background", "1": "lesion"} and info["modality"] == {"0": "CT"}
    assert info["tensorImageSize"] == "3D" and info["numTraining"] == 8
    assert info["training"][0] == {"image": "./imagesTr/lesion_000.nii.gz", "label": "./labelsTr/lesion_000.nii.gz"}
    ds = read_msd(lesions.parent)
    assert ds.classes == ["background", "lesion"] and ds.channels == ["CT"] and ds.spatial_dims == 3
    assert len(ds.cases) == 8
    stored = {}
    for case in ds.cases:
        raw = nib.load(case.image)
        assert raw.get_data_dtype() == np.int16 and nib.load(case.label).get_data_dtype() == np.uint8
        np.testing.assert_array_equal(nib.load(case.label).affine, raw.affine)  # exactly the same
        stored[case.id] = "".join(nib.aff2axcodes(raw.affine))
        image, mask = read_volume(case.image), read_volume(case.label, mask=True)
        check_same_geometry(image, mask, tolerance_mm=1e-6)
        assert image.array.shape == SHAPE  # canonical RAS, whatever the stored voxel order
        in_plane, _, thickness = image.spacing
        assert 0.7 <= in_plane <= 1.0 and 1.5 <= thickness <= 3.0
        assert image.spacing[0] == pytest.approx(image.spacing[1])
        assert np.median(image.array[:3, :3, :]) == pytest.approx(-1000, abs=30)  # air in the corners
        assert set(np.unique(mask.array)) == {0, 1}
    assert stored["lesion_000"] == "RAS" and stored["lesion_003"] == "LPS" and stored["lesion_007"] == "PLS"
    assert len({nib.load(c.image).header.get_zooms() for c in ds.cases}) == 8  # spacing differs per case


def test_non_ras_files_hold_reoriented_data(lesions):
    """LPS: i runs left, j posterior; PLS also swaps the first two axes. The readers undo it."""
    root = lesions.parent
    to_ras = {"lesion_003": lambda a: a[::-1, ::-1, :], "lesion_007": lambda a: a.transpose(1, 0, 2)[::-1, ::-1, :]}
    for name, undo in to_ras.items():
        for folder, mask in (("imagesTr", False), ("labelsTr", True)):
            raw = np.asarray(nib.load(root / folder / f"{name}.nii.gz").dataobj)
            canonical = read_volume(root / folder / f"{name}.nii.gz", mask=mask).array
            np.testing.assert_array_equal(undo(raw), canonical)
    assert nib.load(root / "imagesTr" / "lesion_007.nii.gz").shape == (SHAPE[1], SHAPE[0], SHAPE[2])


def test_lesions_are_where_the_masks_are(lesions):
    """Each lesion's median HU differs from a 2-voxel ring of tissue around it; hypo and hyper."""
    differences = []
    for case in read_msd(lesions.parent).cases:
        image = read_volume(case.image).array
        mask = read_volume(case.label, mask=True).array > 0
        body = image > -300
        components, n = ndimage.label(mask)
        assert 1 <= n <= 3
        for k in range(1, n + 1):
            lesion = components == k
            ring = ndimage.binary_dilation(lesion, iterations=2) & ~ndimage.binary_dilation(mask) & body
            differences.append(float(np.median(image[lesion]) - np.median(image[ring])))
        # Soft tissue away from lesions sits near 40 HU.
        tissue = ~ndimage.binary_dilation(mask, iterations=3) & (image > -40)
        assert 10 < np.median(image[tissue]) < 70
    assert min(abs(d) for d in differences) >= 5
    assert min(differences) < -5 and max(differences) > 5  # hypo- and hyper-dense lesions


def test_lesion_dataset_is_deterministic(tmp_path, lesions):
    again = write_lesion_dataset(tmp_path / "again", n_cases=8, seed=3, shape=SHAPE)
    for name in ("imagesTr/lesion_003.nii.gz", "labelsTr/lesion_005.nii.gz", "dataset.json"):
        assert (again.parent / name).read_bytes() == (lesions.parent / name).read_bytes()
    other = write_lesion_dataset(tmp_path / "other", n_cases=1, seed=4, shape=SHAPE)
    a = read_volume(other.parent / "imagesTr" / "lesion_000.nii.gz").array
    b = read_volume(lesions.parent / "imagesTr" / "lesion_000.nii.gz").array
    assert a.shape != b.shape or not np.array_equal(a, b)
    with pytest.raises(ConfigError, match="at least 16 voxels"):
        write_lesion_dataset(tmp_path / "bad", shape=(64, 64, 8))


def test_nuclei_tiles_reassemble_into_the_real_image(tmp_path):
    spec = write_nuclei_dataset(tmp_path / "nuclei", tile=128)
    info = json.loads(spec.read_text())
    assert info["tensorImageSize"] == "2D" and info["labels"] == {"0": "background", "1": "nucleus"}
    assert info["modality"] == {"0": "fluorescence"}
    ds = read_msd(spec.parent)
    assert ds.spatial_dims == 2 and ds.classes == ["background", "nucleus"] and len(ds.cases) == 16
    original = tifffile.imread(NUCLEI_2D_IMAGE)
    instances = tifffile.imread(NUCLEI_2D_MASK)
    # The packaged copy holds the published pixels: SHA-256 of the original stardist arrays.
    assert original.dtype == instances.dtype == np.uint16 and original.shape == instances.shape == (512, 512)
    assert hashlib.sha256(original.astype("<u2").tobytes()).hexdigest() == NUCLEI_IMAGE_SHA256
    assert hashlib.sha256(instances.astype("<u2").tobytes()).hexdigest() == NUCLEI_MASK_SHA256
    image, mask = np.zeros_like(original), np.zeros(instances.shape, dtype=np.uint8)
    for case in ds.cases:
        assert tifffile.imread(case.image).dtype == np.uint16 and tifffile.imread(case.label).dtype == np.uint8
        row, col = (int(part[1:]) for part in case.id.split("_")[1:])
        window = (slice(row * 128, (row + 1) * 128), slice(col * 128, (col + 1) * 128))
        image[window] = read_plane(case.image)[0]
        mask[window] = read_plane(case.label, mask=True)
    np.testing.assert_array_equal(image, original)  # the packaged copy is lossless
    np.testing.assert_array_equal(mask, (instances > 0).astype(np.uint8))
    with pytest.raises(ConfigError, match="tile 100: must be at least 16 and divide 512x512"):
        write_nuclei_dataset(tmp_path / "bad", tile=100)


def test_cli_exports_and_lists(tmp_path, capsys):
    assert main(["datasets", "--name", "nuclei2d", "--export", str(tmp_path / "n")]) == 0
    out = capsys.readouterr().out
    assert f"wrote nuclei2d: 16 cases (imagesTr/, labelsTr/) and {tmp_path / 'n' / 'dataset.json'}" in out
    assert len(list((tmp_path / "n" / "labelsTr").glob("*.tif"))) == 16
    assert main(["datasets"]) == 0
    listing = capsys.readouterr().out
    assert "lesions3d:" in listing and "nuclei2d:" in listing


def test_cli_export_onto_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("a file, not a folder")
    assert main(["datasets", "--name", "lesions3d", "--export", str(target)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {target}: cannot create the output folder (File exists)"]
