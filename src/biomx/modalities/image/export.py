"""The image modality's members for exported graphs (`protocols.ExportableModality`) and for
explaining single uploaded images (`protocols.ExplainsInputs`).

The graph takes float32 (batch, C, height, width) images scaled to [0, 1], as `decode_images`
gives them; inside it they are resized to the run's size (identity at that size) and normalised
with the training statistics, which is what `read_inputs` does after decoding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biomx.data.samples import Samples
from biomx.modalities.common.gradcam import cam_layer, gradcam, overlay
from biomx.models.registry import get_entry
from biomx.protocols import ExportPlan, GraphInput, Task


class PrepareImages(nn.Module):
    """[0, 1] images of any size -> the run's size (bilinear, no antialiasing) -> normalised."""

    def __init__(self, size: tuple[int, int], mean: list[float] | None, std: list[float] | None) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.normalise = mean is not None
        self.register_buffer("mean", torch.tensor(mean or [0.0]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std or [1.0]).view(1, -1, 1, 1))

    def resized(self, raw: torch.Tensor) -> torch.Tensor:
        # Bilinear with align_corners=False maps each pixel onto itself at the same size, so
        # images decoded at the run's size pass unchanged (no data-dependent branch in the graph).
        return F.interpolate(raw.float(), size=self.size, mode="bilinear", align_corners=False, antialias=False)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        x = self.resized(raw)
        return (x - self.mean) / self.std if self.normalise else x


def prepare_module(preprocessing: dict[str, Any]) -> PrepareImages:
    return PrepareImages(tuple(preprocessing["image_size"]), preprocessing.get("mean"), preprocessing.get("std"))


def export_plan(preprocessing: dict[str, Any]) -> ExportPlan:
    """Raw [0, 1] images in, the run's resizing and normalisation inside the graph."""
    h, w = preprocessing["image_size"]
    c = preprocessing["channels"]
    mean, std = preprocessing.get("mean"), preprocessing.get("std")
    inside = [f"resize to {h}x{w} (bilinear, align_corners=False, no antialiasing; identity at {h}x{w})"]
    if mean is not None:
        inside.append(f"normalise each channel: (x - mean) / std, mean {mean}, std {std} (training images)")
    return ExportPlan(
        prepare=prepare_module(preprocessing),
        input=GraphInput("image", "float32", ["batch", c, "height", "width"],
                         f"{c}-channel images (1: grey, 3: RGB), channels first, pixel values scaled "
                         f"to [0, 1] (uint8 / 255); best at {h}x{w}"),
        outside=(f"decode the file to {c} channel(s) scaled to [0, 1] (uint8 / 255; DICOM after its "
                 f"VOI window) and resize it to {h}x{w}, antialiased when shrinking, as biomx reads files"),
        inside=inside,
        example={"image_size": [h, w], "channels": c, "mean": mean, "std": std,
                 "window": preprocessing.get("window"), "dicom_frames": preprocessing.get("dicom_frames")},
    )  # fmt: skip


def raw_rows(preprocessing: dict[str, Any], samples: Samples, index: np.ndarray) -> torch.Tensor:
    """The given samples' images as float32 in [0, 1] (uint8 / 255, as the datasets serve them)."""
    images = samples.inputs[torch.as_tensor(np.asarray(index), dtype=torch.long)]
    x = images.float()
    return x / 255 if images.dtype == torch.uint8 else x


def _targets(task: Task, preds: np.ndarray) -> tuple[Any, torch.Tensor | None]:
    """(the output each map explains, its sign) for each image's predicted class, through the
    task's explanation hooks: a binary model's negative class is its logit negated."""
    predicted, target = task.attribution_target(preds)
    views = task.class_views(preds, np.zeros(preds.shape))
    predicted = np.asarray(predicted)
    names = [view[0] for view in views]
    if not views or predicted.ndim != 1 or not np.issubdtype(predicted.dtype, np.integer):
        return target, None
    chosen = [views[names.index(task.classes[int(k)])] for k in predicted.tolist()]
    return (torch.tensor([int(v[1]) for v in chosen]), torch.tensor([float(v[2]) for v in chosen]))


def explain_inputs(model: nn.Module, task: Task, preprocessing: dict[str, Any], raw: torch.Tensor,
                   model_name: str) -> list[np.ndarray]:  # fmt: skip
    """One RGB uint8 (H, W, 3) Grad-CAM overlay per raw image, explaining its predicted class at
    the model's declared CAM layer (its zoo entry's `cam_layers`), at the run's image size."""
    prepare = prepare_module(preprocessing)
    with torch.no_grad():
        display = prepare.resized(torch.as_tensor(raw)).clamp(0, 1)
        x = prepare(torch.as_tensor(raw))
        preds = task.predictions(model.eval()(x)).numpy()
    targets, signs = _targets(task, preds)
    layer = cam_layer(model, x, get_entry(model_name).cam_layers)
    maps = gradcam(model, x, targets, layer=layer, signs=signs)
    return [overlay(image.numpy(), heat.detach().numpy()) for image, heat in zip(display, maps, strict=True)]
