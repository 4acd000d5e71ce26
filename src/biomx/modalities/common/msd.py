"""Segmentation datasets laid out as the Medical Segmentation Decathlon (MSD) lays them out.

    root/dataset.json   name, tensorImageSize, modality {"0": "CT"}, labels {"0": "background", ...},
                        training [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}],
                        test ["./imagesTs/y.nii.gz"]
    root/imagesTr/  root/labelsTr/  root/imagesTs/

nnU-Net's raw datasets and most exports follow it too. Without dataset.json the folders alone
are paired by file name (nnU-Net's `_0000` channel suffix on images allowed). `read_msd` only
lists and checks files; pixels are read later, one case at a time (`volume.files.read_volume` for
3D volumes, `read_plane` for 2D images), so listing a 50 GB dataset takes milliseconds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from biomx.errors import DataError
from biomx.modalities.common.planar import (
    DECODE_ERRORS,
    DEFAULT_MAX_PIXELS,
    check_pixels,
    open_pillow,
    read_pillow,
)

_PLANE_SUFFIXES = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg")
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
_DIMS = {"2D": 2, "3D": 3, "4D": 3}  # MSD's "4D" = multichannel 3D (e.g. BraTS' 4 MR sequences)
_CHANNEL = re.compile(r"_(\d{4})$")  # nnU-Net: case_0000.nii.gz is channel 0 of `case`


@dataclass
class MsdCase:
    """One training case: its image file and mask file (None: no mask listed)."""

    id: str
    image: Path
    label: Path | None


@dataclass
class MsdDataset:
    """A listed (not yet read) segmentation dataset.

    Attributes:
        classes: class names ordered by label value (classes[0] is the background).
        channels: input channel names from dataset.json's `modality`; [] when not given (the
            files then say how many there are).
        test_images: unlabelled images (imagesTs), for prediction.
        spatial_dims: 2 (TIFF/PNG/... planes) or 3 (volumes).
    """

    name: str
    root: Path
    classes: list[str]
    channels: list[str]
    cases: list[MsdCase]
    test_images: list[Path]
    spatial_dims: int


def case_id(path: Path) -> str:
    """The file name without its extensions (".nii.gz" counts as one)."""
    name = path.name
    for suffix in (".nii.gz", *_VOLUME_SUFFIXES, *_PLANE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_2d_file(path: Path) -> bool:
    """True for 2D image formats (TIFF, PNG, BMP, JPEG), by suffix."""
    return Path(path).suffix.lower() in _PLANE_SUFFIXES


def _is_data_file(path: Path) -> bool:
    """A volume or plane file; not macOS junk (`._x.nii.gz`), hidden files or `.raw` companions."""
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(
        _VOLUME_SUFFIXES + _PLANE_SUFFIXES)


# ---- listing ---------------------------------------------------------------------------------


def read_msd(root: str | Path) -> MsdDataset:
    """List an MSD-style dataset folder and check that every file it names is there.

    Args:
        root: the folder holding dataset.json (optional) and imagesTr/, labelsTr/, imagesTs/.

    Returns:
        the dataset, cases in dataset.json order (else sorted by file name).

    Raises:
        DataError: one line naming dataset.json or the file: a missing folder, invalid JSON,
            a missing "training" key, label keys that are not 0..K-1, a listed file not found,
            duplicate case ids, an image without a mask (or the reverse), mixed 2D/3D files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found (expected dataset.json, imagesTr/, labelsTr/)")
    spec = root / "dataset.json"
    if spec.is_file():
        dataset = _from_json(root, spec)
    else:
        dataset = _from_folders(root)
    _check_unique(dataset, spec if spec.is_file() else root / "imagesTr")
    return dataset


def _from_json(root: Path, spec: Path) -> MsdDataset:
    try:
        info = json.loads(spec.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{spec}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{spec}: cannot read: {' '.join(str(e).split())}") from e
    if not isinstance(info, dict):
        raise DataError(f"{spec}: expected a JSON object with keys name, labels, training, ...")
    if "training" not in info:
        raise DataError(f"{spec}: missing key \"training\" (the list of {{\"image\", \"label\"}} pairs)")
    training = info["training"]
    if not isinstance(training, list) or not training:
        raise DataError(f"{spec}: \"training\" must be a non-empty list of {{\"image\", \"label\"}} objects")
    classes = _ordered(info["labels"], spec, "labels") if "labels" in info else ["background", "foreground"]
    channels = _ordered(info["modality"], spec, "modality") if "modality" in info else []
    cases = []
    for i, entry in enumerate(training):
        where = f"training[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise DataError(f"{spec}: {where} must be an object with an \"image\" path (and a \"label\" path)")
        label = entry.get("label")
        if label is not None and not isinstance(label, str):
            raise DataError(f"{spec}: {where}.label must be a path string, got {label!r}")
        image_path = _listed(root, spec, entry["image"], f"{where}.image")
        cases.append(MsdCase(case_id(root / entry["image"]), image_path,
                             _listed(root, spec, label, f"{where}.label") if label else None))
    test = info.get("test", [])
    if not isinstance(test, list):
        raise DataError(f"{spec}: \"test\" must be a list of image paths")
    test_images = []
    for i, item in enumerate(test):
        item = item.get("image") if isinstance(item, dict) else item  # nnU-Net-style objects too
        if not isinstance(item, str):
            raise DataError(f"{spec}: test[{i}] must be an image path string")
        test_images.append(_listed(root, spec, item, f"test[{i}]"))
    dims = _dims(info.get("tensorImageSize"), spec, [c.image for c in cases] + test_images)
    name = str(info.get("name") or root.name)
    return MsdDataset(name, root, classes, channels, cases, test_images, dims)


def _ordered(mapping: Any, spec: Path, key: str) -> list[str]:
    """{"0": "background", "1": "tumour"} -> names by integer key; keys must be 0..K-1."""
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{spec}: \"{key}\" must be an object like {{\"0\": \"background\", \"1\": \"tumour\"}}")
    by_value = {}
    for k, name in mapping.items():
        try:
            value = int(k)
        except (TypeError, ValueError):
            raise DataError(f"{spec}: {key} key {k!r} is not an integer") from None
        if value in by_value:
            raise DataError(f"{spec}: {key} key {k!r} repeats the value {value}")
        by_value[value] = str(name)
    expected = list(range(len(by_value)))
    if sorted(by_value) != expected:
        missing = sorted(set(expected) - set(by_value))
        extra = sorted(set(by_value) - set(expected))
        hint = f"key {str(missing[0])!r} is missing" if missing else f"key {str(extra[0])!r} is out of range"
        raise DataError(f"{spec}: {key} keys must be 0..{len(by_value) - 1} without gaps; {hint}")
    names = [by_value[v] for v in expected]
    if len(set(names)) != len(names):
        raise DataError(f"{spec}: {key} names repeat: {', '.join(names)}")
    return names


def _listed(root: Path, spec: Path, relative: str, where: str) -> Path:
    """A path from dataset.json ("./imagesTr/x.nii.gz"), resolved against the dataset folder.

    nnU-Net v1 lists "x.nii.gz" but stores "x_0000.nii.gz": that file is taken when it is the
    only channel."""
    path = root / relative
    if path.is_file():
        return path
    cid = case_id(path)
    suffix = path.name[len(cid):]
    alt = path.with_name(f"{cid}_0000{suffix}")
    if alt.is_file() and not path.with_name(f"{cid}_0001{suffix}").exists():
        return alt
    raise DataError(f"{spec}: {where} {relative!r}: file not found ({path})")


def _from_folders(root: Path) -> MsdDataset:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found; an MSD-style dataset needs dataset.json or "
                            "imagesTr/ and labelsTr/")  # fmt: skip
    images = sorted(p for p in images_dir.iterdir() if _is_data_file(p))
    labels: dict[str, Path] = {}
    for label in sorted(p for p in labels_dir.iterdir() if _is_data_file(p)):
        if case_id(label) in labels:
            raise DataError(f"{label}: a second mask for case {case_id(label)!r} (also {labels[case_id(label)].name})")
        labels[case_id(label)] = label
    if not images:
        raise DataError(f"{images_dir}: no image files (.nii.gz, .nrrd, .mha, .tif, .png, ...)")
    cases, used = [], set()
    for image in images:
        cid = case_id(image)
        channel = _CHANNEL.search(cid)
        if cid not in labels and channel and cid[: channel.start()] in labels:
            if channel.group(1) != "0000":
                raise DataError(f"{image}: nnU-Net channel file {channel.group(1)}: separate files per channel "
                                "are not supported; stack the channels in one 4D NIfTI per case")  # fmt: skip
            cid = cid[: channel.start()]
        if cid not in labels:
            raise DataError(f"{image}: no mask for this image in {labels_dir} (expected {labels_dir / image.name})")
        cases.append(MsdCase(cid, image, labels[cid]))
        used.add(cid)
    for cid, label in labels.items():
        if cid not in used:
            raise DataError(f"{label}: no image for this mask in {images_dir}")
    tests_dir = root / "imagesTs"
    test_images = sorted(p for p in tests_dir.iterdir() if _is_data_file(p)) if tests_dir.is_dir() else []
    dims = _dims(None, images_dir, [c.image for c in cases] + test_images)
    return MsdDataset(root.name, root, ["background", "foreground"], [], cases, test_images, dims)


def _dims(tensor_size: Any, where: Path, files: list[Path]) -> int:
    """2 or 3 spatial dimensions: from tensorImageSize, else the files; the two must agree."""
    planes = [is_2d_file(f) for f in files]
    if tensor_size is not None:
        if tensor_size not in _DIMS:
            raise DataError(f"{where}: tensorImageSize {tensor_size!r} is not one of 2D, 3D, 4D")
        dims = _DIMS[tensor_size]
        odd = next((f for f, plane in zip(files, planes, strict=True) if plane != (dims == 2)), None)
        if odd is not None:
            kind = "a 2D image" if dims == 3 else "not a 2D image file (TIFF, PNG, BMP, JPEG)"
            raise DataError(f"{where}: tensorImageSize is {tensor_size} but {odd.name} is {kind}")
        return dims
    if any(planes) and not all(planes):
        plane = files[planes.index(True)]
        volume = files[planes.index(False)]
        raise DataError(f"{where}: mixes 2D images ({plane.name}) and 3D volumes ({volume.name})")
    return 2 if planes and planes[0] else 3


def _check_unique(dataset: MsdDataset, where: Path) -> None:
    seen: dict[str, Path] = {}
    for case in dataset.cases:
        if case.id in seen:
            raise DataError(f"{where}: case id {case.id!r} appears twice ({seen[case.id].name} and "
                            f"{case.image.name}); case ids must be unique")  # fmt: skip
        seen[case.id] = case.image


# ---- 2D files --------------------------------------------------------------------------------


def read_plane(path: Path, *, mask: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a 2D image or mask file (TIFF, PNG, BMP, JPEG) with its values as stored.

    Unlike `image.read_image` (classification: scaled to [0, 1]), intensities are kept raw, so
    the segmentation preprocessing (z-score, CT window, ...) sees the real values.

    Args:
        path: the file.
        mask: True for a label map: one integer class index per pixel.
        max_pixels: a header declaring more pixels is refused before anything is decoded.

    Returns:
        image: float32 (C, H, W); mask: an integer array (H, W) (uint8, uint16, ...;
        a float file with whole-number values becomes int32).

    Raises:
        DataError: missing, truncated or corrupt file; a TIFF stack of several planes; a mask
            with fractional values or with differing colour channels.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: cannot read image: file not found")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = _read_tiff_plane(path, max_pixels)
        elif mask:
            array = _read_pillow_mask(path, max_pixels)
        else:
            array = read_pillow(path, max_pixels)
    except DECODE_ERRORS as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise DataError(f"{path}: cannot read image: {reason}") from e
    if not mask:
        return array.astype(np.float32)
    return _as_mask(array, path)


def _read_tiff_plane(path: Path, max_pixels: int | None) -> np.ndarray:
    """(C, H, W) from the first image series of a TIFF; refuses stacks (a 3D volume as TIFF)."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        extent = [n for n, axis in zip(series.shape, series.axes, strict=True) if axis not in "SC"]
        check_pixels(path, extent[::-1], max_pixels)  # the header's extent, before decoding
        array, axes = series.asarray(), series.axes
    if axes == "YX":
        return array[None]
    if axes == "YXS":  # interleaved samples (RGB)
        return array.transpose(2, 0, 1)
    if axes in ("SYX", "CYX"):
        return array
    raise DataError(f"{path}: TIFF holds {axes} {array.shape} (a stack?); expected one 2D image (YX, YXS or CYX)")


def _read_pillow_mask(path: Path, max_pixels: int | None) -> np.ndarray:
    """Pillow masks keep palette indices (mode P: VOC-style colour masks store class ids)."""
    with open_pillow(path, max_pixels) as img:
        img.load()  # decode now, so a truncated file fails here
        array = np.asarray(img.convert("L") if img.mode == "1" else img)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _as_mask(array: np.ndarray, path: Path) -> np.ndarray:
    """(C, H, W) -> (H, W) integer labels; C > 1 only when every channel is the same (grey saved as RGB)."""
    if len(array) > 1:
        if not (array == array[:1]).all():
            raise DataError(f"{path}: mask has {len(array)} differing colour channels; save one class index "
                            "per pixel (grey or palette image)")  # fmt: skip
    plane = array[0]
    if plane.dtype == np.bool_:
        return plane.astype(np.uint8)
    if np.issubdtype(plane.dtype, np.integer):
        return plane
    if not np.isfinite(plane).all() or (plane != np.round(plane)).any():
        raise DataError(f"{path}: mask holds non-integer values; a mask needs one whole-number class per pixel")
    return plane.astype(np.int32)
