"""3D medical volumes: reading NIfTI, DICOM series, NRRD and MetaImage, writing NIfTI back.

1. `read_volume` reads one volume (a file, or a folder holding one DICOM series) into a
   `Volume`: the voxels, reoriented so that the three spatial axes run towards Right, Anterior
   and Superior (RAS+, nibabel's "closest canonical"), with the affine that maps a voxel index
   of that array to world millimetres (RAS), the spacing, and the file's own geometry.
2. `check_same_geometry` refuses an image and a mask that do not cover the same voxels.
3. `write_nifti` writes a model's output (canonical orientation) back in the reference file's
   original voxel order and affine, so it overlays the source scan in any viewer.

Why canonical: the same anatomy then has the same axis order and direction whatever the
scanner or the format wrote, so a model never has to learn flipped or transposed anatomy.

Array layout: spatial axes (i, j, k) in that order, i towards R, j towards A, k towards S, the
order of nibabel and MONAI (called (D, H, W) by torch); channels (4D NIfTI volumes, NRRD
vector axes, MetaImage channels) come first: (C, D, H, W). World coordinates are RAS mm;
DICOM, MetaImage and LPS NRRD files (LPS) are converted.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)
from nibabel.spatialimages import HeaderDataError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from biomx.errors import DataError

try:  # optional: pynrrd is small and pure Python, but not every install needs NRRD
    import nrrd
except ImportError:  # pragma: no cover - depends on the environment
    nrrd = None

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_RAS = axcodes2ornt("RAS")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# One file, one volume (DICOM slices come as a folder of them: a series)
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_GAP_FACTOR = 1.5  # a slice gap this many times the median one means missing slices

# Decoders raise many exception types on damaged files; these mean "this file is bad".
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, EOFError, KeyError, IndexError, AttributeError, RuntimeError,
    NotImplementedError, struct.error, zlib.error, InvalidDicomError, ImageFileError,
    HeaderDataError,
)
if nrrd is not None:
    _DECODE_ERRORS += (nrrd.NRRDError,)

# MetaImage ElementType -> numpy dtype (MET_LONG is 32-bit in MetaIO).
_MET_TYPES = {"MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2",
              "MET_INT": "i4", "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4",
              "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4",
              "MET_DOUBLE": "f8"}
# NRRD world spaces -> sign flips that take them to RAS ("scanner-xyz" and the like: kept).
_NRRD_SPACES = {"left-posterior-superior": (-1, -1, 1), "lps": (-1, -1, 1),
                "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
                "right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1)}


@dataclass
class Volume:
    """One 3D volume in canonical (RAS+) orientation, with what is needed to write it back.

    Attributes:
        array: (D, H, W) or (C, D, H, W); float32 for images, uint8/int16/int32 for masks.
        affine: 4x4 float64, voxel index (i, j, k, 1) of `array` -> world RAS mm.
        spacing: voxel size in mm along the three spatial axes of `array`.
        source: the file or DICOM series folder it came from (for messages).
        original_affine: the file's own voxel -> RAS mm affine, before reorientation.
        original_shape: the file's voxel shape before reorientation, (x, y, z[, c]).
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    original_affine: np.ndarray
    original_shape: tuple[int, ...]


# ---- 1. Reading ------------------------------------------------------------------------------


def read_volume(path: str | Path, *, mask: bool = False, nan_policy: str = "raise") -> Volume:
    """Read a 3D volume (NIfTI, DICOM series folder or file, NRRD, MetaImage) in RAS+ order.

    The format comes from the suffix (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, .dcm), a folder
    means one DICOM series, else the first bytes are sniffed. DICOM values go through the
    Modality LUT (RescaleSlope/Intercept: Hounsfield units for CT).

    Args:
        path: a volume file, or a folder holding the slices of one DICOM series.
        mask: True for a label map: voxels must be whole numbers and are kept as the smallest of
            uint8/int16/int32; False (images) gives float32.
        nan_policy: "raise" refuses NaN/infinite voxels; "zero" sets them to 0.

    Returns:
        a `Volume` in canonical orientation.

    Raises:
        DataError: missing, empty, truncated, corrupt or unsupported input; NaN voxels with
            nan_policy="raise"; a DICOM folder with several series, mixed slices or missing
            slices; a mask with non-integer values.
        ValueError: an invalid `nan_policy`.
    """
    if nan_policy not in ("raise", "zero"):
        raise ValueError(f"nan_policy must be 'raise' or 'zero', got {nan_policy!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: cannot read volume: file or folder not found")
    try:
        if path.is_dir():
            data, affine = _read_dicom_series(path, _dicom_files_in(path))
        else:
            data, affine = _read_file(path)
    except _DECODE_ERRORS as e:  # our own DataErrors (naming a slice) pass through
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]  # one line, bounded
        raise DataError(f"{path}: cannot read volume: {reason}") from e
    return _make_volume(data, affine, str(path), mask, nan_policy)


def _read_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One file -> (data (x, y, z[, c]) in file voxel order, voxel -> RAS affine)."""
    kind = _format_of(path)
    if kind == "nifti":
        return _read_nifti(nib.load(path))
    if kind == "nifti-bytes":  # NIfTI-1 without its suffix: nibabel picks readers by name
        return _read_nifti(nib.Nifti1Image.from_bytes(path.read_bytes()))
    if kind == "dicom":
        return _read_dicom_series(path, [path])
    if kind == "nrrd":
        return _read_nrrd(path)
    if kind == "metaimage":
        return _read_metaimage(path)
    raise DataError(f"{path}: cannot read volume: unknown format "
                    "(expected NIfTI, DICOM, NRRD or MetaImage)")


def _format_of(path: Path) -> str:
    """'nifti', 'nifti-bytes', 'dicom', 'nrrd', 'metaimage' or 'unknown'."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith((".mha", ".mhd")):
        return "metaimage"
    if name.endswith(_DICOM_SUFFIXES):
        return "dicom"
    with open(path, "rb") as f:
        head = f.read(348)
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"NRRD"):
        return "nrrd"
    if head.startswith((b"ObjectType", b"NDims")):
        return "metaimage"
    if head[344:348] == b"n+1\x00":
        return "nifti-bytes"
    return "unknown"


def _make_volume(data: np.ndarray, affine: np.ndarray, source: str, mask: bool,
                 nan_policy: str) -> Volume:
    """File-order data -> checked, typed, canonical `Volume` (channels first)."""
    data = check_finite(data, source, nan_policy)
    data = _as_labels(data, source) if mask else data.astype(np.float32, copy=False)
    ornt = io_orientation(affine)
    if np.isnan(ornt).any():
        raise DataError(f"{source}: degenerate affine (a zero voxel axis): cannot orient it")
    array = apply_orientation(data, ornt)  # flips/transposes the 3 spatial axes, keeps channels
    canonical = affine @ inv_ornt_aff(ornt, data.shape[:3])
    if array.ndim == 4:
        array = np.moveaxis(array, 3, 0)
    spacing = tuple(float(s) for s in np.linalg.norm(canonical[:3, :3], axis=0))
    return Volume(array=np.ascontiguousarray(array), affine=canonical, spacing=spacing,
                  source=source, original_affine=affine, original_shape=tuple(data.shape))


def check_finite(data: np.ndarray, source: str, nan_policy: str) -> np.ndarray:
    """`data` if every value is finite; else an error ("raise") or a copy with them set to 0 ("zero")."""
    if not np.issubdtype(data.dtype, np.floating):
        return data
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return data
    if nan_policy == "raise":
        raise DataError(f"{source}: {n_bad} of {data.size} voxels are NaN or infinite; fix the "
                        "file or set nan_policy: zero (data.volume.nan_policy in a config)")
    data = data.copy()
    data[bad] = 0
    return data


def _as_labels(data: np.ndarray, source: str) -> np.ndarray:
    """A label map as the smallest integer type that holds it (uint8, int16 or int32)."""
    if data.dtype == bool:
        return data.astype(np.uint8)
    if np.issubdtype(data.dtype, np.floating) and not np.array_equal(data, np.round(data)):
        example = data[data != np.round(data)].flat[0]
        raise DataError(f"{source}: a mask must hold whole numbers (labels), found {example:g}")
    return data.astype(_label_dtype(data, source), copy=False)


def _label_dtype(data: np.ndarray, source: str) -> type[np.integer]:
    lo, hi = (data.min(), data.max()) if data.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return dtype
    raise DataError(f"{source}: labels from {lo} to {hi} do not fit in int32")


def _with_depth(data: np.ndarray, affine: np.ndarray, n_spatial: int,
                ) -> tuple[np.ndarray, np.ndarray]:
    """A 2D image (x, y[, c]) -> (x, y, 1[, c]); the new axis is the plane's unit normal."""
    if n_spatial == 3:
        return data, affine
    data = np.expand_dims(data, 2)
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    affine = affine.copy()
    affine[:3, 2] = normal / (np.linalg.norm(normal) or 1.0)
    return data, affine


# ---- NIfTI -----------------------------------------------------------------------------------


def _read_nifti(img: Any) -> tuple[np.ndarray, np.ndarray]:
    """NIfTI (nibabel's best affine: sform, else qform); dims past the 3rd become channels."""
    data = np.asanyarray(img.dataobj)  # applies scl_slope/inter; keeps integers when unscaled
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim > 4:  # e.g. (x, y, z, 1, c) vector images
        data = data.reshape(*data.shape[:3], -1)
    return data, np.asarray(img.affine, dtype=np.float64)


def collect_volume_inputs(inputs: list[str | Path], suffixes: tuple[str, ...] = VOLUME_SUFFIXES) -> list[Path]:
    """Files as given; a folder: its files with `suffixes` (sorted), or, holding none, the
    folder itself (one DICOM series).

    Raises:
        DataError: an input that does not exist.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise DataError(f"{item}: no such file or folder")
        if item.is_dir():
            files = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.name.lower().endswith(suffixes))  # fmt: skip
            found += files or [item]
        else:
            found.append(item)
    return found


# ---- DICOM series ----------------------------------------------------------------------------


def _dicom_files_in(folder: Path) -> list[Path]:
    """The DICOM files directly in `folder`: DICM magic or a DICOM suffix; DICOMDIR skipped."""
    files = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name.upper() == "DICOMDIR":
            continue
        if p.name.lower().endswith(_DICOM_SUFFIXES):
            files.append(p)
            continue
        with open(p, "rb") as f:
            if f.read(132)[128:132] == b"DICM":
                files.append(p)
    if not files:
        raise DataError(f"{folder}: no DICOM files in this folder; expected the slices of one "
                        "DICOM series (a volume file or a series folder)")
    return files


def _read_dicom_series(where: Path, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Slices of one series -> (data (cols, rows, slices), voxel -> RAS affine).

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
    data = np.stack([_dicom_pixels(path, ds).T for path, ds in slices], axis=-1)
    return data, _LPS_TO_RAS @ affine


def _dicom_headers(where: Path, files: list[Path]) -> list[tuple[Path, Any]]:
    """(path, dataset) of each image slice; pixel data stays on disk until needed."""
    slices = []
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns on harmless VR oddities
                ds = pydicom.dcmread(path, defer_size="64 KB")
        except _DECODE_ERRORS as e:
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
    except _DECODE_ERRORS as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise DataError(f"{path}: cannot decode DICOM pixels: {reason}") from e
    if pixels.ndim != 2:
        raise DataError(f"{path}: colour DICOM slices (shape {pixels.shape}) are not supported "
                        "in a volume")
    return apply_modality_lut(pixels, ds)


# ---- NRRD (pynrrd) ---------------------------------------------------------------------------


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """NRRD/NHDR via pynrrd: axes with a space direction are spatial, one other is channels."""
    if nrrd is None:
        raise DataError(f"{path}: install pynrrd to read .nrrd/.nhdr files (pip install pynrrd)")
    data, header = nrrd.read(str(path), index_order="F")
    directions = header.get("space directions")
    if directions is None:  # no world frame: 'domain' axes, scaled by their spacings
        directions = _nrrd_axes_without_space(header, data.ndim)
    directions = np.asarray(directions, dtype=float)
    spatial = [i for i in range(data.ndim) if np.all(np.isfinite(directions[i]))]
    other = [i for i in range(data.ndim) if i not in spatial]
    if len(spatial) not in (2, 3) or len(other) > 1:
        raise DataError(f"{path}: NRRD with {len(spatial)} spatial axes and {len(other)} other "
                        "axes; expected 2 or 3 spatial axes and at most one channel axis")
    data = np.transpose(data, spatial + other)
    affine = np.eye(4)
    dims = directions.shape[1]
    affine[:dims, : len(spatial)] = directions[spatial].T
    origin = header.get("space origin")
    if origin is not None:
        affine[:dims, 3] = np.asarray(origin, dtype=float)
    flips = _NRRD_SPACES.get(str(header.get("space", "")).lower(), (1, 1, 1))
    data, affine = _with_depth(data, affine, len(spatial))
    return data, np.diag([*flips, 1.0]) @ affine


def _nrrd_axes_without_space(header: dict[str, Any], ndim: int) -> np.ndarray:
    """Per-axis direction rows (NaN = not spatial) from 'kinds' and 'spacings'."""
    kinds = header.get("kinds", ["domain"] * ndim)
    spacings = header.get("spacings", [1.0] * ndim)
    directions = np.full((ndim, 3), np.nan)
    spatial = [i for i, kind in enumerate(kinds) if kind in ("domain", "space")][:3]
    for n, i in enumerate(spatial):
        directions[i] = 0.0
        directions[i, n] = spacings[i] if np.isfinite(spacings[i]) else 1.0
    return directions


# ---- MetaImage -------------------------------------------------------------------------------


def _read_metaimage(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """MetaImage (.mha, .mhd + raw): raw or zlib data; ITK's convention, world LPS."""
    header, data_offset = _metaimage_header(path)
    ndims = int(header.get("NDims", 0))
    dims = [int(v) for v in header.get("DimSize", "").split()]
    if ndims not in (2, 3) or len(dims) != ndims:
        raise DataError(f"{path}: MetaImage with NDims={ndims}, DimSize={dims}; expected 2 or 3 "
                        "dimensions")
    etype = header.get("ElementType", "")
    if etype not in _MET_TYPES:
        raise DataError(f"{path}: unsupported MetaImage ElementType {etype!r}")
    msb = header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False"))
    dtype = np.dtype(_MET_TYPES[etype]).newbyteorder(">" if _true(msb) else "<")
    channels = int(header.get("ElementNumberOfChannels", 1))
    raw = _metaimage_bytes(path, header, data_offset)
    expected = int(np.prod(dims)) * channels * dtype.itemsize
    if len(raw) < expected:
        raise DataError(f"{path}: truncated MetaImage: {len(raw)} bytes of voxel data, expected "
                        f"{expected}")
    flat = np.frombuffer(raw[:expected], dtype=dtype).astype(dtype.newbyteorder("="))
    data = flat.reshape(*dims[::-1], channels).transpose(*range(ndims - 1, -1, -1), ndims)
    if channels == 1:
        data = data[..., 0]
    return _with_depth(data, _metaimage_affine(header, ndims), ndims)


def _metaimage_header(path: Path) -> tuple[dict[str, str], int]:
    """'Key = value' lines up to ElementDataFile (the last key), and where the data starts."""
    header: dict[str, str] = {}
    with open(path, "rb") as f:
        for _ in range(200):
            line = f.readline()
            key, sep, value = line.decode("latin-1").partition("=")
            if not sep:
                raise DataError(f"{path}: not a MetaImage header (line {line[:40]!r})")
            header[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                return header, f.tell()
    raise DataError(f"{path}: MetaImage header has no ElementDataFile")


def _metaimage_bytes(path: Path, header: dict[str, str], data_offset: int) -> bytes:
    source = header["ElementDataFile"]
    if source == "LOCAL":
        with open(path, "rb") as f:
            f.seek(data_offset)
            raw = f.read()
    elif source.upper() == "LIST" or re.search(r"%\d*d", source):
        raise DataError(f"{path}: MetaImage with one file per slice ({source}) is not supported")
    else:
        data_file = path.parent / source
        if not data_file.is_file():
            raise DataError(f"{path}: its data file {data_file} is missing")
        raw = data_file.read_bytes()
        skip = int(header.get("HeaderSize", 0))
        raw = raw[skip:] if skip > 0 else raw
    if _true(header.get("CompressedData", "False")):
        raw = zlib.decompress(raw, wbits=47)  # 47: zlib or gzip header, detected
    return raw


def _metaimage_affine(header: dict[str, str], ndims: int) -> np.ndarray:
    """voxel -> RAS: TransformMatrix lists each voxel axis's LPS direction, one after another."""
    def values(keys: tuple[str, ...], default: list[float]) -> np.ndarray:
        for key in keys:
            if key in header:
                return np.array([float(v) for v in header[key].split()])
        return np.array(default)

    spacing = values(("ElementSpacing", "ElementSize"), [1.0] * ndims)
    origin = values(("Offset", "Position", "Origin"), [0.0] * ndims)
    matrix = values(("TransformMatrix", "Rotation", "Orientation"), list(np.eye(ndims).flat))
    affine = np.eye(4)
    affine[:ndims, :ndims] = matrix.reshape(ndims, ndims).T * spacing
    affine[:ndims, 3] = origin
    return _LPS_TO_RAS @ affine


def _true(value: str) -> bool:
    return value.strip().lower() in ("true", "1")


# ---- 2. Geometry checks ----------------------------------------------------------------------


def check_same_geometry(image: Volume, mask: Volume, tolerance_mm: float = 1e-3) -> None:
    """Refuse a mask that does not cover the image's voxels (shape or affine differ).

    The affines are compared where it matters: the world position of the volume's corners.

    Raises:
        DataError: naming both files, when the spatial shapes differ or a corner moves by more
            than `tolerance_mm`.
    """
    shape, other = image.array.shape[-3:], mask.array.shape[-3:]
    if shape != other:
        raise DataError(f"{mask.source}: shape {other} does not match the image "
                        f"{image.source} {shape}; a mask must be on the image's voxel grid")
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0]) for j in (0, shape[1])
                        for k in (0, shape[2])]).T
    moved = float(np.abs((image.affine - mask.affine) @ corners).max())
    if moved > tolerance_mm:
        raise DataError(f"{mask.source}: voxel positions differ from the image {image.source} "
                        f"by up to {moved:.3g} mm (affines differ); resample the mask onto the "
                        "image grid")


# ---- 3. Writing back -------------------------------------------------------------------------


def write_nifti(array: Any, reference: Volume, path: str | Path) -> Path:
    """Write a canonical-orientation array (a mask, a prediction) in `reference`'s own space.

    The array is put back in the voxel order and affine of the file `reference` was read from,
    so it overlays that scan in any viewer. Integer or bool arrays are saved as uint8 or int16
    (int32 when needed), others as float32. The file appears whole or not at all.

    Args:
        array: (D, H, W) or (C, D, H, W) with the spatial shape of `reference.array`
            (a numpy array or CPU tensor). Channels become the 4th NIfTI dimension.
        reference: the volume the array was computed from.
        path: the output, ending in .nii or .nii.gz (gzip-compressed).

    Returns:
        the path written.

    Raises:
        DataError: `path` does not end in .nii or .nii.gz.
        ValueError: the spatial shape differs from the reference's.
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise DataError(f"{path}: a NIfTI output must end in .nii or .nii.gz")
    data = np.asarray(array)
    if data.shape[-3:] != reference.array.shape[-3:] or data.ndim not in (3, 4):
        raise ValueError(f"array of shape {data.shape} does not fit the reference "
                         f"{reference.source} of shape {reference.array.shape}")
    if data.ndim == 4:
        data = np.moveaxis(data, 0, 3)  # NIfTI: channels last
    back = ornt_transform(_RAS, io_orientation(reference.original_affine))
    data = np.ascontiguousarray(apply_orientation(data, back))
    data = data.astype(_output_dtype(data, reference.source), copy=False)
    img = nib.Nifti1Image(data, reference.original_affine)
    img.set_qform(reference.original_affine, code=1)
    img.set_sform(reference.original_affine, code=1)
    payload = img.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    _atomic_write(path, payload)
    return path


def _output_dtype(data: np.ndarray, source: str) -> Any:
    if data.dtype == bool:
        return np.uint8
    if np.issubdtype(data.dtype, np.integer):
        return _label_dtype(data, source)
    return np.float32


def _atomic_write(path: Path, payload: bytes) -> None:
    """Write via a temporary file in the same folder, then rename: never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
