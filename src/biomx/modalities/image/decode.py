"""2D medical images: from files on disk to one float16 tensor, in the order an image goes.

1. `read_image` decodes one file (PNG/JPEG/BMP, TIFF, DICOM, NIfTI) to float32 (C, H, W) in [0, 1].
2. `resize_image` brings it to the training size.
3. `decode_images` decodes a whole list of files once, in threads, into ONE float16 tensor.

Which files make up a dataset: `image.sources` (folders, CSV manifests) and `image.npz`
(MedMNIST-style archives). Batches of the tensor: `image.dataset.ImageTensorDataset`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import tifffile
import torch
import torch.nn.functional as F
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

from biomx.errors import DataError
from biomx.modalities.common.planar import DECODE_ERRORS, read_pillow

_SUFFIX_FORMAT = {".png": "pillow", ".jpg": "pillow", ".jpeg": "pillow", ".bmp": "pillow",
                  ".tif": "tiff", ".tiff": "tiff", ".dcm": "dicom", ".dicom": "dicom"}


# ---- 1. One file -> float32 (C, H, W) in [0, 1] -----------------------------------------------


def read_image(path: str | Path, *, channels: int | None = None,
               window: tuple[float, float] | None = None, dicom_frames: str = "first",
               nifti_slice: int | None = None, nan_policy: str = "raise") -> np.ndarray:
    """Read one 2D image file as float32 (C, H, W) with intensities in [0, 1].

    The format comes from the extension, else the magic bytes (DICOM exports often have none).
    Scaling: uint8 /255; wider integers min-max between their 0.5 and 99.5 percentiles (16-bit
    microscopy and X-ray rarely use the full range); floats min-max. DICOM: Modality LUT
    (slope/intercept), then the VOI window (`window`, else the file's first WindowCenter/Width,
    else min-max); MONOCHROME1 is inverted so high = bright; colour is scaled by its bit depth.
    NIfTI: one slice, min-max. A constant image gives zeros. NaN or infinite pixels (float TIFF,
    DICOM, NIfTI) are refused (`nan_policy` "raise") or set to 0 before scaling ("zero").

    Args:
        path: the image file.
        channels: None keeps the native channels; 1 converts RGB(A) to grey (ITU-R 601 luma);
            3 repeats grey or drops alpha.
        window: DICOM VOI window (center, width) in modality units (e.g. HU); ignored otherwise.
        dicom_frames: "first" reads frame 0 of a multi-frame DICOM; "all" stacks every frame as
            channels (C = n_frames, or 3 * n_frames frame-major for colour), scaled jointly.
        nifti_slice: index along the last spatial axis of a NIfTI volume (negative from the
            end); default the middle slice. 4D: first volume. H, W = voxel axes 0, 1 (as MONAI).
        nan_policy: "raise" (a DataError naming the file and the count) or "zero".

    Returns:
        float32 array (C, H, W) in [0, 1].

    Raises:
        DataError: missing, corrupt, truncated or unsupported file; `nifti_slice` out of range;
            channels that cannot be converted; NaN or infinite pixels with nan_policy "raise".
        ValueError: an invalid `dicom_frames`, `channels`, `window` width or `nan_policy`.
    """
    path = Path(path)
    if dicom_frames not in ("first", "all"):
        raise ValueError(f"dicom_frames must be 'first' or 'all', got {dicom_frames!r}")
    if channels is not None and channels < 1:
        raise ValueError(f"channels must be None or >= 1, got {channels}")
    if window is not None and window[1] <= 0:
        raise ValueError(f"window width must be > 0, got window={window}")
    if nan_policy not in ("raise", "zero"):
        raise ValueError(f"nan_policy must be 'raise' or 'zero', got {nan_policy!r}")
    if not path.is_file():
        raise DataError(f"{path}: cannot read image: file not found")
    try:
        kind = _format_of(path)
        if kind == "pillow":
            image = _scale(_finite(read_pillow(path), path, nan_policy))
        elif kind == "tiff":
            image = _scale(_finite(_read_tiff(path), path, nan_policy))
        elif kind == "dicom":
            image = _read_dicom(path, window, dicom_frames, nan_policy)
        elif kind == "nifti":
            image = _read_nifti(path, nifti_slice, nan_policy)
        else:
            raise DataError(f"{path}: cannot read image: unknown format "
                            "(expected PNG, JPEG, BMP, TIFF, DICOM or NIfTI)")
    except DECODE_ERRORS as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]  # one line, bounded
        raise DataError(f"{path}: cannot read image: {reason}") from e
    return _to_channels(image, channels, path)


def _format_of(path: Path) -> str:
    """'pillow', 'tiff', 'dicom', 'nifti' or 'unknown', from the extension, else the magic."""
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return "nifti"
    if path.suffix.lower() in _SUFFIX_FORMAT:
        return _SUFFIX_FORMAT[path.suffix.lower()]
    with open(path, "rb") as f:
        head = f.read(132)
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff")):  # not BMP's "BM": too many false hits
        return "pillow"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    return "unknown"


def is_image_file(path: Path) -> bool:
    # Sniffs unknown extensions: DICOM exports often have none, or a UID ("1.2.840.113619.2.55").
    try:
        return _format_of(path) != "unknown"
    except OSError:
        return False


def _read_tiff(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]  # multi-page (stack, pyramid): the first page
        arr, axes = page.asarray(), page.axes
    if axes == "YX":
        return arr[None]
    if axes == "YXS":  # interleaved samples (RGB)
        return arr.transpose(2, 0, 1)
    if axes == "SYX":  # planar samples
        return arr
    raise DataError(f"{path}: cannot read image: unsupported TIFF page layout {axes!r}")


def _finite(arr: np.ndarray, path: Path, nan_policy: str) -> np.ndarray:
    """`arr` if every pixel is finite; else a DataError ("raise") or a copy with them set to 0
    ("zero"). Without this, one NaN makes min/max NaN and the whole image silently zeros."""
    if not np.issubdtype(arr.dtype, np.floating):
        return arr
    bad = ~np.isfinite(arr)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return arr
    if nan_policy == "raise":
        raise DataError(f"{path}: {n_bad} of {arr.size} pixels are NaN or infinite; fix the file or set "
                        "data.image.nan_policy: zero")
    arr = arr.copy()
    arr[bad] = 0
    return arr


def _scale(arr: np.ndarray) -> np.ndarray:
    """Non-DICOM intensities to [0, 1] (see `read_image`)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = np.percentile(arr, (0.5, 99.5))
        if hi > lo:  # else a nearly constant image (a sparse mask): plain min-max keeps it
            return _rescale(arr, lo, hi)
    return _rescale(arr, arr.min(), arr.max())


def _rescale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly to [0, 1], clipping outside; zeros when hi <= lo."""
    if not hi > lo:
        return np.zeros(arr.shape, np.float32)
    out = (arr.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _read_dicom(path: Path, window: tuple[float, float] | None, frames: str, nan_policy: str) -> np.ndarray:
    ds = pydicom.dcmread(path)
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(f"{path}: cannot read image: DICOM file has no pixel data")
    n_frames = int(ds.get("NumberOfFrames") or 1)
    arr = pixel_array(ds, index=0 if frames == "first" else None)  # "first" decodes one frame
    if frames == "first" or n_frames == 1:
        arr = arr[None]  # now (F, H, W) grey or (F, H, W, 3) colour
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 4:  # colour (pydicom already converted YBR to RGB): scale by bit depth
        bits = np.iinfo(arr.dtype).bits if photometric == "PALETTE COLOR" else ds.BitsStored
        out = _rescale(arr, 0, 2 ** int(bits) - 1)
        return out.transpose(0, 3, 1, 2).reshape(-1, *out.shape[1:3])
    arr = _finite(apply_modality_lut(arr, ds), path, nan_policy)  # stored values -> modality units (HU for CT)
    center_width = window or _file_window(ds)
    if center_width is not None:
        lo, hi = center_width[0] - center_width[1] / 2, center_width[0] + center_width[1] / 2
    else:
        lo, hi = float(arr.min()), float(arr.max())
    if photometric == "MONOCHROME1":  # low = bright: negate so high = bright; constant stays 0
        arr, lo, hi = -arr, -hi, -lo
    return _rescale(arr, lo, hi)


def _file_window(ds: pydicom.Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    center = float(center[0] if isinstance(center, MultiValue) else center)
    width = float(width[0] if isinstance(width, MultiValue) else width)
    return (center, width) if width > 0 else None


def _read_nifti(path: Path, index: int | None, nan_policy: str) -> np.ndarray:
    img = nib.load(path)
    shape = img.shape
    depth = shape[2] if len(shape) >= 3 else 1
    k = depth // 2 if index is None else index
    if not -depth <= k < depth:
        raise DataError(f"{path}: nifti_slice={index} is out of range; the volume has {depth} "
                        "slices along its last spatial axis")
    # Slicing the proxy reads only this slice (of the first volume of a 4D series) from disk.
    where = (slice(None), slice(None)) + ((k,) + (0,) * (len(shape) - 3) if len(shape) > 2 else ())
    plane = _finite(np.asarray(img.dataobj[where]), path, nan_policy)
    return _rescale(plane, plane.min(), plane.max())[None]


def _to_channels(image: np.ndarray, channels: int | None, path: Path) -> np.ndarray:
    c = image.shape[0]
    if channels is None or channels == c:
        return image
    if channels == 1 and c in (3, 4):
        r, g, b = image[0], image[1], image[2]
        return (0.299 * r + 0.587 * g + 0.114 * b)[None]
    if channels == 1 and c == 2:  # grey + alpha
        return image[:1]
    if channels == 3 and c in (1, 2):
        return np.repeat(image[:1], 3, axis=0)
    if channels == 3 and c == 4:  # drop alpha
        return image[:3]
    raise DataError(f"{path}: image has {c} channels, cannot convert to channels={channels} "
                    "(multi-frame DICOM read with dicom_frames='all'?)")


# ---- 2. Resize --------------------------------------------------------------------------------


def resize_image(image: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (C, H, W) to (C, h, w) float32, bilinear, antialiased when downscaling.

    Args:
        image: (C, H, W) array or tensor.
        size: (h, w).

    Returns:
        float32 tensor (C, h, w); the input itself (as float32) when already that size.

    Raises:
        ValueError: `image` is not 3-dimensional.
    """
    x = torch.as_tensor(image).float()
    if x.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {tuple(x.shape)}")
    h, w = size
    if (x.shape[1], x.shape[2]) == (h, w):
        return x
    down = h < x.shape[1] or w < x.shape[2]  # antialias avoids aliasing (moire) when shrinking
    return F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False,
                         antialias=down)[0]


# ---- 3. Many files -> one float16 tensor ------------------------------------------------------


def decode_images(paths: list[Path], *, size: tuple[int, int], channels: int,
                  window: tuple[float, float] | None = None, dicom_frames: str = "first",
                  on_error: str = "raise", workers: int = 0, nan_policy: str = "raise",
                  ) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Decode, resize and stack images into one float16 (N, C, h, w) tensor in [0, 1].

    float16 halves memory (the batch path converts to float32). Decoding runs in threads:
    Pillow, tifffile and numpy release the GIL.

    Args:
        paths: image files.
        size: (h, w) of every output image.
        channels: output channels (see `read_image`).
        window, dicom_frames, nan_policy: passed to `read_image`.
        on_error: "raise" raises the first unreadable file's DataError (in path order);
            "skip" leaves it out and records it in `failures`.
        workers: threads; 0 = min(8, cpu count), 1 = no threads.

    Returns:
        (images, kept_indices into `paths`, failures as (path, reason) pairs).

    Raises:
        DataError: an unreadable image when on_error="raise".
        ValueError: an invalid `on_error`.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    out = torch.empty((len(paths), channels, *size), dtype=torch.float16)

    def decode_one(i: int) -> str | None:
        try:
            image = read_image(paths[i], channels=channels, window=window,
                               dicom_frames=dicom_frames, nan_policy=nan_policy)
            out[i] = resize_image(image, size)  # each thread writes its own row
            return None
        except DataError as e:
            if on_error == "raise":
                raise
            return str(e).removeprefix(f"{paths[i]}: ")

    n_workers = workers or min(8, os.cpu_count() or 1)
    if n_workers <= 1 or len(paths) <= 1:
        errors = [decode_one(i) for i in range(len(paths))]
    else:
        with ThreadPoolExecutor(n_workers) as pool:
            try:
                errors = list(pool.map(decode_one, range(len(paths))))
            except DataError:
                pool.shutdown(cancel_futures=True)  # don't decode the rest just to fail
                raise
    kept = [i for i, error in enumerate(errors) if error is None]
    failures = [(str(paths[i]), error) for i, error in enumerate(errors) if error is not None]
    if failures:
        out = out[kept]
    return out, kept, failures
