"""`data.image.max_pixels`: a file whose header declares more pixels is refused, naming the file,
its size and the key, before anything is decoded; `biomx predict` applies the run's limit.

Real files: a PNG whose IHDR claims 50000 x 50000 over a body of a few bytes (Pillow would
otherwise stop it with its own decompression-bomb error), the shipped nuclei microscopy TIFF
and a copy whose tags claim 50000 x 50000, pydicom's MR_small.dcm with Rows/Columns raised to
60000 (pixel data untouched), its 15-frame rtdose.dcm, and a NIfTI volume from nibabel's tests.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydantic import ValidationError
from pydicom.data import get_testdata_file

from biomx.cli import main
from biomx.errors import DataError
from biomx.modalities.common.planar import DEFAULT_MAX_PIXELS
from biomx.modalities.image import pipeline
from biomx.modalities.image.config import ImageSettings
from biomx.modalities.image.decode import decode_images, read_image
from data_paths import NUCLEI_2D_IMAGE

KEY = "data.image.max_pixels"
MR = get_testdata_file("MR_small.dcm")  # 64 x 64
RTDOSE = get_testdata_file("rtdose.dcm")  # 15 frames of 10 x 10
NIFTI = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A well-formed PNG (signature, IHDR, IDAT, IEND, valid CRCs) whose IHDR declares
    width x height 8-bit grey, with a compressed body of a few bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(bytes(64)))
                     + _chunk(b"IEND", b""))  # fmt: skip
    return path


def _refused(path: Path, size: str, pixels: int, limit: int = DEFAULT_MAX_PIXELS, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        read_image(path, max_pixels=limit, **kwargs)
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"{path}: ")
    assert f"declares a {size} image ({pixels:,} pixels), more than {KEY} ({limit:,})" in line
    assert f"raise {KEY}" in line
    return line


def test_png_header_bomb_is_refused_with_our_message_not_pillows(tmp_path):
    path = png_claiming(tmp_path / "bomb.png", 50000, 50000)
    assert path.stat().st_size < 200
    with Image.open(path) as img:  # Pillow reads the claim from the header alone
        assert img.size == (50000, 50000)
    line = _refused(path, "50000 x 50000", 2_500_000_000)
    assert "DecompressionBomb" not in line and "could be decompression bomb" not in line


def test_a_real_png_passes_the_default_and_a_tight_limit_refuses_it(tmp_path):
    with tifffile.TiffFile(NUCLEI_2D_IMAGE) as tif:
        plane = tif.pages[0].asarray()
    path = tmp_path / "nuclei.png"
    Image.fromarray((plane[:300, :200] // 256).astype(np.uint8)).save(path)
    assert read_image(path).shape == (1, 300, 200)  # default limit: 100 million
    _refused(path, "200 x 300", 60_000, limit=59_999)  # width x height
    assert read_image(path, max_pixels=60_000).shape == (1, 300, 200)  # the limit itself is allowed


def test_tiff_tags_are_checked_before_decoding(tmp_path):
    assert read_image(NUCLEI_2D_IMAGE).shape == (1, 512, 512)
    _refused(Path(NUCLEI_2D_IMAGE), "512 x 512", 262_144, limit=100_000)
    claim = Path(shutil.copy(NUCLEI_2D_IMAGE, tmp_path / "claim.tif"))
    with tifffile.TiffFile(claim, mode="r+b") as tif:  # edit the tags in place; the strips stay
        tif.pages[0].tags["ImageWidth"].overwrite(50000)
        tif.pages[0].tags["ImageLength"].overwrite(50000)
    _refused(claim, "50000 x 50000", 2_500_000_000)


def test_dicom_rows_and_columns_are_read_without_the_pixels(tmp_path):
    ds = pydicom.dcmread(MR)
    ds.Rows = ds.Columns = 60000  # the pixel data still holds 64 x 64
    ds.save_as(tmp_path / "huge.dcm")
    _refused(tmp_path / "huge.dcm", "60000 x 60000", 3_600_000_000)
    assert read_image(MR, max_pixels=64 * 64).shape == (1, 64, 64)


def test_dicom_frames_count_when_all_are_read():
    _refused(Path(RTDOSE), "10 x 10 x 15", 1500, limit=1000, dicom_frames="all")
    assert read_image(RTDOSE, max_pixels=1000).shape == (1, 10, 10)  # "first" decodes one frame


def test_nifti_slice_is_checked_from_the_header():
    width, height = nib.load(NIFTI).shape[:2]
    _refused(NIFTI, f"{width} x {height}", width * height, limit=width * height - 1)


def test_decode_images_skips_an_oversized_file_and_says_why(tmp_path):
    small = tmp_path / "a.png"
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(small)
    bomb = png_claiming(tmp_path / "b.png", 50000, 50000)
    images, kept, failures = decode_images([small, bomb], size=(4, 4), channels=1, on_error="skip", workers=1)
    assert kept == [0] and images.shape == (1, 1, 4, 4)
    assert failures[0][0] == str(bomb) and KEY in failures[0][1] and "50000 x 50000" in failures[0][1]


def test_config_key_default_and_bounds():
    assert ImageSettings().max_pixels == DEFAULT_MAX_PIXELS == 100_000_000
    assert ImageSettings(max_pixels=5).max_pixels == 5
    for bad in (0, -1):
        with pytest.raises(ValidationError):
            ImageSettings(max_pixels=bad)


def test_read_inputs_uses_the_runs_limit_and_old_runs_get_the_default(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(path)
    record = {"image_size": [28, 28], "channels": 1, "window": None, "dicom_frames": "first", "mean": None,
              "std": None}  # fmt: skip
    x, names, _ = pipeline.read_inputs(record, [path])  # a run made before the key: the default
    assert x.shape == (1, 1, 28, 28) and names == [str(path)]
    with pytest.raises(DataError, match=rf"40 x 30 image \(1,200 pixels\), more than {KEY} \(1,000\)"):
        pipeline.read_inputs({**record, "max_pixels": 1000}, [path])


@pytest.mark.usefixtures("one_thread")
def test_predict_applies_the_limit_stored_in_the_run(tmp_path, png_folder, capsys):
    """Train on 28 x 28 X-rays with max_pixels 1000; the run keeps the limit, and predict refuses
    a 40 x 40 image naming the file and the key, while a 28 x 28 one is predicted."""
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"name: t\ndata: {{source: folder, path: {png_folder}, image: {{size: [28, 28], max_pixels: 1000}}}}\n"
        "model: {name: small_cnn, args: {width: 4, depth: 2}}\n"
        "train: {epochs: 1, batch_size: 32, progress: false}\n"
        f"eval: {{bootstrap: 10, explain: 0}}\noutput: {{dir: {tmp_path / 'runs'}, name: run, tensorboard: false}}\n"
    )
    assert main(["train", str(config)]) == 0
    run = tmp_path / "runs" / "run"
    assert json.loads((run / "run.json").read_text())["preprocessing"]["max_pixels"] == 1000
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(big)
    capsys.readouterr()
    assert main(["predict", str(run), str(big)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {big}: the header declares a 40 x 40 image (1,600 pixels)")
    assert f"{KEY} (1,000)" in err[0]
    small = sorted(png_folder.rglob("*.png"))[0]
    assert main(["predict", str(run), str(small), "--output", str(tmp_path / "p.csv")]) == 0
