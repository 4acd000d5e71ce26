"""What the tasks on whole image/volume cases share in their plug-in modules (today segmentation
and detection): the checks that the modality has pixels and a paired source, and their targets
(case numbers: the arrays stay in the case cache, only keys travel). Plain functions, imported by
each task's __init__.py; no task's name is written here, the caller passes its own words."""

from __future__ import annotations

import numpy as np
import torch

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.errors import ConfigError
from biomx.protocols import Modality, SpatialModality


def spatial_dims(cfg: ExperimentConfig, modality: Modality, missing: str) -> int:
    """The modality's 2 or 3 spatial dimensions; a ConfigError ending in `missing` (what the task
    cannot do without pixels) for a modality without them."""
    if not isinstance(modality, SpatialModality):
        raise ConfigError(f"task.kind: {cfg.task.kind} needs images or volumes; data.modality {cfg.data.modality!r} "
                          f"has no pixels {missing}")  # fmt: skip
    return modality.spatial_dims


def check_pair_source(cfg: ExperimentConfig, modality: Modality, reads: str, refusal: str) -> None:
    """data.source must be one of the modality's paired sources: "task.kind: <kind> reads <reads>
    from data.source: <sources>; <refusal>" otherwise (`refusal` may name the source as {source})."""
    if cfg.data.source not in modality.pair_sources:
        raise ConfigError(f"task.kind: {cfg.task.kind} reads {reads} from data.source: "
                          f"{' or '.join(modality.pair_sources)}; {refusal.format(source=repr(cfg.data.source))}")  # fmt: skip


def case_numbers(cfg: ExperimentConfig, samples: Samples) -> tuple[torch.Tensor, np.ndarray | None]:
    """A `TaskType.targets` for case-cache tasks: the case numbers (their arrays stay in the cache),
    and no stratification (splits are drawn at random)."""
    return torch.arange(len(samples.ids)), None
