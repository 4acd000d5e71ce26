"""DICOM VOI: `read_image` maps modality values to [0, 1] as pydicom's `apply_modality_lut` then
`apply_voi_lut` do (VOI LUT Sequence, else WindowCenter/Width with the file's VOI LUT Function),
the VOI output range to [0, 1], MONOCHROME1 inverted.

Real files that ship inside pydicom (`pydicom.data`, nothing downloaded): MR_small.dcm (window
600/1600, signed 16 bit), CT_small.dcm (rescale to HU, no window), examples_overlay.dcm (two
windows), and the MONOCHROME1 CR image 77654033/CR1/6154 (window 1600/2800, rescale 0.684/200).
pydicom's offline test files hold no VOI LUT Sequence and no SIGMOID function, so those cases
edit a real file's dataset (MR_small) and save it as a new file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from biomx.modalities.image.decode import read_image

MR = get_testdata_file("MR_small.dcm")
CT = get_testdata_file("CT_small.dcm")
OVERLAY = get_testdata_file("examples_overlay.dcm")
MONO1 = next(f for f in get_testdata_files() if Path(f).as_posix().endswith("77654033/CR1/6154"))


def _output_range(ds: Dataset) -> tuple[float, float]:
    """The windowing output range of PS3.3 C.11.2.1.2: the stored range, through the rescale."""
    bits = int(ds.BitsStored)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)
    if "RescaleSlope" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = lo * slope + intercept, hi * slope + intercept
    return lo, hi


def _pydicom_windowed(ds: Dataset) -> np.ndarray:
    """pydicom's own modality LUT and windowing, its output range mapped to [0, 1]."""
    voi = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, prefer_lut=False)
    lo, hi = _output_range(ds)
    return (voi - lo) / (hi - lo)


def _saved(ds: Dataset, path: Path) -> Path:
    ds.save_as(path)
    return path


def test_window_center_width_matches_pydicom_and_the_linear_formula():
    ds = pydicom.dcmread(MR)
    assert "VOILUTFunction" not in ds and (float(ds.WindowCenter), float(ds.WindowWidth)) == (600, 1600)
    image = read_image(MR)
    np.testing.assert_allclose(image[0], _pydicom_windowed(ds), atol=1e-6)
    raw = ds.pixel_array.astype(np.float64)  # PS3.3 C.11.2.1.2.1 LINEAR, written out
    np.testing.assert_allclose(image[0], np.clip((raw - 599.5) / 1599 + 0.5, 0, 1), atol=1e-6)


def test_the_first_of_several_windows_is_used():
    ds = pydicom.dcmread(OVERLAY)
    assert list(ds.WindowCenter) == [450, 200] and list(ds.WindowWidth) == [790, 443]
    image = read_image(OVERLAY)
    np.testing.assert_allclose(image[0], _pydicom_windowed(ds), atol=1e-6)
    raw = ds.pixel_array.astype(np.float64)
    np.testing.assert_allclose(image[0], np.clip((raw - 449.5) / 789 + 0.5, 0, 1), atol=1e-6)


def test_monochrome1_is_windowed_then_inverted():
    ds = pydicom.dcmread(MONO1)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and float(ds.RescaleSlope) == pytest.approx(0.684)
    image = read_image(MONO1)  # no extension: found by the DICM magic
    np.testing.assert_allclose(image[0], 1 - _pydicom_windowed(ds), atol=1e-6)
    value = ds.pixel_array * 0.684 + 200  # the rescale, then LINEAR with center 1600, width 2800
    np.testing.assert_allclose(image[0], 1 - np.clip((value - 1599.5) / 2799 + 0.5, 0, 1), atol=1e-6)
    assert image.min() < 0.5 < image.max()  # the window spans the pixels: not a flat image


def test_no_window_is_min_max_of_the_modality_values_and_a_given_window_replaces_it():
    ds = pydicom.dcmread(CT)
    assert "WindowCenter" not in ds and "VOILUTSequence" not in ds
    hu = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_allclose(read_image(CT)[0], (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)
    ds.WindowCenter, ds.WindowWidth = 40, 400  # what data.image.window: [40, 400] asks for
    np.testing.assert_allclose(read_image(CT, window=(40, 400))[0], _pydicom_windowed(ds), atol=1e-6)


def test_sigmoid_function_of_an_edited_real_file(tmp_path):
    ds = pydicom.dcmread(MR)
    ds.VOILUTFunction = "SIGMOID"
    path = _saved(ds, tmp_path / "sigmoid.dcm")
    image = read_image(path)
    np.testing.assert_allclose(image[0], _pydicom_windowed(pydicom.dcmread(path)), atol=1e-6)
    raw = ds.pixel_array.astype(np.float64)  # PS3.3 C.11.2.1.3.1, normalised to [0, 1]
    np.testing.assert_allclose(image[0], 1 / (1 + np.exp(-4 * (raw - 600) / 1600)), atol=1e-6)
    assert np.abs(image - read_image(MR)).max() > 0.05  # not silently LINEAR
    # A window from the config keeps the file's function.
    given = read_image(path, window=(1000, 500))
    np.testing.assert_allclose(given[0], 1 / (1 + np.exp(-4 * (raw - 1000) / 500)), atol=1e-6)


def test_linear_exact_function(tmp_path):
    ds = pydicom.dcmread(MR)
    ds.VOILUTFunction = "LINEAR_EXACT"
    image = read_image(_saved(ds, tmp_path / "exact.dcm"))
    raw = ds.pixel_array.astype(np.float64)  # PS3.3 C.11.2.1.3.2: no half-pixel offsets
    np.testing.assert_allclose(image[0], np.clip((raw - 600) / 1600 + 0.5, 0, 1), atol=1e-6)


def _with_voi_lut(bits: int, top: int) -> Dataset:
    """MR_small with a VOI LUT Sequence: a square-root curve over its stored values, entries
    0..`top`, declared `bits` bits per entry (its window stays, and the LUT wins)."""
    ds = pydicom.dcmread(MR)
    first, count = 100, 2000  # MR_small holds 127..2145: values above 2099 take the last entry
    item = Dataset()
    item.add_new(0x00283002, "US", [count, first, bits])  # LUT Descriptor
    entries = np.round(top * np.sqrt(np.arange(count) / (count - 1))).astype(np.uint16)
    item.add_new(0x00283006, "US", entries.tolist())  # LUT Data
    ds.VOILUTSequence = [item]
    return ds


@pytest.mark.parametrize(("bits", "top", "white"), [(16, 65535, 65535), (16, 4095, 4095), (12, 4095, 4095)])
def test_voi_lut_sequence_of_an_edited_real_file(tmp_path, bits, top, white):
    """The LUT is preferred over the window; its output 0..2**n-1 maps to [0, 1]. A LUT declared
    16-bit whose entries stop at 4095 (common) is scaled by the 12 bits it uses."""
    path = _saved(_with_voi_lut(bits, top), tmp_path / "lut.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    expected = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds) / white
    np.testing.assert_allclose(image[0], expected, atol=1e-6)
    assert image.max() == pytest.approx(1.0) and image.min() > 0  # values above the last entry take it
    assert np.abs(image - read_image(MR)).max() > 0.05  # the LUT, not the window
    # A window from the config replaces the file's VOI (LUT and window alike).
    np.testing.assert_allclose(read_image(path, window=(600, 1600)), read_image(MR, window=(600, 1600)), atol=1e-6)


def test_an_8_bit_voi_lut_with_more_than_256_entries(tmp_path):
    """PS3.3 C.11.2.1.1: the value v maps to entry v - first (clamped). pydicom 3.0's apply_voi_lut
    indexes an 8-bit LUT with uint8, so entry 300 would be read as entry 44; biomx looks it up
    through pydicom with 16-bit indices. Expected here: the LUT Data indexed by numpy."""
    path = _saved(_with_voi_lut(8, 255), tmp_path / "lut8.dcm")
    ds = pydicom.dcmread(path)
    item = ds.VOILUTSequence[0]
    count, first, _ = item.LUTDescriptor
    entries = np.asarray(item.LUTData, dtype=np.float64)
    raw = ds.pixel_array.astype(np.int64)
    expected = entries[np.clip(raw - first, 0, count - 1)] / 255
    np.testing.assert_allclose(read_image(path)[0], expected, atol=1e-6)


def test_voi_lut_on_monochrome1_is_inverted(tmp_path):
    ds = _with_voi_lut(16, 65535)
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = _saved(ds, tmp_path / "lut_mono1.dcm")
    np.testing.assert_allclose(read_image(path), 1 - read_image(_saved(_with_voi_lut(16, 65535), tmp_path / "m2.dcm")),
                               atol=1e-6)  # fmt: skip


def test_a_broken_window_in_the_file_falls_back_to_min_max(tmp_path):
    ds = pydicom.dcmread(MR)
    ds.WindowWidth = 0  # no width: viewers ignore such a window
    image = read_image(_saved(ds, tmp_path / "zero_width.dcm"))
    raw = ds.pixel_array.astype(np.float64)
    np.testing.assert_allclose(image[0], (raw - raw.min()) / np.ptp(raw), atol=1e-6)


def test_a_narrow_given_window_is_a_threshold_not_an_error():
    """LINEAR is only defined for widths >= 1; a narrower window is applied as LINEAR_EXACT."""
    raw = pydicom.dcmread(MR).pixel_array.astype(np.float64)
    image = read_image(MR, window=(600, 0.5))
    np.testing.assert_allclose(image[0], np.clip((raw - 600) / 0.5 + 0.5, 0, 1), atol=1e-6)
