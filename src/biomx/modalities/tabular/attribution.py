"""The tabular modality's attribution methods for the explanation checks: integrated gradients (the
report's method) and feature ablation (Captum's `FeatureAblation`: each encoded column set to the
baseline patient's value, one at a time, and the change of the explained output recorded).

Both start from the same baseline patient (training means, no indicator set, the most frequent
level) and are summed to the table's columns, so they compare column by column.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from captum.attr import FeatureAblation
from torch import Tensor, nn

from biomx.config import ExperimentConfig
from biomx.explain.sanity import learns
from biomx.modalities.common.table_encoding import encoded_names
from biomx.modalities.tabular.interpret import attributions, baseline_row, sum_to_columns
from biomx.protocols import TestView


def attribution_methods(model: nn.Module, test: TestView, cfg: ExperimentConfig) -> dict[str, Any]:
    """{"integrated gradients": ..., "feature ablation": ...}, per table column."""
    encoding = getattr(test.data, "encoding", None)
    if encoding is None or not learns(model):
        return {}
    _, encoded_columns = encoded_names(encoding)
    n_continuous = len(encoded_columns) - len(encoding["categorical"])
    base = baseline_row(test.data.x[torch.as_tensor(test.splits["train"])], n_continuous)
    n_encoded = len(encoded_columns)

    def per_column(attr: Tensor) -> np.ndarray:
        return sum_to_columns(attr.detach().float().cpu().numpy()[:, :n_encoded], encoded_columns)[0]

    def integrated_gradients(model: nn.Module, task: Any, x: Tensor, columns: Tensor) -> np.ndarray:
        return per_column(attributions(model, x, base, columns, n_encoded))

    def feature_ablation(model: nn.Module, task: Any, x: Tensor, columns: Tensor) -> np.ndarray:
        with torch.no_grad():
            attr = FeatureAblation(model).attribute(x, baselines=base.to(x.device).expand_as(x), target=columns)
        return per_column(attr)

    return {"integrated gradients": integrated_gradients, "feature ablation": feature_ablation}
