"""The image modality's attribution methods for the explanation checks: Grad-CAM and occlusion."""

from __future__ import annotations

from typing import Any

from torch import nn

from biomx.config import ExperimentConfig
from biomx.explain.sanity import learns
from biomx.modalities.common.attribution_maps import map_methods
from biomx.models.registry import get_entry
from biomx.protocols import TestView


def attribution_methods(model: nn.Module, test: TestView, cfg: ExperimentConfig) -> dict[str, Any]:
    """Grad-CAM at the model's declared CAM layer (as the report's gallery) and occlusion."""
    return map_methods(get_entry(cfg.model.name).cam_layers) if learns(model) else {}
