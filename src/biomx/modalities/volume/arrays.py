"""In-memory 3D volumes for `biomx.predictor`: arrays prepared as the rows of an .npz input are.

A volume array is taken in its stored units, like the run's training .npz and an .npz given to
`biomx predict`: uint8 / 255, other numbers as float32 (NaN or infinite voxels refused), then
resized to the training shape and normalised with the run's statistics. (Scan files, NIfTI and
the like, are min-max scaled on reading instead: pass those as paths.)

Layouts: one volume (D, H, W) or (C, D, H, W); a batch: a list of those, or (N, C, D, H, W).
A 4-D array is one volume when its first axis is the run's channel count (> 1), else N
single-channel volumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomx.data.cases import Scan
from biomx.errors import DataError
from biomx.modalities.common.scans import check_finite
from biomx.modalities.volume.pipeline import _as_float, _resize

LAYOUTS = "(D, H, W) or (C, D, H, W) per volume, (N, C, D, H, W) for a batch"


def _numpy(obj: Any, name: str) -> np.ndarray:
    if isinstance(obj, (str, Path)):  # a path that is not there (the predictor reads files)
        raise DataError(f"{obj}: no such file or folder (a volume run reads volume files or arrays)")
    a = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else np.asarray(obj)
    if a.dtype == object or not np.issubdtype(a.dtype, np.number):
        raise DataError(f"{name}: a {type(obj).__name__} is not a volume array (a volume run reads volume "
                        "files or arrays)")  # fmt: skip
    return a


def _split(objects: Any, channels: int) -> list[tuple[str, np.ndarray]]:
    """(name, (C, D, H, W) array) per volume of a batch (module docstring)."""
    if isinstance(objects, (np.ndarray, torch.Tensor)):
        a = _numpy(objects, "[0]")
        if a.ndim == 3 or (a.ndim == 4 and channels > 1 and a.shape[0] == channels):
            objects = [a]
        elif a.ndim in (4, 5):
            objects = list(a)
        else:
            raise DataError(f"an array of shape {tuple(a.shape)} does not hold volumes ({LAYOUTS}); "
                            "this run reads 3D volumes")  # fmt: skip
    found = []
    for i, obj in enumerate(objects):
        name = f"[{i}]"
        a = _numpy(obj, name)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4:
            raise DataError(f"{name}: an array of shape {tuple(a.shape)} is not a volume ({LAYOUTS}); "
                            "this run reads 3D volumes")  # fmt: skip
        if a.shape[0] != channels:
            raise DataError(f"{name}: volume has {a.shape[0]} channels, the model takes {channels}")
        found.append((name, a))
    return found


def read_objects(preprocessing: dict[str, Any], objects: Any) -> tuple[torch.Tensor, list[str]]:
    """In-memory volumes -> the model-ready batch (N, C, D, H, W) `read_inputs` makes of .npz rows.

    Raises:
        DataError: not a volume array, another channel count, NaN or infinite voxels.
    """
    channels, shape = preprocessing["channels"], preprocessing["shape"]
    volumes, names = [], []
    for name, a in _split(objects, channels):
        if a.dtype != np.uint8:
            a = a.astype(np.float32, copy=False)
            if not np.isfinite(a).all():
                raise DataError(f"{name}: the volume has NaN or infinite voxels")
        volumes.append(_resize(_as_float(torch.from_numpy(np.ascontiguousarray(a))), shape))
        names.append(name)
    x = torch.stack(volumes) if volumes else torch.zeros(0, channels, *shape)
    if preprocessing["mean"] is not None:
        x = (x - torch.tensor(preprocessing["mean"]).view(1, -1, 1, 1, 1)) / torch.tensor(
            preprocessing["std"]).view(1, -1, 1, 1, 1)  # fmt: skip
    return x, names


def scan_from_array(array: Any, name: str, nan_policy: str = "raise") -> Scan:
    """An in-memory volume as a scan (C, X, Y, Z) float32 with 1 mm voxels, in the axis order given."""
    a = _numpy(array, name)
    if a.ndim not in (3, 4):
        raise DataError(f"{name}: an array of shape {tuple(a.shape)} is not a volume ({LAYOUTS})")
    a = (a[None] if a.ndim == 3 else a).astype(np.float32)
    return Scan(check_finite(a, name, nan_policy), (1.0, 1.0, 1.0), name)
