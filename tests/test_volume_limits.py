"""Bounded work on hostile volume headers: `data.volume.max_voxels` is checked between a file's
header and its voxels, for every format (NIfTI, NRRD, MetaImage, DICOM series), in training
reads, segmentation pairs and `biomx predict`.

Real files only: nibabel headers, pynrrd files, MetaImage headers with raw data, pydicom's CT
series. Headers that declare far more voxels than their files hold show the order: were the
voxels read first, the error would be a truncated file (or a MemoryError), not the limit.
"""

from __future__ import annotations

import gzip
import shutil
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.data import get_testdata_file

from biomx.config import validate
from biomx.errors import DataError
from biomx.experiment import prepare
from biomx.modalities.volume.config import DEFAULT_MAX_VOXELS, VolumeSettings
from biomx.modalities.volume.files import read_volume
from biomx.modalities.volume.pipeline import read_inputs
from biomx.modalities.volume.scans import read_pair
from data_paths import MEDMNIST

nrrd = pytest.importorskip("nrrd")

CT5N = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"  # 5 x 16x16
KEY = "data.volume.max_voxels"


def _voxels() -> np.ndarray:
    """Real voxels: an 8x8x4 corner of nibabel's anatomical scan."""
    data = np.asarray(nib.load(Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii").dataobj)
    return np.ascontiguousarray(data[10:18, 10:18, 10:14]).astype(np.int16)


def _nifti(path: Path) -> Path:
    nib.save(nib.Nifti1Image(_voxels(), np.eye(4)), path)
    return path


def _nrrd(path: Path) -> Path:
    nrrd.write(str(path), _voxels(), {"space": "left-posterior-superior",
                                      "space directions": np.eye(3), "space origin": np.zeros(3)})
    return path


def _mhd(path: Path, dims: str = "8 8 4", data: bytes | None = None, compressed: bool = False) -> Path:
    raw = path.with_suffix(".raw")
    raw.write_bytes(_voxels().tobytes(order="F") if data is None else data)
    path.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementType = MET_SHORT\n"
                    f"CompressedData = {compressed}\nElementDataFile = {raw.name}\n")
    return path


def _dicom(folder: Path) -> Path:
    shutil.copytree(CT5N, folder)
    return folder


@pytest.mark.parametrize("make", [_nifti, _nrrd, _mhd, _dicom], ids=["nifti", "nrrd", "metaimage", "dicom"])
def test_every_format_is_refused_above_the_limit(make, tmp_path):
    suffix = {"_nifti": "scan.nii.gz", "_nrrd": "scan.nrrd", "_mhd": "scan.mhd", "_dicom": "series"}
    path = make(tmp_path / suffix[make.__name__])
    count = read_volume(path).array.size  # within the default limit: read as before
    assert read_volume(path, max_voxels=count).array.size == count  # the limit itself is allowed
    with pytest.raises(DataError) as info:
        read_volume(path, max_voxels=count - 1)
    message = str(info.value)
    assert message.startswith(f"{path}: its header declares shape ") and "\n" not in message
    assert f"({count:,} voxels), more than {KEY} ({count - 1:,}); raise {KEY}" in message


def test_dicom_series_is_refused_before_its_pixels_are_decoded(tmp_path):
    series = _dicom(tmp_path / "series")
    first = sorted(series.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.PixelData = ds.PixelData[:10]  # a slice whose pixels cannot be decoded
    ds.save_as(first)
    with pytest.raises(DataError, match=r"shape 16 x 16 x 5 \(1,280 voxels\), more than"):
        read_volume(series, max_voxels=1000)
    with pytest.raises(DataError, match="cannot decode DICOM pixels"):
        read_volume(series)


def test_absurd_headers_are_refused_by_the_limit_not_by_memory(tmp_path):
    mhd = _mhd(tmp_path / "huge.mhd", dims="100000 100000 100000", data=bytes(64))
    with pytest.raises(DataError, match=r"shape 100000 x 100000 x 100000 \(1,000,000,000,000,000 voxels\)"):
        read_volume(mhd)
    header = nib.Nifti1Header()  # NIfTI-1 dims are int16: 32767^3 is the most a header can say
    header.set_data_shape((32767, 32767, 32767))
    header.set_data_dtype(np.float32)
    nii = tmp_path / "huge.nii.gz"
    nii.write_bytes(gzip.compress(header.binaryblock + bytes(4) + bytes(64)))
    with pytest.raises(DataError, match=rf"huge\.nii\.gz: its header declares shape 32767 x 32767 x 32767 .*{KEY}"):
        read_volume(nii)
    detached = tmp_path / "huge.nhdr"
    (tmp_path / "huge.raw").write_bytes(bytes(64))
    detached.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 50000 50000 50000\nencoding: raw\n"
                        "endian: little\ndata file: huge.raw\n")
    with pytest.raises(DataError, match=r"huge\.nhdr: its header declares shape 50000 x 50000 x 50000"):
        read_volume(detached)


def test_empty_dimensions_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"empty\.mhd: its header declares shape 0 x 8 x 4; every dimension"):
        read_volume(_mhd(tmp_path / "empty.mhd", dims="0 8 4"))


def test_compressed_metaimage_inflates_no_more_than_its_header_declares(tmp_path):
    """64 MiB of zeros compress to 64 KiB: only the declared 512 bytes are ever inflated."""
    stream = zlib.compressobj()
    data = b"".join(stream.compress(bytes(1 << 20)) for _ in range(64)) + stream.flush()
    path = _mhd(tmp_path / "bomb.mhd", data=data, compressed=True)
    tracemalloc.start()
    try:
        volume = read_volume(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert volume.array.shape == (8, 8, 4) and not volume.array.any()
    assert peak < 8 << 20  # the stream itself and a few small arrays, never the 64 MiB


def test_segmentation_pairs_apply_the_limit_to_image_and_mask(tmp_path):
    image, mask = _nifti(tmp_path / "image.nii.gz"), tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image((_voxels() > 0).astype(np.uint8), np.eye(4)), mask)
    assert read_pair(image, mask, "raise", 0.01)[1].array.shape == (8, 8, 4)
    with pytest.raises(DataError, match=r"image\.nii\.gz: its header declares shape 8 x 8 x 4"):
        read_pair(image, mask, "raise", 0.01, max_voxels=100)


def test_config_key_defaults_and_must_be_positive():
    assert VolumeSettings().max_voxels == DEFAULT_MAX_VOXELS == 512 * 512 * 1024
    assert VolumeSettings(max_voxels=1000).max_voxels == 1000
    with pytest.raises(ValidationError):
        VolumeSettings(max_voxels=0)


def test_predict_applies_the_runs_limit(tmp_path):
    with np.load(MEDMNIST / "adrenalmnist3d.npz") as a:
        arrays = {f"{s}_{k}": a[f"{s}_{k}"][:8] for s in ("train", "val") for k in ("images", "labels")}
    npz = tmp_path / "adrenal.npz"
    np.savez(npz, **arrays)
    raw = {"name": "limits", "data": {"source": "npz", "path": str(npz), "modality": "volume",
                                      "split": {"method": "predefined", "holdout": "val"},
                                      "volume": {"max_voxels": 20000}},
           "model": {"name": "small_cnn", "args": {"width": 4, "depth": 2}}, "task": {"type": "binary"},
           "output": {"dir": str(tmp_path / "runs"), "name": "run", "tensorboard": False}}  # fmt: skip
    pre = prepare(validate(raw)).info["preprocessing"]
    assert pre["max_voxels"] == 20000
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(arrays["val_images"][0], np.eye(4)), path)  # 28^3 = 21952 voxels
    with pytest.raises(DataError, match=r"case\.nii\.gz: its header declares shape 28 x 28 x 28 .*\(20,000\)"):
        read_inputs(pre, [path])
    older = {k: v for k, v in pre.items() if k != "max_voxels"}  # runs made before the key
    assert read_inputs(older, [path])[0].shape == (1, 1, 28, 28, 28)
