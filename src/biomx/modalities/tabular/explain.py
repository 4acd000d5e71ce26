"""Report sections for a tabular run: the encoding, the LightGBM baseline, attributions."""

from __future__ import annotations

from torch import nn

from biomx.config import ExperimentConfig
from biomx.protocols import Task, TestView


def explain(model: nn.Module, task: Task, test: TestView, n: int, cfg: ExperimentConfig) -> list[dict]:
    return []
