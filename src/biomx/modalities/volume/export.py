"""A volume run's exported graph input: volumes in training intensities, normalised inside.

Classification and regression runs take float32 (batch, C, D, H, W) volumes scaled as the run's
training volumes were (uint8 / 255, or min-max scaled to [0, 1] when read from a scan file; raw
floats for a run trained on float npz volumes). Inside the graph they are resized to the run's
shape (trilinear, align_corners=False: the identity at that shape, so volumes resized outside as
biomx resizes them - area-averaged when an axis shrinks - pass unchanged) and normalised with the
training statistics. Segmentation runs predict whole scans through sliding windows, outside the
graph: their graph takes windows of the patch size (preprocessed scan) and does nothing more to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biomx.data.samples import Samples
from biomx.errors import ExportRefused
from biomx.modalities.volume.pipeline import read_volumes
from biomx.protocols import ExportPlan, GraphInput


class PrepareVolumes(nn.Module):
    """Volumes of any size -> the run's shape (trilinear) -> normalised per channel."""

    def __init__(self, shape: list[int], mean: list[float] | None, std: list[float] | None) -> None:
        super().__init__()
        self.shape = [int(n) for n in shape]
        self.normalise = mean is not None
        self.register_buffer("mean", torch.tensor(mean or [0.0], dtype=torch.float32).view(1, -1, 1, 1, 1))
        self.register_buffer("std", torch.tensor(std or [1.0], dtype=torch.float32).view(1, -1, 1, 1, 1))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        # At the run's shape this is exactly the identity (each voxel maps onto itself), so the
        # graph needs no branch on the input's size.
        x = F.interpolate(raw.float(), size=self.shape, mode="trilinear", align_corners=False)
        return (x - self.mean) / self.std if self.normalise else x


def _segmentation(preprocessing: dict[str, Any]) -> bool:
    return "patch_size" in preprocessing


def _segmentation_plan(preprocessing: dict[str, Any]) -> ExportPlan:
    """One sliding window in; the scan's preprocessing and the windows stay outside."""
    c, patch = preprocessing["channels"], [int(n) for n in preprocessing["patch_size"]]
    scaling = {"ct": f"clipped to the HU window {preprocessing['ct_window']} and scaled to [0, 1]",
               "zscore": "z-scored per channel" + (" over non-zero voxels" if preprocessing["nonzero"] else ""),
               "minmax": "scaled per channel from its 0.5-99.5 percentiles to [0, 1]"}.get(
        preprocessing["intensity"], "left in scanner units")  # fmt: skip
    return ExportPlan(
        prepare=nn.Identity(),
        input=GraphInput(name="volume", dtype="float32", shape=["batch", c, *patch],
                         description=f"windows of {patch[0]}x{patch[1]}x{patch[2]} voxels (the task's patch size), "
                                     f"{c} channel(s), of a preprocessed scan: resampled to spacing "
                                     f"{preprocessing['spacing']}, {scaling}"),
        outside="whole scans go through sliding windows outside the graph: reading (RAS orientation), "
                "resampling, foreground crop, intensity scaling, the windows and their Gaussian-weighted stitching",
        inside=["none: each window goes to the model as it is"],
        example={key: preprocessing.get(key) for key in ("spacing", "intensity", "ct_window", "nonzero",
                                                         "crop_foreground", "patch_size", "overlap", "channels")},
    )  # fmt: skip


def export_plan(preprocessing: dict[str, Any]) -> ExportPlan:
    """Volumes in training intensities in; resizing and normalisation inside (module docstring)."""
    if _segmentation(preprocessing):
        return _segmentation_plan(preprocessing)
    c, shape = preprocessing["channels"], [int(n) for n in preprocessing["shape"]]
    mean, std, kind = preprocessing.get("mean"), preprocessing.get("std"), preprocessing["intensity"]
    size = "x".join(map(str, shape))
    scaling = ("raw float intensities in the units of the training npz" if kind == "float" else
               "intensities in [0, 1]: stored uint8 / 255, or a scan file min-max scaled over the whole volume")  # fmt: skip
    inside = [f"resize to {size} (trilinear, align_corners=False; identity at {size})"]
    if mean is not None:
        inside.append(f"normalise each channel: (x - mean) / std, mean {mean}, std {std} (training volumes)")
    return ExportPlan(
        prepare=PrepareVolumes(shape, mean, std),
        input=GraphInput(name="volume", dtype="float32", shape=["batch", c, "depth", "height", "width"],
                         description=f"{c}-channel volumes, channels first then the axes (D, H, W) as stored "
                                     f"(scan files: canonical RAS orientation), {scaling}; best at {size}"),
        outside=f"reading the volume ({'.npz rows' if kind == 'float' else 'NIfTI, DICOM series, NRRD, MHA or .npz'}), "
                f"scaling its intensities and resizing it to {size} (area-averaged where an axis shrinks, "
                "trilinear where it grows), as biomx reads files",
        inside=inside,
        example={"shape": shape, "channels": c, "intensity": kind, "mean": mean, "std": std},
    )  # fmt: skip


def _refuse_segmentation(preprocessing: dict[str, Any]) -> None:
    if _segmentation(preprocessing):
        raise ExportRefused("volume segmentation: whole scans go through sliding windows outside the graph, "
                            "so there is no raw batch of scans; the graph takes one window at a time")  # fmt: skip


def read_raw(preprocessing: dict[str, Any], inputs: list[str | Path],
             skip_errors: bool = False) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:  # fmt: skip
    """Volume files/folders/npz -> float32 (N, C, D, H, W) at the run's shape, before the
    normalisation; names; skipped inputs."""
    _refuse_segmentation(preprocessing)
    return read_volumes(preprocessing, inputs, skip_errors)


def raw_rows(preprocessing: dict[str, Any], samples: Samples, index: np.ndarray) -> torch.Tensor:
    """The run's volumes at `index` as float32 (uint8 / 255, as the datasets serve them)."""
    _refuse_segmentation(preprocessing)
    volumes = samples.inputs[torch.as_tensor(np.asarray(index), dtype=torch.long)]
    x = volumes.float()
    return x / 255 if volumes.dtype == torch.uint8 else x
