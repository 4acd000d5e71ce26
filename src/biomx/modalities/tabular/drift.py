"""What `biomx drift` measures of each table row (`protocols.DriftStatistics`): every column of
the raw graph input, numbers as numbers (KS) and categorical columns as their level (chi-square;
a level the run never saw and a missing cell are levels of their own)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def input_statistics(preprocessing: dict[str, Any], raw: torch.Tensor) -> dict[str, np.ndarray]:
    """Column name -> values: numeric columns as floats, categorical ones as level names."""
    encoding = preprocessing["encoding"]
    x = raw.numpy()
    out: dict[str, np.ndarray] = {}
    for j, c in enumerate(encoding["numeric"]):
        out[c["name"]] = x[:, j].astype(np.float64)
    offset = len(encoding["numeric"])
    for j, c in enumerate(encoding["categorical"]):
        codes = x[:, offset + j]
        levels = list(c["levels"])
        out[c["name"]] = np.array(["(missing)" if np.isnan(v) else levels[int(v)] if 0 <= v < len(levels)
                                   else "(unseen level)" for v in codes.tolist()])  # fmt: skip
    return out
