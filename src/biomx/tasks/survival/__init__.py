"""Survival: right-censored time-to-event targets (time, event), as a `TaskType` plug-in.

`cox` is DeepSurv (the network gives one log-risk, trained on the Cox partial likelihood);
`logistic_hazard` is a discrete-time model (one hazard logit per time bin, Kvamme & Borgan
2021). Both are scored with Harrell's and Uno's C, the integrated Brier score, time-dependent
AUC and calibration, beside a classical Cox model. See docs/survival.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.errors import ConfigError
from biomx.protocols import Modality
from biomx.tasks.rows import build_datasets, load
from biomx.tasks.survival.config import SurvivalConfig
from biomx.tasks.survival.losses import bin_cuts, null_hazard_logits
from biomx.tasks.survival.targets import check_has_events, columns_of, encode_survival
from biomx.tasks.survival.task import QUICK_METRICS, SurvivalTask, task_from_info

name = "survival"
config = SurvivalConfig
quick_metric_names = QUICK_METRICS


def check_config(cfg: ExperimentConfig, modality: Modality) -> None:
    columns = cfg.data.label_column
    if not isinstance(columns, list) or len(columns) != 2:
        raise ConfigError(f"data.label_column: task.kind survival needs two label columns, [time, event]; "
                          f"got {columns!r}")  # fmt: skip


def targets(cfg: ExperimentConfig, samples: Samples) -> tuple[torch.Tensor, np.ndarray | None]:
    """(N, 2) time and event; splits are stratified by the event, so every split has events."""
    encoded = encode_survival(samples)
    return encoded, encoded[:, 1].numpy().astype(np.int64)


def build(cfg: ExperimentConfig, samples: Samples, targets: torch.Tensor, train_index: np.ndarray) -> SurvivalTask:
    """Horizons (default: quartiles of the training event times) and, for the discrete model, the
    time bins come from the training split only."""
    train = targets[train_index].numpy().astype(np.float64)
    event_column = columns_of(samples)[1]
    check_has_events(train, "the training split", event_column)
    event_times = train[train[:, 1] > 0.5, 0]
    horizons = cfg.task.horizons or sorted({float(f"{q:.4g}") for q in np.quantile(event_times, [0.25, 0.5, 0.75])})
    cuts = bin_cuts(train[:, 0], train[:, 1], cfg.task.bins) if cfg.task.model == "logistic_hazard" else None
    offset = null_hazard_logits(train[:, 0], train[:, 1], cuts) if cuts else None
    return SurvivalTask(model=cfg.task.model, horizons=[float(h) for h in horizons], ties=cfg.task.ties, cuts=cuts,
                        offset=offset,
                        tau=cfg.task.tau, time_unit=cfg.task.time_unit, columns=list(columns_of(samples)))


def from_info(info: dict[str, Any]) -> SurvivalTask:
    return task_from_info(info)


__all__ = ["name", "config", "quick_metric_names", "check_config", "load", "targets", "build", "build_datasets",
           "from_info", "SurvivalTask"]  # fmt: skip
