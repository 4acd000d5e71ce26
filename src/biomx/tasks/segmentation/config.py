"""`task:` for segmentation (task.kind: segmentation): classes, loss, patches, sliding windows."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from biomx.config import Fraction, PositiveFloat, PositiveInt, TaskConfig


class SegmentationConfig(TaskConfig):
    kind: Literal["segmentation"] = "segmentation"
    classes: list[str] | None = None  # class names, background first; default: dataset.json labels
    loss: Literal["dice", "dice_ce", "focal"] | None = None  # default dice_ce
    # predicted connected components smaller than this (mm^3 for volumes, pixels for 2D images)
    # become background; 0 keeps them all
    min_component_size: Annotated[float, Field(ge=0.0)] = 0.0
    patch_size: Annotated[list[Annotated[int, Field(gt=0, le=512)]], Field(min_length=2, max_length=3)] | None = None  # training patch, e.g. [96, 96, 96] (required)
    pos_ratio: Fraction = 0.5  # share of patches centred on a foreground voxel
    patches_per_case: PositiveInt = 4  # training patches per case per epoch
    val_patches_per_case: PositiveInt = 2
    overlap: Fraction = 0.5  # sliding-window inference: overlap of neighbouring windows
    sw_batch_size: PositiveInt = 4  # sliding-window inference: windows per forward pass
    surface_tolerance_mm: PositiveFloat = 1.0  # surface Dice tolerance

