"""NRRD (pynrrd) and MetaImage (.mha, .mhd + raw): the ITK / 3D Slicer volume formats.

Each `open_*` reads a header into an `OpenedVolume`, whose `read` gives (data (x, y, z[, c]) in
file voxel order, voxel -> RAS affine); a 2D image gains a depth axis of one voxel.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from biomx.errors import DataError
from biomx.modalities.volume.decoding import LPS_TO_RAS, OpenedVolume, nrrd

# MetaImage ElementType -> numpy dtype (MET_LONG is 32-bit in MetaIO).
_MET_TYPES = {"MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2",
              "MET_INT": "i4", "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4",
              "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4",
              "MET_DOUBLE": "f8"}
# NRRD world spaces -> sign flips that take them to RAS ("scanner-xyz" and the like: kept).
_NRRD_SPACES = {"left-posterior-superior": (-1, -1, 1), "lps": (-1, -1, 1),
                "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
                "right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1)}


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


def open_nrrd(path: Path) -> OpenedVolume:
    """An NRRD/NHDR header (pynrrd); its voxels are read only when asked for."""
    if nrrd is None:
        raise DataError(f"{path}: install pynrrd to read .nrrd/.nhdr files (pip install pynrrd)")
    sizes = nrrd.read_header(str(path)).get("sizes")
    if sizes is None:
        raise DataError(f"{path}: NRRD header without 'sizes'")
    return OpenedVolume(tuple(int(n) for n in sizes), lambda: _read_nrrd(path))


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """NRRD/NHDR via pynrrd: axes with a space direction are spatial, one other is channels."""
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


def open_metaimage(path: Path) -> OpenedVolume:
    """A MetaImage header (.mha, .mhd + raw); its voxels are read only when asked for."""
    header, data_offset = _metaimage_header(path)
    ndims = int(header.get("NDims", 0))
    dims = [int(v) for v in header.get("DimSize", "").split()]
    if ndims not in (2, 3) or len(dims) != ndims:
        raise DataError(f"{path}: MetaImage with NDims={ndims}, DimSize={dims}; expected 2 or 3 "
                        "dimensions")
    etype = header.get("ElementType", "")
    if etype not in _MET_TYPES:
        raise DataError(f"{path}: unsupported MetaImage ElementType {etype!r}")
    channels = int(header.get("ElementNumberOfChannels", 1))
    shape = (*dims, channels) if channels != 1 else tuple(dims)
    return OpenedVolume(shape, lambda: _read_metaimage(path, header, data_offset, dims, channels))


def _read_metaimage(path: Path, header: dict[str, str], data_offset: int, dims: list[int],
                    channels: int) -> tuple[np.ndarray, np.ndarray]:
    """MetaImage voxels: raw or zlib data; ITK's convention, world LPS."""
    ndims = len(dims)
    msb = header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False"))
    dtype = np.dtype(_MET_TYPES[header["ElementType"]]).newbyteorder(">" if _true(msb) else "<")
    expected = int(np.prod(dims)) * channels * dtype.itemsize
    raw = _metaimage_bytes(path, header, data_offset, expected)
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


def _metaimage_bytes(path: Path, header: dict[str, str], data_offset: int, expected: int) -> bytes:
    """The voxel bytes, at most `expected` of them once decompressed."""
    source = header["ElementDataFile"]
    if source == "LOCAL":
        with open(path, "rb") as f:
            f.seek(data_offset)
            raw = f.read()
    elif source.upper() == "LIST" or re.search(r"%\d*d", source):
        raise DataError(f"{path}: MetaImage with one file per slice ({source}) is not supported")
    else:
        data_file = path.parent / source
        if Path(source).is_absolute() or not data_file.resolve().is_relative_to(path.parent.resolve()):
            raise DataError(f"{path}: ElementDataFile points outside the header's folder ({source})")
        if not data_file.is_file():
            raise DataError(f"{path}: its data file {data_file} is missing")
        raw = data_file.read_bytes()
        skip = int(header.get("HeaderSize", 0))
        raw = raw[skip:] if skip > 0 else raw
    if _true(header.get("CompressedData", "False")):
        # 47: zlib or gzip header, detected. Bounded: a small stream can inflate a thousandfold.
        raw = zlib.decompressobj(wbits=47).decompress(raw, max_length=expected)
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
    return LPS_TO_RAS @ affine


def _true(value: str) -> bool:
    return value.strip().lower() in ("true", "1")
