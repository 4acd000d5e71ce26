"""2D scans with masks (source msd, for segmentation): TIFF/PNG images read with their raw values,
masks written back as TIFF on the image's own pixel grid."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from biomx.data.cases import Scan
from biomx.engine.checkpoint import atomic_write_bytes
from biomx.errors import DataError
from biomx.modalities.common.msd import is_2d_file, read_msd, read_plane
from biomx.modalities.common.planar import DEFAULT_MAX_PIXELS
from biomx.modalities.common.scans import check_finite, check_same_shape, unique_stem

pair_sources = ("msd",)  # sources of image/mask pairs
read_pairs = read_msd
mask_suffix = ".tif"
_SUFFIXES = (".tiff", ".tif", ".png", ".jpeg", ".jpg", ".bmp")


def read_scan(path: str | Path, mask: bool = False, nan_policy: str = "raise",
              max_pixels: int = DEFAULT_MAX_PIXELS) -> Scan:
    """A 2D image as (C, H, W) float32 with its raw values, or a mask as (H, W) integers.

    Raises:
        DataError: not a 2D image file; unreadable; a header declaring more than `max_pixels`;
            NaN pixels with nan_policy "raise".
    """
    path = Path(path)
    if not is_2d_file(path):
        raise DataError(f"{path}: not a 2D image file (TIFF, PNG, BMP, JPEG); this run segments 2D images")
    array = read_plane(path, mask=mask, max_pixels=max_pixels)
    if not mask:
        array = check_finite(array, str(path), nan_policy, "data.image.scan.nan_policy")
    return Scan(array, (1.0, 1.0), str(path))


def read_pair(image_path: Path, label_path: Path, nan_policy: str, tolerance_mm: float,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Scan, Scan]:
    """An image and its mask, on the same pixel grid."""
    image = read_scan(image_path, nan_policy=nan_policy, max_pixels=max_pixels)
    mask = read_scan(label_path, mask=True, max_pixels=max_pixels)
    check_same_shape(image, mask)
    return image, mask


def scan_reference(scan: Scan) -> Any:
    """Nothing to keep: a 2D mask is written on the image's pixel grid as it is."""
    return None


def write_mask(mask: np.ndarray, reference: Any, path: Path, *, classes: list[str] | None = None,
               model: str = "unknown") -> Path:  # fmt: skip
    """A label map as a zlib-compressed TIFF, atomically (a TIFF has no place for `classes` or `model`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, mask.astype(np.uint8), compression="zlib")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def collect_scans(inputs: list[str | Path]) -> list[Path]:
    """Files as given; a folder: its 2D image files (sorted)."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise DataError(f"{item}: no such file or folder")
        if not item.is_dir():
            found.append(item)
            continue
        files = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".") and is_2d_file(p))
        if not files:
            raise DataError(f"{item}: folder holds no image files")
        found += files
    return found


def scan_stem(path: Path, used: set[str]) -> str:
    return unique_stem(path, _SUFFIXES, used)
