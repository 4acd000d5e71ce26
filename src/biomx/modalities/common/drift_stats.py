"""Per-image (or per-volume) intensity statistics for `biomx drift` (`protocols.DriftStatistics`),
shared by the image and volume modalities: computed on the raw graph input, i.e. at the run's size
and on the unit scale, before the run's normalisation, so training rows and new files compare."""

from __future__ import annotations

import numpy as np
import torch

CHUNK = 512  # samples at a time


def intensity_statistics(raw: torch.Tensor) -> dict[str, np.ndarray]:
    """Mean, SD, 5th and 95th percentile of the grey (channel-averaged) intensity per sample, and
    each channel's mean when there are several (a colour cast, a swapped channel)."""
    parts: dict[str, list[np.ndarray]] = {}
    channels = raw.shape[1] if raw.ndim > 2 else 1
    for chunk in raw.split(CHUNK):
        x = chunk.float() / 255 if chunk.dtype == torch.uint8 else chunk.float()
        grey = x.mean(dim=1).reshape(len(x), -1)
        q = np.percentile(grey.numpy(), [5, 95], axis=1)  # numpy: torch.quantile refuses > 2**24 values
        values = {"mean intensity": grey.mean(1), "intensity SD": grey.std(1),
                  "5th percentile": torch.from_numpy(q[0]), "95th percentile": torch.from_numpy(q[1])}  # fmt: skip
        if channels > 1:
            for c in range(channels):
                values[f"channel {c} mean"] = x[:, c].reshape(len(x), -1).mean(1)
        for name, v in values.items():
            parts.setdefault(name, []).append(v.numpy().astype(np.float64))
    return {name: np.concatenate(v) for name, v in parts.items()}
