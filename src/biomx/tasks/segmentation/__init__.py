"""Segmentation: a label for every pixel of 2D images or voxel of 3D volumes, as a `TaskType` plug-in.

Reads image/mask pairs (a modality's paired source) into a case cache, trains on patches, evaluates
whole test scans by sliding windows on their own grids and writes masks back in each scan's
geometry. Works over any modality with `spatial_dims` (image: 2, volume: 3).
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
from biomx.tasks.segmentation import data
from biomx.tasks.segmentation.config import SegmentationConfig
from biomx.tasks.segmentation.task import (
    SEGMENTATION_QUICK_METRICS,
    SegmentationTask,
    build_segmentation_task,
)
from biomx.tasks.spatial import case_numbers, check_pair_source, spatial_dims

name = "segmentation"
config = SegmentationConfig
quick_metric_names = SEGMENTATION_QUICK_METRICS


def _dims(cfg: ExperimentConfig, modality: Modality) -> int:
    return spatial_dims(cfg, modality, "to label")


def check_config(cfg: ExperimentConfig, modality: Modality) -> None:
    _dims(cfg, modality)
    check_pair_source(cfg, modality, "image/mask pairs", "{source} has no masks")
    if cfg.eval.mc_dropout:
        raise ConfigError("eval.mc_dropout: not available for segmentation yet; use model.ensemble")


def load(cfg: ExperimentConfig, modality: Modality) -> Samples:
    """Every (image, mask) case, preprocessed into the case cache (only keys travel on)."""
    _dims(cfg, modality)
    return data.load(cfg, modality)


targets = case_numbers  # the masks stay in the case cache; splits are drawn at random


def build(cfg: ExperimentConfig, samples: Samples, targets: torch.Tensor, train_index: np.ndarray) -> SegmentationTask:
    return build_segmentation_task(cfg.task.classes or samples.default_classes, cfg.task.loss,
                                   cfg.task.min_component_size)  # fmt: skip


def build_datasets(cfg: ExperimentConfig, modality: Modality, samples: Samples, targets: torch.Tensor,
                   splits: dict[str, np.ndarray]) -> tuple[dict[str, Dataset], dict[str, Any], dict[str, Any]]:
    """Training patches (augmented), fixed validation patches, whole test cases."""
    return data.build_datasets(samples, splits, cfg, modality.scan_settings(cfg)[0])


def from_info(info: dict[str, Any]) -> SegmentationTask:
    return build_segmentation_task(info["classes"], info.get("loss"), info.get("min_component_size", 0.0))


__all__ = ["SegmentationTask", "build_segmentation_task"]
