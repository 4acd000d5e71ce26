"""Histories -> one float matrix per patient row, with an encoding fitted on the training patients.

Each row is `[static covariates (the tabular encoding), visits]`, the visits flattened from a
(max_visits, 2V + 3) block: per visit the V standardised values (a variable not measured at this
visit carries its last measured value forward, 0 before its first measurement), V 0/1
indicators of what was measured at this visit, the time since the first visit, the gap since the
previous visit (both divided by `time_scale`), and 1 for a real visit (0 = padding). Visits are
left-aligned; a history longer than `max_visits` keeps its most recent visits.

One flat tensor (not a padded batch object) so every part of biomx that slices, moves or hashes
inputs (batching, MC dropout, predict, duplicate checks) handles it as it handles a table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

STD_FLOOR = 1e-8


def step_size(n_variables: int) -> int:
    return 2 * n_variables + 3


def landmarked(times: np.ndarray, values: np.ndarray, landmark: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Only the visits at or before the landmark (times count from the first visit)."""
    if landmark is None:
        return times, values
    keep = times <= landmark
    return times[keep], values[keep]


def fit_variables(values: list[np.ndarray], train: np.ndarray, variables: list[str]) -> list[dict[str, Any]]:
    """Each variable's mean and sd over the measurements of the training patients only."""
    stacked = np.concatenate([values[i] for i in train]) if len(train) else np.zeros((0, len(variables)))
    out = []
    for k, name in enumerate(variables):
        seen = stacked[:, k][~np.isnan(stacked[:, k])]
        mean = float(seen.mean()) if len(seen) else 0.0
        std = float(seen.std()) if len(seen) else 1.0
        out.append({"name": name, "mean": mean, "std": std if std > STD_FLOOR else 1.0})
    return out


def encode_visits(times: np.ndarray, values: np.ndarray, stats: list[dict[str, Any]], max_visits: int,
                  time_scale: float) -> np.ndarray:  # fmt: skip
    """One patient's (max_visits, 2V + 3) block (see the module docstring)."""
    n_var = len(stats)
    mean = np.array([s["mean"] for s in stats])
    std = np.array([s["std"] for s in stats])
    measured = ~np.isnan(values)
    z = np.where(measured, (np.nan_to_num(values) - mean) / std, np.nan)
    filled = np.zeros_like(z)
    last = np.zeros(n_var)
    for t in range(len(z)):  # forward fill: the last measured value stands until the next one
        last = np.where(measured[t], z[t], last)
        filled[t] = last
    gaps = np.diff(times, prepend=times[:1]) if len(times) else times
    block = np.concatenate([filled, measured.astype(np.float64), (times / time_scale)[:, None],
                            (gaps / time_scale)[:, None], np.ones((len(times), 1))], axis=1)  # fmt: skip
    out = np.zeros((max_visits, step_size(n_var)), np.float32)
    recent = block[-max_visits:]
    out[: len(recent)] = recent
    return out


def encode_all(times: list[np.ndarray], values: list[np.ndarray], stats: list[dict[str, Any]],
               max_visits: int, time_scale: float) -> np.ndarray:  # fmt: skip
    """(patients, max_visits * (2V + 3)) float32."""
    width = max_visits * step_size(len(stats))
    if not times:
        return np.zeros((0, width), np.float32)
    return np.stack([encode_visits(t, v, stats, max_visits, time_scale).reshape(-1)
                     for t, v in zip(times, values, strict=True)])  # fmt: skip
