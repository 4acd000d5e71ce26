"""Regression: one or several continuous targets (NaN = not measured), as a `TaskType` plug-in.

Targets are standardised on the training split for training and predicted in their own units.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.protocols import Modality
from biomx.tasks.regression.config import RegressionConfig
from biomx.tasks.regression.targets import encode_values
from biomx.tasks.regression.task import METRICS, RegressionTask, build_regression_task

name = "regression"
config = RegressionConfig
quick_metric_names = tuple(METRICS)


def check_config(cfg: ExperimentConfig, modality: Modality) -> None:
    """Nothing beyond the config schema."""


def load(cfg: ExperimentConfig, modality: Modality) -> Samples:
    return modality.load(cfg)


def targets(cfg: ExperimentConfig, samples: Samples) -> tuple[torch.Tensor, np.ndarray | None]:
    """Float targets (NaN = missing); splits are drawn at random, not stratified."""
    return encode_values(samples), None


def build(cfg: ExperimentConfig, samples: Samples, targets: torch.Tensor, train_index: np.ndarray) -> RegressionTask:
    columns = cfg.data.label_column if isinstance(cfg.data.label_column, list) else [cfg.data.label_column]
    names = [cfg.task.target_name] if cfg.task.target_name and len(columns) == 1 else columns
    task = build_regression_task(names, cfg.task.loss or "mse")
    task.fit_scaling(targets[train_index].numpy())  # standardise on train; predict in units
    return task


def build_datasets(cfg: ExperimentConfig, modality: Modality, samples: Samples, targets: torch.Tensor,
                   splits: dict[str, np.ndarray]) -> tuple[dict[str, Dataset], dict[str, Any], dict[str, Any]]:
    return modality.build_datasets(samples, targets, splits, cfg)


def from_info(info: dict[str, Any]) -> RegressionTask:
    return build_regression_task(info["targets"], info["loss"], info["mean"], info["std"])


__all__ = ["RegressionTask", "build_regression_task"]
