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
from biomx.protocols import Modality, SpatialModality
from biomx.tasks.segmentation import data
from biomx.tasks.segmentation.config import SegmentationConfig
from biomx.tasks.segmentation.task import (
    SEGMENTATION_QUICK_METRICS,
    SegmentationTask,
    build_segmentation_task,
)

name = "segmentation"
config = SegmentationConfig
quick_metric_names = SEGMENTATION_QUICK_METRICS


def _dims(cfg: ExperimentConfig, modality: Modality) -> int:
    if not isinstance(modality, SpatialModality):
        raise ConfigError(f"task.kind: segmentation needs images or volumes; data.modality {cfg.data.modality!r} "
                          "has no pixels to label")  # fmt: skip
    return modality.spatial_dims


def check_config(cfg: ExperimentConfig, modality: Modality) -> None:
    _dims(cfg, modality)
    if cfg.data.source not in modality.pair_sources:
        raise ConfigError(f"task.kind: segmentation reads image/mask pairs from data.source: "
                          f"{' or '.join(modality.pair_sources)}; {cfg.data.source!r} has no masks")  # fmt: skip
    if cfg.eval.mc_dropout:
        raise ConfigError("eval.mc_dropout: not available for segmentation yet; use model.ensemble")


def load(cfg: ExperimentConfig, modality: Modality) -> Samples:
    """Every (image, mask) case, preprocessed into the case cache (only keys travel on)."""
    _dims(cfg, modality)
    return data.load(cfg, modality)


def targets(cfg: ExperimentConfig, samples: Samples) -> tuple[torch.Tensor, np.ndarray | None]:
    """Case numbers: the masks stay in the case cache. Splits are drawn at random."""
    return torch.arange(len(samples.ids)), None


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
