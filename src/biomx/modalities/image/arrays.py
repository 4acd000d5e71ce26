"""In-memory 2D images for `biomx.predictor`: arrays prepared exactly as image files are.

An array goes through the steps `decode.read_image` and `pipeline.read_inputs` take for a file
(intensity scaling by dtype, channel conversion, resizing through float16, the run's
normalisation), so an array and the PNG/TIFF holding it give the same prediction.

Layouts (what Pillow, imageio and torch give):
    one image      (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4
    a batch        a list of those; or one array (N, H, W), (N, H, W, C) or (N, C, H, W)
One 3-D array is one image when its last axis is a channel axis (1, 3 or 4 long), else N grey
images (N, H, W); give one channels-first image in a list, or as (1, C, H, W).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomx.data.cases import Scan
from biomx.errors import DataError
from biomx.modalities.common.scans import check_finite
from biomx.modalities.image.decode import _finite, _scale, _to_channels, resize_image

_CHANNELS = (1, 3, 4)
LAYOUTS = "(H, W), (H, W, C) or (C, H, W) per image; (N, H, W), (N, H, W, C) or (N, C, H, W) for a batch"


def as_numpy(obj: Any) -> np.ndarray:
    """A numpy view of an array, tensor or Pillow image (what `np.asarray` takes)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    return np.asarray(obj)


def _channels_first(a: np.ndarray, name: str) -> np.ndarray:
    """One image -> (C, H, W), as `read_pillow` gives a file (channel-last wins when both fit)."""
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3 and a.shape[-1] in _CHANNELS:
        return a.transpose(2, 0, 1)
    if a.ndim == 3 and a.shape[0] in _CHANNELS:
        return a
    raise DataError(f"{name}: an array of shape {tuple(a.shape)} is not a 2D image ({LAYOUTS}); "
                    "this run reads 2D images")  # fmt: skip


def split_images(objects: Any) -> list[tuple[str, np.ndarray]]:
    """The images of a batch (see the module docstring) as (name, (C, H, W) array) pairs."""
    if isinstance(objects, (np.ndarray, torch.Tensor)):
        a = as_numpy(objects)
        if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in _CHANNELS):  # one image, else N grey ones
            return [("[0]", _channels_first(a, "[0]"))]
        if a.ndim not in (3, 4):
            raise DataError(f"an array of shape {tuple(a.shape)} does not hold 2D images ({LAYOUTS}); "
                            "this run reads 2D images")  # fmt: skip
        objects = list(a)
    found = []
    for i, obj in enumerate(objects):
        name = f"[{i}]"
        if isinstance(obj, (str, Path)):  # a path that is not there (the predictor reads files)
            raise DataError(f"{obj}: no such file or folder (an image run reads image files or arrays)")
        a = as_numpy(obj)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise DataError(f"{name}: a {type(obj).__name__} is not an image array (an image run reads "
                            "image files or arrays)")  # fmt: skip
        found.append((name, _channels_first(a.astype(np.uint8) if a.dtype == bool else a, name)))
    return found


def read_objects(preprocessing: dict[str, Any], objects: Any) -> tuple[torch.Tensor, list[str]]:
    """In-memory images -> the model-ready float batch `read_inputs` makes of files, and names.

    Raises:
        DataError: not an image array (a string, a 3-D volume), channels that do not convert,
            NaN or infinite pixels under the run's nan_policy "raise".
    """
    size, channels = tuple(preprocessing["image_size"]), preprocessing["channels"]
    nan_policy = preprocessing.get("nan_policy", "raise")
    images = split_images(objects)
    out = torch.empty((len(images), channels, *size), dtype=torch.float16)  # as decode_images stores files
    for row, (name, a) in enumerate(images):
        scaled = _scale(_finite(a, Path(name), nan_policy))
        out[row] = resize_image(_to_channels(scaled, channels, Path(name)), size)
    x = out.float()
    if preprocessing["mean"] is not None:
        mean = torch.tensor(preprocessing["mean"]).view(1, -1, 1, 1)
        x = (x - mean) / torch.tensor(preprocessing["std"]).view(1, -1, 1, 1)
    return x, [name for name, _ in images]


def scan_from_array(array: Any, name: str, nan_policy: str = "raise") -> Scan:
    """An in-memory 2D image as `scans.read_scan` reads a file: (C, H, W) float32, raw values."""
    if isinstance(array, (str, Path)):  # a path that is not there (the predictor reads files)
        raise DataError(f"{array}: no such file or folder (an image run reads image files or arrays)")
    a = _channels_first(as_numpy(array), name).astype(np.float32)
    return Scan(check_finite(a, name, nan_policy, "data.image.scan.nan_policy"), (1.0, 1.0), name)
