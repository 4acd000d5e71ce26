"""`task:` for detection (task.kind: detection): classes, where boxes come from, patches, anchors,
the detector's thresholds and sliding windows."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from biomx.config import Fraction, PositiveInt, TaskConfig

Size = Annotated[int, Field(gt=0, le=1024)]


class DetectionConfig(TaskConfig):
    kind: Literal["detection"] = "detection"
    classes: list[str] | None = None  # names of the box classes (no background); default: the pairs' labels
    # where the boxes come from: "instances" (one box per label value of the paired masks),
    # "components" (one box per connected component of each class), or "auto" (instances when a
    # mask holds more values than classes, else components)
    boxes_from: Literal["auto", "instances", "components"] = "auto"
    # a box file instead of the masks: a CSV or MONAI's detection JSON (docs/detection.md, Box files);
    # its images are the dataset's (a mask is then optional)
    boxes: str | None = None
    boxes_space: Literal["voxel", "world"] = "voxel"  # CSV rows without a `space` cell
    world_frame: Literal["RAS", "LPS"] | None = None  # world coordinates' frame; default CSV RAS, JSON LPS
    boxes_key: str = "training"  # the JSON's list of cases
    patch_size: Annotated[list[Size], Field(min_length=2, max_length=3)] | None = None  # required, e.g. [128, 128]
    pos_ratio: Fraction = 0.7  # share of training patches centred on a box (the rest: anywhere)
    patches_per_case: PositiveInt = 8  # training patches per case per epoch
    val_patches_per_case: PositiveInt = 4
    max_boxes_per_patch: Annotated[int, Field(gt=0, le=4096)] = 256  # padding of the box targets
    # anchors: `anchors_per_level` shapes per feature-map level from the training boxes (k-means
    # on log sizes), or given here in patch pixels/voxels as [[h, w(, d)], ...] (the same on every level)
    anchors_per_level: Annotated[int, Field(gt=0, le=9)] = 3
    anchor_shapes: list[list[Annotated[float, Field(gt=0)]]] | None = None
    # training samples per patch: the hard-negative sampler keeps this many anchors, a share positive
    samples_per_image: PositiveInt = 64
    positive_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.3
    # training losses and matching (docs/detection.md, Tuning): ATSS candidates per level and box,
    # the box loss (smooth L1 on encoded deltas, or GIoU on decoded boxes), the classification loss
    atss_candidates: Annotated[int, Field(gt=0, le=64)] = 4
    box_loss: Literal["smooth_l1", "giou"] = "smooth_l1"
    cls_loss: Literal["bce", "focal"] = "bce"
    score_threshold: Fraction = 0.05  # boxes below this score are dropped
    nms_iou: Annotated[float, Field(gt=0.0, le=1.0)] = 0.22  # IoU above which overlapping boxes are suppressed
    detections_per_image: Annotated[int, Field(gt=0, le=10_000)] = 100
    fusion: Literal["nms", "wbf"] = "nms"  # how boxes of overlapping windows are merged
    overlap: Fraction = 0.25  # sliding-window inference: overlap of neighbouring windows
    sw_batch_size: PositiveInt = 4  # sliding-window inference: windows per forward pass
    # a trained segmentation run's folder (relative to the working directory): its masks' connected
    # components as boxes, scored beside the detector on the test split (docs/detection.md, Baseline)
    baseline: str | None = None
