"""DICOM series: the slices of one series (a folder, or one file) as one 3D volume.

Slices are checked to be one series on one grid without missing slices, sorted along the slice
normal, and placed in world coordinates (DICOM's LPS converted to RAS).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

from biomx.errors import DataError
from biomx.modalities.volume.decoding import DECODE_ERRORS, LPS_TO_RAS, OpenedVolume

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

_GAP_FACTOR = 1.5  # a slice gap this many times the median one means missing slices


@dataclass
class OpenedSeries(OpenedVolume):
    """An opened DICOM series, with its slice files in volume order (the third voxel index):
    what a DICOM SEG of a mask on this volume must reference, frame by frame."""

    files: tuple[str, ...] = ()


def dicom_files_in(folder: Path) -> list[Path]:
    """The DICOM files directly in `folder`: DICM magic or a DICOM suffix; DICOMDIR skipped."""
    files = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name.upper() == "DICOMDIR":
            continue
        if p.name.lower().endswith(DICOM_SUFFIXES):
            files.append(p)
            continue
        with open(p, "rb") as f:
            if f.read(132)[128:132] == b"DICM":
                files.append(p)
    if not files:
        raise DataError(f"{folder}: no DICOM files in this folder; expected the slices of one "
                        "DICOM series (a volume file or a series folder)")
    return files


def open_dicom_series(where: Path, files: list[Path]) -> OpenedSeries:
    """The headers of one series; its pixels -> (data (cols, rows, slices), voxel -> RAS
    affine) are decoded only when asked for.

    Slices are sorted by their position along the slice normal (file names and
    InstanceNumber are often wrong); the series must be one grid without holes.
    """
    slices = _dicom_headers(where, files)
    _check_one_series(where, slices)
    _check_same_grid(where, slices)
    row_dir, col_dir = np.asarray(slices[0][1].ImageOrientationPatient, dtype=float).reshape(2, 3)
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda s: float(np.dot(_position(s), normal)))
    positions = np.array([np.dot(_position(s), normal) for s in slices])
    gap = _slice_gap(where, slices, positions)
    row_spacing, col_spacing = (float(v) for v in slices[0][1].PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing  # i: along a row (column index)
    affine[:3, 1] = col_dir * row_spacing  # j: down a column (row index)
    # From slice to slice: the mean step between positions, exact even for a gantry tilt
    # (slices shifted in-plane, a sheared grid); one slice: its thickness along the normal.
    n = len(slices)
    affine[:3, 2] = (_position(slices[-1]) - _position(slices[0])) / (n - 1) if n > 1 \
        else normal * gap
    affine[:3, 3] = _position(slices[0])

    def read() -> tuple[np.ndarray, np.ndarray]:
        data = np.stack([_dicom_pixels(path, ds).T for path, ds in slices], axis=-1)
        return data, LPS_TO_RAS @ affine

    return OpenedSeries((int(slices[0][1].Columns), int(slices[0][1].Rows), n), read,
                        tuple(str(path) for path, _ in slices))


def _dicom_headers(where: Path, files: list[Path]) -> list[tuple[Path, Any]]:
    """(path, dataset) of each image slice; pixel data stays on disk until needed."""
    slices = []
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns on harmless VR oddities
                ds = pydicom.dcmread(path, defer_size="64 KB")
        except DECODE_ERRORS as e:
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            raise DataError(f"{path}: cannot read DICOM file: {reason}") from e
        if "PixelData" not in ds:  # structured reports, RT structures...: not slices
            continue
        missing = [t for t in ("ImagePositionPatient", "ImageOrientationPatient",
                               "PixelSpacing") if t not in ds]
        if missing:
            raise DataError(f"{path}: DICOM slice without {', '.join(missing)}: cannot place "
                            "it in 3D (a projection X-ray? use the image modality)")
        if int(ds.get("NumberOfFrames") or 1) > 1:
            raise DataError(f"{path}: multi-frame DICOM is not supported as a volume yet; "
                            "convert it to NIfTI (e.g. dcm2niix)")
        slices.append((path, ds))
    if not slices:
        raise DataError(f"{where}: no DICOM image slices (the files hold no pixel data)")
    return slices


def _check_one_series(where: Path, slices: list[tuple[Path, Any]]) -> None:
    series: dict[str, list[Any]] = {}
    for _, ds in slices:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    if len(series) > 1:
        listing = "; ".join(
            f"{uid} ({len(group)} file{'s' * (len(group) > 1)}{_description(group[0])})"
            for uid, group in series.items()
        )
        raise DataError(f"{where}: holds {len(series)} DICOM series ({listing}); pass the "
                        "folder of one series")


def _description(ds: Any) -> str:
    text = str(ds.get("SeriesDescription", "")).strip()
    return f", '{text}'" if text else ""


def _check_same_grid(where: Path, slices: list[tuple[Path, Any]]) -> None:
    """Every slice must share the orientation, the matrix size and the pixel spacing."""
    first_path, first = slices[0]
    for path, ds in slices[1:]:
        for what, a, b in (
            ("orientation (ImageOrientationPatient)", first.ImageOrientationPatient,
             ds.ImageOrientationPatient),
            ("size (Rows x Columns)", (first.Rows, first.Columns), (ds.Rows, ds.Columns)),
            ("pixel spacing (PixelSpacing)", first.PixelSpacing, ds.PixelSpacing),
        ):
            if not np.allclose(np.asarray(a, float), np.asarray(b, float), atol=1e-4):
                raise DataError(f"{where}: slices differ in {what}: {first_path.name} has "
                                f"{_fmt(a)}, {path.name} has {_fmt(b)}; one series must have "
                                "one grid (a localizer in the folder?)")


def _fmt(values: Any) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def _position(item: tuple[Path, Any]) -> np.ndarray:
    return np.asarray(item[1].ImagePositionPatient, dtype=float)


def _slice_gap(where: Path, slices: list[tuple[Path, Any]], positions: np.ndarray) -> float:
    """The median distance between sorted slices; refuse duplicates and missing slices."""
    if len(slices) == 1:
        ds = slices[0][1]
        return abs(float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0))
    gaps = np.diff(positions)
    duplicates = np.flatnonzero(gaps < 1e-3)
    if duplicates.size:
        k = duplicates[0]
        raise DataError(f"{where}: {slices[k][0].name} and {slices[k + 1][0].name} are at the "
                        f"same position ({positions[k]:.2f} mm along the slice normal): several "
                        "images per position (echoes, phases, time points) are not one volume")
    median = float(np.median(gaps))
    holes = np.flatnonzero(gaps > _GAP_FACTOR * median)
    if holes.size:
        k = holes[0]
        raise DataError(f"{where}: missing slice(s) between {positions[k]:.2f} mm "
                        f"({slices[k][0].name}) and {positions[k + 1]:.2f} mm "
                        f"({slices[k + 1][0].name}) along the slice normal: a gap of "
                        f"{gaps[k]:.2f} mm where slices are {median:.2f} mm apart")
    return median


def _dicom_pixels(path: Path, ds: Any) -> np.ndarray:
    """(rows, cols) modality values (HU for CT)."""
    try:
        pixels = ds.pixel_array
    except DECODE_ERRORS as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise DataError(f"{path}: cannot decode DICOM pixels: {reason}") from e
    if pixels.ndim != 2:
        raise DataError(f"{path}: colour DICOM slices (shape {pixels.shape}) are not supported "
                        "in a volume")
    return apply_modality_lut(pixels, ds)
