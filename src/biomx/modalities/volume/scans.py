"""3D scans with masks (source msd, for segmentation): volumes in canonical RAS with their
geometry kept, masks written back as NIfTI in each scan's own orientation and grid (and, for a
DICOM series, also as a DICOM SEG referencing its slices)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from biomx.data.cases import Scan
from biomx.errors import DataError
from biomx.modalities.common.msd import is_2d_file, read_msd
from biomx.modalities.common.scans import unique_stem
from biomx.modalities.volume.config import DEFAULT_MAX_VOXELS
from biomx.modalities.volume.dicom_seg import seg_path, write_dicom_seg
from biomx.modalities.volume.files import (
    VOLUME_SUFFIXES,
    Volume,
    check_same_geometry,
    collect_volume_inputs,
    read_volume,
    to_file_order,
    write_nifti,
)

pair_sources = ("msd",)  # sources of image/mask pairs
read_pairs = read_msd
mask_suffix = ".nii.gz"
collect_scans = collect_volume_inputs  # files, folders of volumes, or one DICOM series per folder


def read_scan(path: str | Path, mask: bool = False, nan_policy: str = "raise",
              max_voxels: int = DEFAULT_MAX_VOXELS) -> Scan:
    """A volume as (C, X, Y, Z) float32, or a mask as (X, Y, Z) integers, in canonical RAS.

    Raises:
        DataError: a 2D image; unreadable, truncated or corrupt file; a header declaring more
            than `max_voxels`; NaN voxels with nan_policy "raise"; a mask with several channels.
    """
    path = Path(path)
    if is_2d_file(path):
        raise DataError(f"{path}: a 2D image, but this run segments 3D volumes")
    volume = read_volume(path, mask=mask, nan_policy=nan_policy, max_voxels=max_voxels)
    array = volume.array
    if not mask and array.ndim == 3:
        array = array[None]
    if mask and array.ndim == 4:
        if array.shape[0] != 1:
            raise DataError(f"{path}: a mask must have one channel, found {array.shape[0]}")
        array = array[0]
    return Scan(array, tuple(float(s) for s in volume.spacing), str(path), volume)


def read_pair(image_path: Path, label_path: Path, nan_policy: str, tolerance_mm: float,
              max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[Scan, Scan]:
    """A volume and its mask, refused unless they share origin, spacing and orientation."""
    image = read_scan(image_path, nan_policy=nan_policy, max_voxels=max_voxels)
    mask = read_scan(label_path, mask=True, max_voxels=max_voxels)
    check_same_geometry(image.reference, mask.reference, tolerance_mm)
    return image, mask


def scan_reference(scan: Scan) -> dict[str, Any]:
    """What `write_mask` needs of the source volume (small JSON: no voxels). A DICOM series adds
    its slice files in volume order (paths only: no header value, so no patient identifier)."""
    volume: Volume = scan.reference
    reference = {"affine": volume.affine.tolist(), "spacing": list(volume.spacing), "source": volume.source,
                 "original_affine": volume.original_affine.tolist(), "original_shape": list(volume.original_shape),
                 "shape": list(volume.array.shape[-3:])}  # fmt: skip
    if volume.slice_files:
        reference["dicom_files"] = list(volume.slice_files)
    return reference


def write_mask(mask: np.ndarray, reference: dict[str, Any], path: Path, *, classes: list[str] | None = None,
               model: str = "unknown") -> Path:  # fmt: skip
    """A label map as NIfTI in the source volume's own orientation and grid; for a DICOM series
    also as a DICOM SEG beside it (`<name>.seg.dcm`; skipped, with one warning, without
    highdicom). `classes` (background first) name the SEG's segments, `model` its algorithm."""
    path.parent.mkdir(parents=True, exist_ok=True)
    volume = Volume(np.broadcast_to(np.zeros((), np.uint8), tuple(reference["shape"])), np.array(reference["affine"]),
                    tuple(reference["spacing"]), reference["source"], np.array(reference["original_affine"]),
                    tuple(reference["original_shape"]))  # fmt: skip
    written = write_nifti(mask, volume, path)
    if reference.get("dicom_files"):
        labels = to_file_order(mask, volume.original_affine)
        write_dicom_seg(labels, reference["dicom_files"], seg_path(path), classes=classes, model=model)
    return written


def scan_stem(path: Path, used: set[str]) -> str:
    return unique_stem(path, (".nii.gz", *VOLUME_SUFFIXES, ".dcm"), used)
