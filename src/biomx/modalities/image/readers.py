"""2D medical images: from files on disk to a batch of tensors, in the order an image goes.

1. `read_image` decodes one file (PNG/JPEG/BMP, TIFF, DICOM, NIfTI) to float32 (C, H, W) in [0, 1].
2. `resize_image` brings it to the training size.
3. Sources (`records_from_folder`, `records_from_csv`, `load_npz_splits`) list a dataset's files
   (or arrays) with their labels and patient ids.
4. `decode_images` decodes the whole list once, in threads, into ONE float16 tensor.
5. `ImageTensorDataset.__getitems__` indexes and augments (`Augment`) a whole batch of that
   tensor at once, so loading costs milliseconds, not a Python loop per sample.
"""

from __future__ import annotations

import csv
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import tifffile
import torch
import torch.nn.functional as F
from nibabel.filebasedimages import ImageFileError
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from torch.utils.data import Dataset

from biomx.data.batching import batch_generator, collate_batch  # noqa: F401 (re-exported)
from biomx.errors import DataError

_SUFFIX_FORMAT = {".png": "pillow", ".jpg": "pillow", ".jpeg": "pillow", ".bmp": "pillow",
                  ".tif": "tiff", ".tiff": "tiff", ".dcm": "dicom", ".dicom": "dicom"}

# Decoders raise many exception types on damaged files; these mean "this file is bad".
# (pydicom raises AttributeError for a missing required tag, Pillow SyntaxError for a broken PNG.)
_DECODE_ERRORS = (
    OSError, ValueError, EOFError, KeyError, IndexError, AttributeError, SyntaxError,
    RuntimeError, NotImplementedError, struct.error, zlib.error, zipfile.BadZipFile,
    InvalidDicomError, ImageFileError, Image.DecompressionBombError,
)

# Pillow modes that numpy cannot use directly -> the mode we convert them to.
_PILLOW_CONVERT = {"1": "L", "P": "RGB", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB",
                   "LAB": "RGB", "HSV": "RGB"}


# ---- 1. One file -> float32 (C, H, W) in [0, 1] ---------------------------------------------


def read_image(path: str | Path, *, channels: int | None = None,
               window: tuple[float, float] | None = None, dicom_frames: str = "first",
               nifti_slice: int | None = None) -> np.ndarray:
    """Read one 2D image file as float32 (C, H, W) with intensities in [0, 1].

    The format comes from the extension, else the magic bytes (DICOM exports often have none).
    Scaling: uint8 /255; wider integers min-max between their 0.5 and 99.5 percentiles (16-bit
    microscopy and X-ray rarely use the full range); floats min-max. DICOM: Modality LUT
    (slope/intercept), then the VOI window (`window`, else the file's first WindowCenter/Width,
    else min-max); MONOCHROME1 is inverted so high = bright; colour is scaled by its bit depth.
    NIfTI: one slice, min-max. A constant image gives zeros.

    Args:
        path: the image file.
        channels: None keeps the native channels; 1 converts RGB(A) to grey (ITU-R 601 luma);
            3 repeats grey or drops alpha.
        window: DICOM VOI window (center, width) in modality units (e.g. HU); ignored otherwise.
        dicom_frames: "first" reads frame 0 of a multi-frame DICOM; "all" stacks every frame as
            channels (C = n_frames, or 3 * n_frames frame-major for colour), scaled jointly.
        nifti_slice: index along the last spatial axis of a NIfTI volume (negative from the
            end); default the middle slice. 4D: first volume. H, W = voxel axes 0, 1 (as MONAI).

    Returns:
        float32 array (C, H, W) in [0, 1].

    Raises:
        DataError: missing, corrupt, truncated or unsupported file; `nifti_slice` out of range;
            channels that cannot be converted.
        ValueError: an invalid `dicom_frames`, `channels` or `window` width.
    """
    path = Path(path)
    if dicom_frames not in ("first", "all"):
        raise ValueError(f"dicom_frames must be 'first' or 'all', got {dicom_frames!r}")
    if channels is not None and channels < 1:
        raise ValueError(f"channels must be None or >= 1, got {channels}")
    if window is not None and window[1] <= 0:
        raise ValueError(f"window width must be > 0, got window={window}")
    if not path.is_file():
        raise DataError(f"{path}: cannot read image: file not found")
    try:
        kind = _format_of(path)
        if kind == "pillow":
            image = _scale(_read_pillow(path))
        elif kind == "tiff":
            image = _scale(_read_tiff(path))
        elif kind == "dicom":
            image = _read_dicom(path, window, dicom_frames)
        elif kind == "nifti":
            image = _read_nifti(path, nifti_slice)
        else:
            raise DataError(f"{path}: cannot read image: unknown format "
                            "(expected PNG, JPEG, BMP, TIFF, DICOM or NIfTI)")
    except _DECODE_ERRORS as e:
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


def _read_pillow(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()  # decode now, so a truncated file fails here
        mode = _PILLOW_CONVERT.get(img.mode)
        arr = np.asarray(img.convert(mode) if mode else img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


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


def _read_dicom(path: Path, window: tuple[float, float] | None, frames: str) -> np.ndarray:
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
    arr = apply_modality_lut(arr, ds)  # stored values -> modality units (HU for CT)
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


def _read_nifti(path: Path, index: int | None) -> np.ndarray:
    img = nib.load(path)
    shape = img.shape
    depth = shape[2] if len(shape) >= 3 else 1
    k = depth // 2 if index is None else index
    if not -depth <= k < depth:
        raise DataError(f"{path}: nifti_slice={index} is out of range; the volume has {depth} "
                        "slices along its last spatial axis")
    # Slicing the proxy reads only this slice (of the first volume of a 4D series) from disk.
    where = (slice(None), slice(None)) + ((k,) + (0,) * (len(shape) - 3) if len(shape) > 2 else ())
    plane = np.asarray(img.dataobj[where])
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


# ---- 2. Resize -------------------------------------------------------------------------------


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


# ---- 3. Sources: which files (or arrays) make up a dataset ---------------------------------


@dataclass
class ImageRecords:
    """Image files with their labels and (optional) patient ids, index-aligned.

    `labels` holds a class name (str) per image, or for multilabel data a list of names.
    `groups` holds a patient id per image (None when unknown), for patient-level splits.
    """

    paths: list[Path]
    labels: list[Any]
    groups: list[str | None]

    def __post_init__(self) -> None:
        if not len(self.paths) == len(self.labels) == len(self.groups):
            raise ValueError("paths, labels and groups must have the same length")

    def __len__(self) -> int:
        return len(self.paths)


def is_image_file(path: Path) -> bool:
    # Sniffs unknown extensions: DICOM exports often have none, or a UID ("1.2.840.113619.2.55").
    try:
        return _format_of(path) != "unknown"
    except OSError:
        return False


def image_files_under(folder: Path) -> list[Path]:
    """Every image file below `folder`, sorted; hidden files and folders (".name") skipped."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and is_image_file(p)
    )  # fmt: skip


def records_from_folder(root: str | Path) -> ImageRecords:
    """List a folder-per-class tree: `root/<class>/**/<image files>`, label = class folder name.

    Hidden files and folders (".name") and non-image files are skipped.

    Args:
        root: the folder holding one subfolder per class.

    Returns:
        ImageRecords sorted by class then path, with groups all None.

    Raises:
        DataError: root is not a folder, has no class folders, or a class folder has no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected root/<class>/<image files>")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class folders; expected root/<class>/<image files>")
    paths: list[Path] = []
    labels: list[Any] = []
    for class_dir in class_dirs:
        files = image_files_under(class_dir)
        if not files:
            raise DataError(f"{class_dir}: class folder has no image files (.png .jpg .bmp .tif "
                            ".dcm .nii .nii.gz); add images or remove the folder")
        paths += files
        labels += [class_dir.name] * len(files)
    return ImageRecords(paths, labels, [None] * len(paths))


def records_from_csv(path: str | Path, *, path_column: str = "path", label_column: str = "label",
                     group_column: str | None = "patient_id",
                     root: str | Path | None = None) -> ImageRecords:
    """List images from a CSV manifest: one row per image, with its path, label and patient id.

    Relative paths are resolved against `root`, else the CSV's folder (files are not opened
    here: `decode_images` reports unreadable ones). If any label contains "|", the data is
    multilabel and every label becomes a list ("a|b" -> ["a", "b"]). The group column is
    optional; an empty group cell gives None.

    Args:
        path: the CSV file (UTF-8, optional BOM, first line = header).
        path_column: column with image paths.
        label_column: column with class names.
        group_column: column with patient ids (None or absent: no groups).
        root: folder that relative paths are relative to.

    Returns:
        ImageRecords in row order.

    Raises:
        DataError: unreadable CSV, missing column, or a row with an empty path or label
            (rows are numbered as in a spreadsheet: header = row 1).
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read CSV: {' '.join(str(e).split())}") from e
    for arg, column in (("path_column", path_column), ("label_column", label_column)):
        if column not in header:
            found = ", ".join(header) or "none"
            raise DataError(f"{path}: missing column {column!r} (columns found: {found}); "
                            f"rename the column or pass {arg}=...")
    has_groups = group_column is not None and group_column in header
    paths: list[Path] = []
    raw_labels: list[str] = []
    groups: list[str | None] = []
    for row_number, row in enumerate(rows, start=2):
        for column in (path_column, label_column):
            if not (row.get(column) or "").strip():  # a short row gives None
                raise DataError(f"{path}: row {row_number}: empty {column!r}")
        paths.append(base / row[path_column].strip())  # an absolute path stays absolute
        raw_labels.append(row[label_column].strip())
        groups.append(((row.get(group_column) or "").strip() or None) if has_groups else None)
    labels: list[Any] = raw_labels
    if any("|" in label for label in raw_labels):
        labels = [[s.strip() for s in label.split("|") if s.strip()] for label in raw_labels]
    return ImageRecords(paths, labels, groups)


def load_npz_splits(path: str | Path, check_images: Callable[[np.ndarray, Path, str], np.ndarray] | None = None,
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Load a MedMNIST-style npz: `train_images`, `train_labels`, `val_*`, optional `test_*`.

    Args:
        path: the .npz archive (no pickles are loaded).
        check_images: validates and shapes one `<split>_images` array (array, path, name);
            default: 2D images (below). Volumes pass their own.

    Returns:
        split name -> (images uint8 (N, C, H, W), labels int64 (N,) single-label or (N, K)
        multilabel). Grey (N, H, W) gains a channel axis; (N, H, W, 3) moves to (N, 3, H, W).

    Raises:
        DataError: unreadable or corrupt archive, missing array, or bad shapes or dtypes.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read npz: {' '.join(str(e).split())}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not an .npz archive (a single .npy array?); save with np.savez")
    with archive:
        keys = sorted(archive.files)
        splits = {}
        for split in ("train", "val", "test"):
            names = (f"{split}_images", f"{split}_labels")
            if split == "test" and not any(name in keys for name in names):
                continue
            for name in names:
                if name not in keys:
                    raise DataError(f"{path}: missing array {name!r} (found: {', '.join(keys)})")
            try:
                images, labels = archive[names[0]], archive[names[1]]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise DataError(f"{path}: corrupt array in {split!r}: {' '.join(str(e).split())}") from e
            splits[split] = ((check_images or _npz_images)(images, path, names[0]),
                             _npz_labels(labels, len(images), path, names[1]))
    return splits


def npz_labels_and_ids(splits: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str] | None, path: Path,
                       ) -> tuple[list, list[str], dict[str, np.ndarray]]:  # fmt: skip
    """Class names per row, row ids ("<split>:<i>") and each split's rows, in split order.

    Integer labels are named by `classes` (task.classes), else "0".."K-1" with K counted over
    all splits; multilabel rows (N, K) become lists of names.

    Raises:
        DataError: a class index outside `classes`, or a multilabel width that differs from it.
    """
    first = next(iter(splits.values()))[1]
    count = first.shape[1] if first.ndim == 2 else int(max(y.max(initial=0) for _, y in splits.values())) + 1
    names = classes or [str(i) for i in range(count)]
    labels, ids, predefined, start = [], [], {}, 0
    for split, (_, y) in splits.items():
        labels += _label_names(y, names, path, split)
        ids += [f"{split}:{i}" for i in range(len(y))]
        predefined[split] = np.arange(start, start + len(y))
        start += len(y)
    return labels, ids, predefined


def _label_names(y: np.ndarray, names: list[str], path: Path, split: str) -> list:
    if y.ndim == 2:  # multilabel
        if y.shape[1] != len(names):
            raise DataError(f"{path}: {split}_labels has {y.shape[1]} label columns but {len(names)} classes "
                            "are named in task.classes")  # fmt: skip
        return [[names[k] for k in np.flatnonzero(row)] for row in y]
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(names)):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise DataError(f"{path}: {split}_labels has class index {bad} but only {len(names)} classes are named "
                        "in task.classes")  # fmt: skip
    return [names[int(k)] for k in y]


def _npz_images(images: np.ndarray, path: Path, name: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DataError(f"{path}: {name} must be uint8, got {images.dtype}")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[-1] in (1, 3, 4):  # channels last
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if images.ndim == 4 and images.shape[1] in (1, 3, 4):  # already channels first
        return images
    raise DataError(f"{path}: {name} has shape {images.shape}; expected 2D images (N, H, W), "
                    "(N, H, W, C) or (N, C, H, W) with C in 1, 3, 4")


def _npz_labels(labels: np.ndarray, n: int, path: Path, name: str) -> np.ndarray:
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise DataError(f"{path}: {name} must hold integer class ids, got {labels.dtype}")
    if labels.ndim == 2 and labels.shape[1] == 1:  # MedMNIST stores single labels as (N, 1)
        labels = labels[:, 0]
    if labels.ndim not in (1, 2) or len(labels) != n:
        raise DataError(f"{path}: {name} has shape {labels.shape}; expected ({n},) or ({n}, K)")
    return labels.astype(np.int64)


# ---- 4. Many files -> one float16 tensor ---------------------------------------------------


def decode_images(paths: list[Path], *, size: tuple[int, int], channels: int,
                  window: tuple[float, float] | None = None, dicom_frames: str = "first",
                  on_error: str = "raise", workers: int = 0,
                  ) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Decode, resize and stack images into one float16 (N, C, h, w) tensor in [0, 1].

    float16 halves memory (the batch path converts to float32). Decoding runs in threads:
    Pillow, tifffile and numpy release the GIL.

    Args:
        paths: image files.
        size: (h, w) of every output image.
        channels: output channels (see `read_image`).
        window, dicom_frames: passed to `read_image`.
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
                               dicom_frames=dicom_frames)
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


# ---- 5. Batches: whole-batch augmentation on tensors ---------------------------------------


@dataclass(frozen=True)
class Augment:
    """Random augmentations applied to a whole (B, C, H, W) batch at once; all off by default.

    Rotation, scale and translation form ONE affine resampling per sample (bilinear). Intensity
    ops draw one value per sample: brightness multiplies by U(1-b, 1+b), contrast scales around
    the sample mean by U(1-c, 1+c), gamma raises to exp(U(-g, g)), noise adds N(0, noise^2);
    the result is clamped to [0, 1].

    Attributes:
        hflip, vflip: probability of a horizontal / vertical flip.
        rotate: max rotation in degrees (uniform in [-rotate, rotate]).
        scale: (min, max) zoom factor, > 1 zooms in.
        translate: max shift as a fraction of the image size.
        brightness, contrast, gamma, noise: strengths, see above.
        padding: grid_sample padding for the affine ("zeros", "border" or "reflection").
    """

    hflip: float = 0.0
    vflip: float = 0.0
    rotate: float = 0.0
    scale: tuple[float, float] | None = None
    translate: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    noise: float = 0.0
    padding: str = "zeros"

    def __post_init__(self) -> None:
        if not (0 <= self.hflip <= 1 and 0 <= self.vflip <= 1):
            raise ValueError(f"flip probabilities must be in [0, 1], got {self}")
        strengths = (self.rotate, self.translate, self.brightness, self.contrast, self.gamma,
                     self.noise)
        if min(strengths) < 0 or (self.scale is not None and min(self.scale) <= 0):
            raise ValueError(f"augmentation strengths must be >= 0 and scale > 0, got {self}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment float (B, C, H, W) in [0, 1] (not in place); draws come only from `generator`."""
        b = x.shape[0]

        def uniform(lo: float, hi: float) -> torch.Tensor:  # one draw per sample, shape (B,)
            return torch.rand(b, generator=generator) * (hi - lo) + lo

        hflip = uniform(0, 1) < self.hflip if self.hflip > 0 else torch.zeros(b, dtype=torch.bool)
        vflip = uniform(0, 1) < self.vflip if self.vflip > 0 else torch.zeros(b, dtype=torch.bool)
        if self.rotate > 0 or self.scale is not None or self.translate > 0:
            x = self._affine(x, uniform, hflip, vflip)
        else:
            if self.hflip > 0:
                x = torch.where(hflip.view(b, 1, 1, 1), x.flip(-1), x)
            if self.vflip > 0:
                x = torch.where(vflip.view(b, 1, 1, 1), x.flip(-2), x)
        if self.brightness > 0 or self.contrast > 0:
            x = self._brightness_contrast(x, uniform)
        if self.gamma > 0:  # pow needs x >= 0
            x = x.clamp(0, 1).pow_(uniform(-self.gamma, self.gamma).exp().view(b, 1, 1, 1))
        if self.noise > 0:
            x = torch.add(x, torch.randn(x.shape, generator=generator), alpha=self.noise)
        return x.clamp(0, 1)

    def _affine(self, x: torch.Tensor, uniform: Callable[[float, float], torch.Tensor],
                hflip: torch.Tensor, vflip: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        angle = uniform(-self.rotate, self.rotate).deg2rad()
        zoom = uniform(*self.scale) if self.scale is not None else torch.ones(b)
        # affine_grid maps output to input coordinates in [-1, 1]; zooming in by s samples the
        # input at coords / s. The h/w factors keep rotation rigid on non-square images.
        # Flips negate an output axis, so they ride along in the same single resampling.
        cos, sin = angle.cos() / zoom, angle.sin() / zoom
        sx, sy = 1 - 2 * hflip.float(), 1 - 2 * vflip.float()
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * h / w * sy
        theta[:, 1, 0], theta[:, 1, 1] = sin * w / h * sx, cos * sy
        theta[:, 0, 2] = uniform(-self.translate, self.translate) * 2  # 2 = width of [-1, 1]
        theta[:, 1, 2] = uniform(-self.translate, self.translate) * 2
        grid = _affine_grid(theta.to(x.dtype), h, w)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=self.padding,
                             align_corners=False)

    def _brightness_contrast(self, x: torch.Tensor,
                             uniform: Callable[[float, float], torch.Tensor]) -> torch.Tensor:
        b = x.shape[0]
        gain = uniform(1 - self.brightness, 1 + self.brightness) if self.brightness > 0 \
            else torch.ones(b)
        offset = torch.zeros(b)
        if self.contrast > 0:
            # c * (gain * x - m) + m, with m = gain * mean(x): folded into one multiply-add
            c = uniform(1 - self.contrast, 1 + self.contrast)
            # (the mean in float64 is the same to the last bit whatever the thread count)
            mean = x.mean(dim=(1, 2, 3), dtype=torch.float64).float()
            gain, offset = gain * c, (1 - c) * gain * mean
        return torch.addcmul(offset.view(b, 1, 1, 1), x, gain.view(b, 1, 1, 1))


def _affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """F.affine_grid(theta, (B, C, h, w), align_corners=False) as ONE matmul (10x faster on CPU)."""
    ys = (torch.arange(h, dtype=theta.dtype) * 2 + 1) / h - 1  # pixel centres in [-1, 1]
    xs = (torch.arange(w, dtype=theta.dtype) * 2 + 1) / w - 1
    ones = torch.ones(h, w, dtype=theta.dtype)
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), ones], dim=-1)  # (h, w, 3)
    return torch.einsum("hwk,bjk->bhwj", base, theta)


class ImageTensorDataset(Dataset):
    """Images held in one tensor, served as augmented, already-stacked batches.

    DataLoader calls `__getitems__` with a batch's indices; use `collate_fn=collate_batch`.
    Each batch's random generator is seeded from (seed, epoch, first index, batch length), so
    augmentations are identical with any number of workers and after a resume. Call
    `set_epoch` before each epoch (with worker processes, before creating the iterator; do not
    use persistent_workers, which keep the old epoch).

    Volumes (N, C, D, H, W) are served the same way (`volume_pipeline`), with a 3D `augment`.

    Args:
        images: uint8 (divided by 255) or float16/float32, shaped (N, C, H, W) or (N, C, D, H, W).
        targets: one per row of `index` (or of `images`): (M,) or (M, K).
        augment: batch augmentation `augment(x, generator) -> x`, or None.
        normalize: (mean, std), scalars or one per channel, applied after augmentation.
        seed: base seed of the augmentation.
        index: the rows of `images` this dataset serves (a split of a tensor shared with the
            other splits, not copied); None: every row.

    Raises:
        ValueError: wrong shapes, dtypes or normalize length.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, *,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 normalize: tuple[Sequence[float] | float, Sequence[float] | float] | None = None,
                 seed: int = 0, index: torch.Tensor | None = None) -> None:
        if images.ndim not in (4, 5) or images.dtype not in (torch.uint8, torch.float16, torch.float32):
            raise ValueError(f"images must be uint8/float16/float32 (N, C, H, W) or (N, C, D, H, W), got "
                             f"{images.dtype} {tuple(images.shape)}")
        self.index = None if index is None else torch.as_tensor(index, dtype=torch.long)
        rows = len(images) if self.index is None else len(self.index)
        if rows != len(targets):
            raise ValueError(f"{rows} images but {len(targets)} targets")
        self.images, self.targets = images, targets
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.mean = self.std = None
        if normalize is not None:
            c, spatial = images.shape[1], [1] * (images.ndim - 2)
            self.mean, self.std = (torch.tensor(v, dtype=torch.float32).reshape(-1, *spatial)
                                   for v in normalize)
            if self.mean.shape[0] not in (1, c) or self.std.shape[0] not in (1, c):
                raise ValueError(f"normalize needs 1 or {c} values for mean and std")

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the next batches' augmentations."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the batch (x float32 (B, C, *S), y) for `indices`, augmented."""
        index = torch.as_tensor(indices, dtype=torch.long)
        rows = index if self.index is None else self.index[index]
        x = self.images[rows].float()  # advanced indexing copies: in-place ops are safe
        if self.images.dtype == torch.uint8:
            x.div_(255)
        if self.augment is not None:
            x = self.augment(x, batch_generator(self.seed, self.epoch, indices))
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x, self.targets[index]
