"""Regression: one or several continuous targets (NaN = not measured), as a `TaskType` plug-in.

Targets are standardised on the training split for training and predicted in their own units.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.tasks.regression.config import RegressionConfig
from biomx.tasks.regression.targets import encode_values
from biomx.tasks.regression.task import METRICS, RegressionTask, build_regression_task
from biomx.tasks.rows import build_datasets, check_config, load

name = "regression"
config = RegressionConfig
quick_metric_names = tuple(METRICS)


def targets(cfg: ExperimentConfig, samples: Samples) -> tuple[torch.Tensor, np.ndarray | None]:
    """Float targets (NaN = missing); splits are drawn at random, not stratified."""
    return encode_values(samples), None


def build(cfg: ExperimentConfig, samples: Samples, targets: torch.Tensor, train_index: np.ndarray) -> RegressionTask:
    columns = cfg.data.label_column if isinstance(cfg.data.label_column, list) else [cfg.data.label_column]
    names = [cfg.task.target_name] if cfg.task.target_name and len(columns) == 1 else columns
    task = build_regression_task(names, cfg.task.loss or "mse")
    task.fit_scaling(targets[train_index].numpy())  # standardise on train; predict in units
    return task


def from_info(info: dict[str, Any]) -> RegressionTask:
    return build_regression_task(info["targets"], info["loss"], info["mean"], info["std"])


__all__ = [
    "name",
    "config",
    "quick_metric_names",
    "check_config",
    "load",
    "targets",
    "build",
    "build_datasets",
    "from_info",
    "RegressionTask",
    "build_regression_task",
]
