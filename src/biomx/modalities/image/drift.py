"""What `biomx drift` measures of each image (`protocols.DriftStatistics`): its intensity
distribution at the run's size, before the run's normalisation (see
`modalities.common.drift_stats`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from biomx.modalities.common.drift_stats import intensity_statistics


def input_statistics(preprocessing: dict[str, Any], raw: torch.Tensor) -> dict[str, np.ndarray]:
    """Mean, SD and 5th/95th percentile of each image's intensity (channel means for colour)."""
    return intensity_statistics(raw)
