"""Statistics shared by the tasks' metrics: NaN-aware means, bootstrap gathering and intervals."""

from __future__ import annotations

import numpy as np

from biomx.errors import ConfigError

BLOCK_VALUES = 2_000_000  # bootstrap resamples are scored in blocks this big, to bound memory


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den == 0 (an undefined metric), without a warning."""
    den = np.asarray(den, dtype=np.float64)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def nanmean(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis (classes) ignoring NaN; NaN if all are, without a warning."""
    valid = ~np.isnan(x)
    return ratio(np.where(valid, x, 0.0).sum(axis=-1), valid.sum(axis=-1))


def gather(views: tuple, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """Resample (N, C) views with (B, N) row indices into (B, C, N) arrays (any number of views)."""
    return tuple(v.T[:, idx].transpose(1, 0, 2) for v in views)


def percentile_ci(values: np.ndarray, ci: float) -> dict[str, float]:
    """Percentile interval of the defined (non-NaN) bootstrap values; NaN if none."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return {"ci_low": float("nan"), "ci_high": float("nan")}
    low, high = np.percentile(values, [50 * (1 - ci), 50 * (1 + ci)])
    return {"ci_low": float(low), "ci_high": float(high)}


def as_float(value: object, key: str) -> float:
    """A config number as float, or ConfigError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    return float(value)
