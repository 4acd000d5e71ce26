"""Modality members that several modalities take as they are (a modality that needs more
defines its own): no extra config checks, no split method or command of its own, and content
digests of samples held as one stacked tensor."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.data.splits import row_digests
from biomx.errors import ConfigError


def check_config(cfg: ExperimentConfig) -> None:
    """Nothing beyond the config schema (sources and split methods are checked there)."""


def split(cfg: ExperimentConfig, samples: Samples, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    raise ConfigError(f"data.split.method: {cfg.data.split.method!r} is not a method of the "
                      f"{cfg.data.modality} modality")  # fmt: skip


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """No commands of its own."""


def sample_digests(samples: Samples) -> list[str] | None:
    """A content hash per row when the inputs are one tensor, one row per sample; else None (e.g.
    the cases of a segmentation source, read lazily: not cheap)."""
    inputs = samples.inputs
    return row_digests(inputs) if isinstance(inputs, torch.Tensor) and len(inputs) == len(samples.ids) else None
