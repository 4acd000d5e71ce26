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

The format decoders: `volume.dicom_series` (DICOM series) and `volume.itk_formats` (NRRD,
MetaImage); NIfTI is read here, with nibabel.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from biomx.engine.checkpoint import atomic_write_bytes
from biomx.errors import DataError
from biomx.modalities.common.scans import check_finite
from biomx.modalities.volume.config import DEFAULT_MAX_VOXELS
from biomx.modalities.volume.decoding import DECODE_ERRORS, OpenedVolume, check_voxels
from biomx.modalities.volume.dicom_series import DICOM_SUFFIXES, dicom_files_in, open_dicom_series
from biomx.modalities.volume.itk_formats import open_metaimage, open_nrrd

_RAS = axcodes2ornt("RAS")

# One file, one volume (DICOM slices come as a folder of them: a series)
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


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
        slice_files: a DICOM series' slice files in file voxel order (z), for a DICOM SEG of a
            mask on it; empty for other formats.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    original_affine: np.ndarray
    original_shape: tuple[int, ...]
    slice_files: tuple[str, ...] = ()


# ---- 1. Reading -------------------------------------------------------------------------------


def read_volume(path: str | Path, *, mask: bool = False, nan_policy: str = "raise",
                max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read a 3D volume (NIfTI, DICOM series folder or file, NRRD, MetaImage) in RAS+ order.

    The format comes from the suffix (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, .dcm), a folder
    means one DICOM series, else the first bytes are sniffed. DICOM values go through the
    Modality LUT (RescaleSlope/Intercept: Hounsfield units for CT).

    Args:
        path: a volume file, or a folder holding the slices of one DICOM series.
        mask: True for a label map: voxels must be whole numbers and are kept as the smallest of
            uint8/int16/int32; False (images) gives float32.
        nan_policy: "raise" refuses NaN/infinite voxels; "zero" sets them to 0.
        max_voxels: the most values (voxels times channels) a header may declare; checked
            before any voxel is read (`data.volume.max_voxels`).

    Returns:
        a `Volume` in canonical orientation.

    Raises:
        DataError: missing, empty, truncated, corrupt or unsupported input; a header declaring
            more than `max_voxels`; NaN voxels with nan_policy="raise"; a DICOM folder with
            several series, mixed slices or missing slices; a mask with non-integer values.
        ValueError: an invalid `nan_policy`.
    """
    if nan_policy not in ("raise", "zero"):
        raise ValueError(f"nan_policy must be 'raise' or 'zero', got {nan_policy!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: cannot read volume: file or folder not found")
    try:
        opened = open_dicom_series(path, dicom_files_in(path)) if path.is_dir() else _open_file(path)
        check_voxels(path, opened.shape, max_voxels)  # every format passes here, before its voxels
        data, affine = opened.read()
    except DECODE_ERRORS as e:  # our own DataErrors (naming a slice) pass through
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]  # one line, bounded
        raise DataError(f"{path}: cannot read volume: {reason}") from e
    volume = _make_volume(data, affine, str(path), mask, nan_policy)
    volume.slice_files = getattr(opened, "files", ())  # DICOM series only
    return volume


def _open_file(path: Path) -> OpenedVolume:
    """One file's header -> its declared shape, and how to read (data in file voxel order,
    voxel -> RAS affine)."""
    kind = _format_of(path)
    if kind == "nifti":
        return _open_nifti(nib.load(path))
    if kind == "nifti-bytes":  # NIfTI-1 without its suffix: nibabel picks readers by name
        return _open_nifti(nib.Nifti1Image.from_bytes(path.read_bytes()))
    if kind == "dicom":
        return open_dicom_series(path, [path])
    if kind == "nrrd":
        return open_nrrd(path)
    if kind == "metaimage":
        return open_metaimage(path)
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
    if name.endswith(DICOM_SUFFIXES):
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


# ---- NIfTI ------------------------------------------------------------------------------------


def _open_nifti(img: Any) -> OpenedVolume:
    """A NIfTI header: nibabel reads voxels only when its `dataobj` is turned into an array."""
    return OpenedVolume(tuple(int(n) for n in img.shape), lambda: _read_nifti(img))


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


# ---- 2. Geometry checks -----------------------------------------------------------------------


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


# ---- 3. Writing back --------------------------------------------------------------------------


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
    data = to_file_order(data, reference.original_affine)
    data = data.astype(_output_dtype(data, reference.source), copy=False)
    img = nib.Nifti1Image(data, reference.original_affine)
    img.set_qform(reference.original_affine, code=1)
    img.set_sform(reference.original_affine, code=1)
    payload = img.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    atomic_write_bytes(path, payload)
    return path


def to_file_order(array: np.ndarray, original_affine: np.ndarray) -> np.ndarray:
    """A canonical (RAS+) array (x, y, z[, c]) back in the voxel order of the file whose own
    affine is `original_affine` (for a DICOM series: (columns, rows, slices))."""
    back = ornt_transform(_RAS, io_orientation(original_affine))
    return np.ascontiguousarray(apply_orientation(np.asarray(array), back))


def _output_dtype(data: np.ndarray, source: str) -> Any:
    if data.dtype == bool:
        return np.uint8
    if np.issubdtype(data.dtype, np.integer):
        return _label_dtype(data, source)
    return np.float32

