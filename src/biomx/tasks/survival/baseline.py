"""Two baselines a Cox network needs: the Breslow baseline hazard (turns log-risks into survival
curves) and a classical Cox proportional-hazards model fitted on the same inputs, to show what
the network adds over a linear model.

The Breslow estimate is kept as JSON numbers (event times, cumulative hazard, the log-risk
offset), so that a run's survival curves can be rebuilt without pickle.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

PENALIZER = 0.01  # a small ridge penalty: one-hot or collinear columns would not converge without it
MAX_FEATURES = 200  # beyond this a linear Cox fit is slow and ill-posed on typical cohort sizes
MAX_LEVELS = 50  # more distinct whole numbers than this in a column: a count, not level codes


def breslow(time: np.ndarray, event: np.ndarray, log_risk: np.ndarray) -> dict[str, Any]:
    """Breslow's cumulative baseline hazard H0 at each distinct training event time:
    H0(t) = sum over event times s <= t of d_s / sum_{j: T_j >= s} exp(eta_j - offset)."""
    event = np.asarray(event) > 0.5
    offset = float(np.mean(log_risk))  # keeps exp() in range; S(t) does not depend on it
    w = np.exp(np.asarray(log_risk, dtype=np.float64) - offset)
    times = np.unique(time[event])
    deaths = np.array([np.sum(event & (time == t)) for t in times], dtype=np.float64)
    order = np.argsort(time)
    # sum of w over j with T_j >= t: a suffix sum over the sorted times
    suffix = np.cumsum(w[order][::-1])[::-1]
    first = np.searchsorted(time[order], times, side="left")
    cumhaz = np.cumsum(deaths / suffix[first])
    return {"times": times.tolist(), "cumhaz": cumhaz.tolist(), "offset": offset}


def cox_survival(baseline: dict[str, Any], log_risk: np.ndarray, times: np.ndarray) -> np.ndarray:
    """S(t | x) = exp(-H0(t) exp(eta - offset)), (N, len(times)); H0 is a step function, 0 before
    the first training event and constant after the last."""
    base_t = np.asarray(baseline["times"], dtype=np.float64)
    base_h = np.asarray(baseline["cumhaz"], dtype=np.float64)
    k = np.searchsorted(base_t, np.asarray(times, dtype=np.float64), side="right") - 1
    h0 = np.where(k >= 0, base_h[np.clip(k, 0, None)], 0.0)
    scale = np.exp(np.asarray(log_risk, dtype=np.float64).reshape(-1) - baseline["offset"])
    return np.exp(-scale[:, None] * h0[None, :])


def flat_features(data: Dataset) -> np.ndarray | None:
    """All inputs of a dataset as an (N, F) float matrix, when its inputs are one flat feature
    tensor per sample; None otherwise (images, sequences, graphs), looked at on one sample first
    so that an image dataset is not read whole."""
    if len(data) == 0:
        return None
    first = data.__getitems__([0])[0]
    if not isinstance(first, torch.Tensor) or first.dim() != 2 or not first.is_floating_point():
        return None
    x = data.__getitems__(list(range(len(data))))[0]
    return x.double().numpy()


def _level_codes(x_train: np.ndarray) -> dict[int, np.ndarray]:
    """Columns that hold integer level codes (3 to MAX_LEVELS distinct whole numbers in training),
    e.g. an encoded categorical: column -> its training levels. A linear model must not read a
    code as a quantity, so these are one-hot encoded; standardised numbers are never all whole."""
    codes = {}
    for k in range(x_train.shape[1]):
        levels = np.unique(x_train[:, k])
        if 3 <= len(levels) <= MAX_LEVELS and np.all(levels == np.round(levels)):
            codes[k] = levels
    return codes


def _design(x: np.ndarray, keep: np.ndarray, codes: dict[int, np.ndarray]) -> Any:
    """The Cox model's input frame: kept numeric columns, and one indicator per level of each
    coded column but its first (the reference; a level unseen in training gets none)."""
    import pandas as pd

    columns = {f"x{k}": x[:, k] for k in keep if k not in codes}
    for k, levels in codes.items():
        for level in levels[1:]:
            columns[f"x{k}={level:g}"] = (x[:, k] == level).astype(np.float64)
    return pd.DataFrame(columns)


def fit_cox_ph(x_train: np.ndarray, time: np.ndarray, event: np.ndarray) -> tuple[Any | None, str]:
    """(a fitted lifelines CoxPHFitter with how it encodes its inputs, a note) or (None, why not)."""
    try:
        from lifelines import CoxPHFitter
        from lifelines.exceptions import ConvergenceError
    except ImportError:  # an optional dependency: the network's own evaluation does not need it
        return None, "no linear baseline: lifelines is not installed (pip install lifelines)"
    if x_train.shape[1] > MAX_FEATURES:
        return None, f"no linear baseline: {x_train.shape[1]} input features (more than {MAX_FEATURES})"
    keep = np.flatnonzero(x_train.std(axis=0) > 0)  # a constant column has no coefficient
    codes = {k: levels for k, levels in _level_codes(x_train).items() if k in set(keep.tolist())}
    frame = _design(x_train, keep, codes)
    frame["time"], frame["event"] = time, (event > 0.5).astype(int)
    model = CoxPHFitter(penalizer=PENALIZER)
    try:
        with warnings.catch_warnings():  # lifelines warns about convergence details it handles
            warnings.simplefilter("ignore")
            model.fit(frame, duration_col="time", event_col="event")
    except (ConvergenceError, np.linalg.LinAlgError, ValueError) as err:
        return None, f"no linear baseline: the Cox fit did not converge ({str(err).splitlines()[0][:120]})"
    coded = f", {len(codes)} coded as levels (one-hot)" if codes else ""
    return (model, keep, codes), f"lifelines CoxPHFitter, penalizer {PENALIZER}, {len(keep)} features{coded}"


def cox_ph_predict(fitted: Any, x: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log partial hazard (N,), survival at `times` (N, T)) of a fitted classical Cox model."""
    model, keep, codes = fitted
    frame = _design(x, keep, codes)
    risk = np.log(np.asarray(model.predict_partial_hazard(frame), dtype=np.float64))
    surv = np.asarray(model.predict_survival_function(frame, times=np.asarray(times)), dtype=np.float64).T
    return risk, surv
