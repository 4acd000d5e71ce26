"""2D medical images: from files on disk to one float16 tensor, in the order an image goes.

1. `read_image` decodes one file (PNG/JPEG/BMP, TIFF, DICOM, NIfTI) to float32 (C, H, W) in [0, 1].
2. `resize_image` brings it to the training size.
3. `decode_images` decodes a whole list of files once, in threads, into ONE float16 tensor.

Which files make up a dataset: `image.sources` (folders, CSV manifests) and `image.npz`
(MedMNIST-style archives). Batches of the tensor: `image.dataset.ImageTensorDataset`.
"""

from __future__ import annotations

import gzip
import io
import math
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
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from biomx.errors import DataError
from biomx.modalities.common.planar import (
    DECODE_ERRORS,
    DEFAULT_MAX_PIXELS,
    check_pixels,
    read_pillow,
)

_SUFFIX_FORMAT = {".png": "pillow", ".jpg": "pillow", ".jpeg": "pillow", ".bmp": "pillow",
                  ".tif": "tiff", ".tiff": "tiff", ".dcm": "dicom", ".dicom": "dicom"}


# ---- 1. One file -> float32 (C, H, W) in [0, 1] -----------------------------------------------


def read_image(path: str | Path, *, channels: int | None = None,
               window: tuple[float, float] | None = None, dicom_frames: str = "first",
               nifti_slice: int | None = None, nan_policy: str = "raise",
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one 2D image file as float32 (C, H, W) with intensities in [0, 1].

    The format comes from the extension, else the magic bytes (DICOM exports often have none).
    Scaling: uint8 /255; wider integers min-max between their 0.5 and 99.5 percentiles (16-bit
    microscopy and X-ray rarely use the full range); floats min-max. DICOM: pydicom's Modality
    LUT (slope/intercept or LUT), then its VOI LUT: `window` if given (with the file's VOI LUT
    Function), else the file's VOI LUT Sequence, else its first WindowCenter/Width (LINEAR,
    LINEAR_EXACT or SIGMOID), else min-max; the VOI output range maps to [0, 1]; MONOCHROME1 is
    inverted so high = bright; colour is scaled by its bit depth. NIfTI: one slice, min-max. A
    constant image gives zeros. NaN or infinite pixels (float TIFF, DICOM, NIfTI) are refused
    (`nan_policy` "raise") or set to 0 before scaling ("zero"). The pixel count the header
    declares is checked against `max_pixels` before anything is decoded.

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
        max_pixels: refuse a file whose header declares more pixels (DICOM: rows x columns x
            the frames read); None: no limit.

    Returns:
        float32 array (C, H, W) in [0, 1].

    Raises:
        DataError: missing, corrupt, truncated or unsupported file; `nifti_slice` out of range;
            channels that cannot be converted; NaN or infinite pixels with nan_policy "raise";
            more pixels than `max_pixels`.
        ValueError: an invalid `dicom_frames`, `channels`, `window` width or `nan_policy`.
    """
    path = Path(path)
    _check_arguments(channels, window, dicom_frames, nan_policy)
    if not path.is_file():
        raise DataError(f"{path}: cannot read image: file not found")
    return _decode(path, None, channels, window, dicom_frames, nifti_slice, nan_policy, max_pixels)


class NamedBytes(io.BytesIO):
    """A packed file's bytes that the decoders open like a file and every message names by
    `name` (e.g. `SET/shard-000003.tar: 00000017.png`): `f"{source}: ..."` prints it."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


Source = Path | NamedBytes  # what the format readers open: a file, or a file's bytes


def read_image_bytes(data: bytes, ext: str, name: str, *, channels: int | None = None,
                     window: tuple[float, float] | None = None, dicom_frames: str = "first",
                     nifti_slice: int | None = None, nan_policy: str = "raise",
                     max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """`read_image` for a file's bytes held in memory (a tar shard's member): the same decoders
    (Pillow, tifffile, pydicom read file objects; NIfTI from its bytes), the same scaling.

    Args:
        data: the file's bytes, unchanged.
        ext: its extension without the dot ("png", "dcm", "nii.gz"; "" sniffs the magic bytes).
        name: where the bytes come from, named in every error.
        channels, window, dicom_frames, nifti_slice, nan_policy, max_pixels: as `read_image`.

    Raises:
        DataError: as `read_image`, naming `name`.
    """
    _check_arguments(channels, window, dicom_frames, nan_policy)
    kind = _kind_of_name(f"x.{ext}") or _kind_of_magic(data[:132])
    return _decode(NamedBytes(data, name), kind, channels, window, dicom_frames, nifti_slice, nan_policy, max_pixels)


def _check_arguments(channels: int | None, window: tuple[float, float] | None, dicom_frames: str,
                     nan_policy: str) -> None:
    if dicom_frames not in ("first", "all"):
        raise ValueError(f"dicom_frames must be 'first' or 'all', got {dicom_frames!r}")
    if channels is not None and channels < 1:
        raise ValueError(f"channels must be None or >= 1, got {channels}")
    if window is not None and window[1] <= 0:
        raise ValueError(f"window width must be > 0, got window={window}")
    if nan_policy not in ("raise", "zero"):
        raise ValueError(f"nan_policy must be 'raise' or 'zero', got {nan_policy!r}")


def _decode(path: Source, kind: str | None, channels: int | None, window: tuple[float, float] | None,
            dicom_frames: str, nifti_slice: int | None, nan_policy: str, max_pixels: int | None) -> np.ndarray:
    """One image from a file (`kind` None: found by `_format_of`) or its bytes -> float32 (C, H, W) in [0, 1]."""
    try:
        kind = kind or _format_of(path)
        if kind == "pillow":
            image = _scale(_finite(read_pillow(path, max_pixels), path, nan_policy))
        elif kind == "tiff":
            image = _scale(_finite(_read_tiff(path, max_pixels), path, nan_policy))
        elif kind == "dicom":
            image = _read_dicom(path, window, dicom_frames, nan_policy, max_pixels)
        elif kind == "nifti":
            image = _read_nifti(path, nifti_slice, nan_policy, max_pixels)
        else:
            raise DataError(f"{path}: cannot read image: unknown format "
                            "(expected PNG, JPEG, BMP, TIFF, DICOM or NIfTI)")
    except DECODE_ERRORS as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]  # one line, bounded
        raise DataError(f"{path}: cannot read image: {reason}") from e
    return _to_channels(image, channels, path)


def _format_of(path: Path) -> str:
    """'pillow', 'tiff', 'dicom', 'nifti' or 'unknown', from the extension, else the magic."""
    kind = _kind_of_name(path.name)
    if kind is not None:
        return kind
    with open(path, "rb") as f:
        return _kind_of_magic(f.read(132))


def _kind_of_name(name: str) -> str | None:
    name = name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    return _SUFFIX_FORMAT.get(Path(name).suffix)


def _kind_of_magic(head: bytes) -> str:
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


def _read_tiff(path: Source, max_pixels: int | None) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]  # multi-page (stack, pyramid): the first page
        # The page's tags give its extent; nothing is decoded before asarray().
        depth = (page.imagedepth,) if page.imagedepth > 1 else ()
        check_pixels(path, (page.imagewidth, page.imagelength, *depth), max_pixels)
        arr, axes = page.asarray(), page.axes
    if axes == "YX":
        return arr[None]
    if axes == "YXS":  # interleaved samples (RGB)
        return arr.transpose(2, 0, 1)
    if axes == "SYX":  # planar samples
        return arr
    raise DataError(f"{path}: cannot read image: unsupported TIFF page layout {axes!r}")


def _finite(arr: np.ndarray, path: Source, nan_policy: str) -> np.ndarray:
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


def _read_dicom(path: Source, window: tuple[float, float] | None, frames: str, nan_policy: str,
                max_pixels: int | None) -> np.ndarray:
    header = pydicom.dcmread(path, stop_before_pixels=True)  # the size check reads no pixel data
    n_frames = int(header.get("NumberOfFrames") or 1)
    read_frames = (n_frames,) if frames == "all" and n_frames > 1 else ()  # "first" decodes one frame
    check_pixels(path, (int(header.get("Columns") or 0), int(header.get("Rows") or 0), *read_frames), max_pixels)
    if isinstance(path, NamedBytes):
        path.seek(0)  # read again from the start
    ds = pydicom.dcmread(path)
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(f"{path}: cannot read image: DICOM file has no pixel data")
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
    return _voi_to_unit(arr, ds, window, photometric)


def _voi_to_unit(arr: np.ndarray, ds: pydicom.Dataset, window: tuple[float, float] | None,
                 photometric: str) -> np.ndarray:
    """Modality values -> [0, 1] through pydicom's `apply_voi_lut`, its output range mapped to
    [0, 1]; MONOCHROME1 inverted. `ds` is edited: the user's window replaces the file's."""
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
    windowed = _usable_window(ds)
    lut = window is None and _usable_lut(ds)  # the user's window wins over the file's LUT
    if lut:
        out, white = _lut_lookup(arr, ds)
        lo, hi = 0.0, float(white)
    elif windowed:
        if "BitsStored" not in ds:  # float pixel data: the output range is normalised away anyway
            ds.BitsStored = int(ds.get("BitsAllocated") or 16)
        with np.errstate(over="ignore"):  # SIGMOID far from the centre: exp overflows to the right limit
            out = apply_voi_lut(arr, ds, prefer_lut=False)
            # pydicom's own output range (it depends on bits, sign and rescale): where +-inf land.
            ends = apply_voi_lut(np.array([-np.inf, np.inf]), ds, prefer_lut=False)
        lo, hi = float(ends.min()), float(ends.max())
    else:
        out, lo, hi = arr, float(arr.min()), float(arr.max())
    unit = _rescale(out, lo, hi)
    if photometric == "MONOCHROME1" and hi > lo:  # low = bright: invert so high = bright; constant stays 0
        unit = np.subtract(1.0, unit, out=unit)
    return unit


def _usable_window(ds: pydicom.Dataset) -> bool:
    """Whether `ds` has a window pydicom can apply; normalises it to the first (center, width)
    and a VOI LUT Function pydicom accepts. A broken window in a file (empty, width <= 0, not a
    number) is ignored, as viewers do, rather than refusing the image."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return False
    try:
        center = float(center[0] if isinstance(center, MultiValue) else center)
        width = float(width[0] if isinstance(width, MultiValue) else width)
    except (TypeError, ValueError, IndexError):
        return False
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        return False
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function == "LINEAR" and width < 1:
        function = "LINEAR_EXACT"  # LINEAR is defined for width >= 1 only (PS3.3 C.11.2.1.2.1)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    if "PhotometricInterpretation" not in ds:
        ds.PhotometricInterpretation = "MONOCHROME2"  # what a grey image without one is read as
    return True


def _usable_lut(ds: pydicom.Dataset) -> bool:
    """Whether the first VOI LUT Sequence item has what pydicom's `apply_voi_lut` needs."""
    items = ds.get("VOILUTSequence")
    return bool(items) and all(items[0].get(key) is not None for key in ("LUTDescriptor", "LUTData"))


def _lut_lookup(arr: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, int]:
    """The first VOI LUT applied by pydicom's `apply_voi_lut`, and the LUT's white level.

    pydicom 3.0 builds its LUT indices in the LUT's own dtype, so an index past 255 (8-bit LUT)
    or past 65535 wraps silently. The input is therefore rounded (a LUT is indexed by integers;
    floats draw a warning) and clipped to the LUT's domain first, which the standard does anyway
    (below the first entry -> first, above the last -> last), and an 8-bit LUT is looked up as
    16-bit: same entries, wider indices.

    White: 2**n - 1 for the bits the largest entry needs, at most the LUT Descriptor's n.
    Vendors often declare 16 bits for entries that stop at 4095; taken literally, that image
    would use 1/16 of the grey range.
    """
    item = ds.VOILUTSequence[0]
    count, first, declared = (int(v) for v in item.LUTDescriptor)
    domain = np.arange(first, first + (count or 2**16), dtype=np.int64)
    if declared == 8:
        item.LUTDescriptor = [count, first, 16]
    entries = apply_voi_lut(domain, ds, prefer_lut=True)  # every entry (pydicom knows US/OW, endianness)
    out = apply_voi_lut(np.clip(np.rint(arr), domain[0], domain[-1]).astype(np.int64), ds, prefer_lut=True)
    return out, 2 ** max(1, min(declared, int(entries.max()).bit_length())) - 1


def _read_nifti(path: Source, index: int | None, nan_policy: str, max_pixels: int | None) -> np.ndarray:
    if isinstance(path, NamedBytes):  # nibabel opens files by name; a packed file is parsed from its bytes
        raw = path.getvalue()
        img = nib.Nifti1Image.from_bytes(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    else:
        img = nib.load(path)  # reads the header; the voxels stay on disk until sliced
    shape = img.shape
    check_pixels(path, shape[:2], max_pixels)  # one slice: voxel axes 0 and 1
    depth = shape[2] if len(shape) >= 3 else 1
    k = depth // 2 if index is None else index
    if not -depth <= k < depth:
        raise DataError(f"{path}: nifti_slice={index} is out of range; the volume has {depth} "
                        "slices along its last spatial axis")
    # Slicing the proxy reads only this slice (of the first volume of a 4D series) from disk.
    where = (slice(None), slice(None)) + ((k,) + (0,) * (len(shape) - 3) if len(shape) > 2 else ())
    plane = _finite(np.asarray(img.dataobj[where]), path, nan_policy)
    return _rescale(plane, plane.min(), plane.max())[None]


def _to_channels(image: np.ndarray, channels: int | None, path: Source) -> np.ndarray:
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
                  max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  ) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Decode, resize and stack images into one float16 (N, C, h, w) tensor in [0, 1].

    float16 halves memory (the batch path converts to float32). Decoding runs in threads:
    Pillow, tifffile and numpy release the GIL.

    Args:
        paths: image files.
        size: (h, w) of every output image.
        channels: output channels (see `read_image`).
        window, dicom_frames, nan_policy, max_pixels: passed to `read_image`.
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
                               dicom_frames=dicom_frames, nan_policy=nan_policy, max_pixels=max_pixels)
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
