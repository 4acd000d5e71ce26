"""Detection: boxes around objects (nuclei, lesions, nodules) in 2D images and 3D volumes, as a
`TaskType` plug-in.

Reads image/mask pairs (a modality's paired source) into the case cache and takes one box per
instance or connected component of each mask; trains MONAI's RetinaNet (`retinanet`, registered in
the model zoo, `biomx.models.detection`) on patches around boxes and at random; evaluates whole test scans
by sliding windows with the boxes of overlapping windows fused, and writes boxes in each scan's
voxel and world coordinates. See docs/detection.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.errors import ConfigError
from biomx.protocols import Modality
from biomx.tasks.detection import data
from biomx.tasks.detection.config import DetectionConfig
from biomx.tasks.detection.task import DETECTION_QUICK_METRICS, DetectionTask, build_detection_task
from biomx.tasks.spatial import case_numbers, check_pair_source, spatial_dims

name = "detection"
config = DetectionConfig
quick_metric_names = DETECTION_QUICK_METRICS


def _dims(cfg: ExperimentConfig, modality: Modality) -> int:
    return spatial_dims(cfg, modality, "to put boxes on")


def check_config(cfg: ExperimentConfig, modality: Modality) -> None:
    dims = _dims(cfg, modality)
    check_pair_source(cfg, modality, "images (and masks, or task.boxes)", "not {source}")
    if cfg.task.patch_size is not None and len(cfg.task.patch_size) != dims:
        raise ConfigError(f"task.patch_size: {len(cfg.task.patch_size)} values for {dims}D data; give {dims}")
    if cfg.eval.mc_dropout:
        raise ConfigError("eval.mc_dropout: not available for detection; use model.ensemble")


def load(cfg: ExperimentConfig, modality: Modality) -> Samples:
    _dims(cfg, modality)
    return data.load(cfg, modality)


targets = case_numbers  # the images stay in the case cache, the boxes in `samples.inputs`


def build(cfg: ExperimentConfig, samples: Samples, targets: torch.Tensor, train_index: np.ndarray) -> DetectionTask:
    inputs = samples.inputs
    shapes = data.anchor_shapes(cfg, inputs, train_index)
    return build_detection_task(inputs.settings["classes"], inputs.settings["spatial_dims"], len(shapes),
                                inputs.settings["patch_size"], cfg.task)  # fmt: skip


def build_datasets(cfg: ExperimentConfig, modality: Modality, samples: Samples, targets: torch.Tensor,
                   splits: dict[str, np.ndarray]) -> tuple[dict[str, Dataset], dict[str, Any], dict[str, Any]]:
    return data.build_datasets(cfg, samples, splits, modality.scan_settings(cfg)[0])


def from_info(info: dict[str, Any]) -> DetectionTask:
    settings = {k: v for k, v in info.items() if k not in ("classes", "spatial_dims", "num_anchors", "patch_size")}
    return build_detection_task(info["classes"], info["spatial_dims"], info["num_anchors"], info["patch_size"],
                                **settings)  # fmt: skip


__all__ = ["DetectionTask", "build_detection_task"]
