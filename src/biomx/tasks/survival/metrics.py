"""Survival metrics in numpy: Kaplan-Meier, the censoring distribution, Harrell's and Uno's
concordance, the IPCW Brier score, cumulative/dynamic AUC, the log-rank test and calibration.

They follow scikit-survival's definitions (the tests compare every number with
`sksurv.metrics` on real data) but take plain arrays and score a bootstrap resample in one
call, without building structured arrays. Higher risk means an earlier event.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import trapezoid  # np.trapezoid is numpy >= 2 only
from scipy.stats import chi2

TIED_TOL = 1e-8  # risk scores this close count as tied (sksurv's tied_tol)
_PAIR_BLOCK = 2_000_000  # pairwise comparisons per block, to bound memory on large test sets


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique times, S(t) just after each): the product-limit estimate."""
    times, inverse = np.unique(time, return_inverse=True)
    deaths = np.bincount(inverse, weights=event.astype(float), minlength=len(times))
    leaving = np.bincount(inverse, minlength=len(times))
    at_risk = len(time) - np.concatenate([[0], np.cumsum(leaving)[:-1]])
    return times, np.cumprod(1.0 - deaths / at_risk)


def step_at(times: np.ndarray, values: np.ndarray, t: np.ndarray, before: float = 1.0) -> np.ndarray:
    """A right-continuous step function (value at the last time <= t; `before` ahead of the first)."""
    k = np.searchsorted(times, np.asarray(t, dtype=np.float64), side="right") - 1
    return np.where(k >= 0, values[np.clip(k, 0, None)], before)


class Censoring:
    """The censoring survival function G(t) = P(C > t) of the training split (reverse Kaplan-Meier,
    events leave the risk set before censorings at the same time), for inverse-probability-of-
    censoring weights. Past the last training time it stays at its last value."""

    def __init__(self, time: np.ndarray, event: np.ndarray) -> None:
        event = np.asarray(event) > 0.5
        times, inverse = np.unique(time, return_inverse=True)
        censored = np.bincount(inverse, weights=(~event).astype(float), minlength=len(times))
        events = np.bincount(inverse, weights=event.astype(float), minlength=len(times))
        leaving = np.bincount(inverse, minlength=len(times))
        at_risk = len(time) - np.concatenate([[0], np.cumsum(leaving)[:-1]]) - events
        ratio = np.divide(censored, at_risk, out=np.zeros(len(times)), where=censored > 0)
        self.times, self.prob = times, np.cumprod(1.0 - ratio)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        return step_at(self.times, self.prob, t)

    def inverse(self, t: np.ndarray) -> np.ndarray:
        """1 / G(t), 0 where G is 0 (no weight can be given there)."""
        g = self(t)
        return np.divide(1.0, g, out=np.zeros_like(g), where=g > 0)


def concordance(time: np.ndarray, event: np.ndarray, risk: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Harrell's C (weights None) or the weighted C of Uno (weights 1/G(T_i)^2, 0 past tau).

    A pair (i, j) is comparable when i had the event and T_j > T_i, or T_j == T_i and j was
    censored; it is concordant when risk_i > risk_j, and a tie in risk counts one half.
    NaN without a comparable pair."""
    event = np.asarray(event) > 0.5
    rows = np.flatnonzero(event if weights is None else event & (weights > 0))
    w = np.ones(len(time)) if weights is None else weights
    num = den = 0.0
    step = max(1, _PAIR_BLOCK // max(len(time), 1))
    for start in range(0, len(rows), step):
        i = rows[start:start + step]
        comparable = (time[None, :] > time[i, None]) | ((time[None, :] == time[i, None]) & ~event[None, :])
        diff = risk[i, None] - risk[None, :]
        tied = np.abs(diff) <= TIED_TOL
        score = np.where(tied, 0.5, (diff > 0).astype(float))
        num += float((w[i] * (score * comparable).sum(axis=1)).sum())
        den += float((w[i] * comparable.sum(axis=1)).sum())
    return num / den if den > 0 else float("nan")


def uno_weights(time: np.ndarray, event: np.ndarray, censoring: Censoring, tau: float) -> np.ndarray:
    """1 / G(T_i)^2 for the events before tau, 0 otherwise (Uno et al. 2011)."""
    w = np.square(censoring.inverse(time))
    return np.where((np.asarray(event) > 0.5) & (time < tau), w, 0.0)


def brier_scores(time: np.ndarray, event: np.ndarray, surv: np.ndarray, grid: np.ndarray,
                 censoring: Censoring) -> np.ndarray:
    """IPCW Brier score at each grid time (Graf et al. 1999); surv is (N, len(grid))."""
    event = np.asarray(event) > 0.5
    case = (time[:, None] <= grid[None, :]) & event[:, None]
    control = time[:, None] > grid[None, :]
    w_case = censoring.inverse(time)[:, None]
    w_control = censoring.inverse(grid)[None, :]
    return np.mean(surv**2 * case * w_case + (1.0 - surv) ** 2 * control * w_control, axis=0)


def integrated_brier(time: np.ndarray, event: np.ndarray, surv: np.ndarray, grid: np.ndarray,
                     censoring: Censoring) -> float:
    """The Brier score integrated over the grid (trapezoid), divided by the grid's span."""
    scores = brier_scores(time, event, surv, grid, censoring)
    return float(trapezoid(scores, grid) / (grid[-1] - grid[0]))


def dynamic_auc(time: np.ndarray, event: np.ndarray, risk: np.ndarray, horizons: np.ndarray,
                censoring: Censoring) -> np.ndarray:
    """Cumulative/dynamic AUC at each horizon h: cases had the event by h (weighted 1/G(T_i)),
    controls are still event-free after h; risk is (N,) or (N, len(horizons)). NaN where a
    horizon has no case or no control."""
    event = np.asarray(event) > 0.5
    risk = np.broadcast_to(risk.reshape(len(risk), -1), (len(risk), len(horizons)))
    w = censoring.inverse(time)
    out = np.full(len(horizons), np.nan)
    for k, h in enumerate(horizons):
        cases = np.flatnonzero((time <= h) & event & (w > 0))
        controls = np.flatnonzero(time > h)
        if len(cases) == 0 or len(controls) == 0:
            continue
        diff = risk[cases, k][:, None] - risk[controls, k][None, :]
        score = np.where(np.abs(diff) <= TIED_TOL, 0.5, (diff > 0).astype(float)).mean(axis=1)
        out[k] = float((w[cases] * score).sum() / w[cases].sum())
    return out


def logrank(time: np.ndarray, event: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """(chi-square, p-value) of the log-rank test that all groups share one survival curve."""
    event = np.asarray(event) > 0.5
    labels = np.unique(groups)
    if len(labels) < 2 or not event.any():
        return float("nan"), float("nan")
    times = np.unique(time[event])
    at_risk = (time[None, :] >= times[:, None])  # (T, N)
    died = (time[None, :] == times[:, None]) & event[None, :]
    member = groups[None, :] == labels[:, None]  # (G, N)
    n = at_risk.sum(axis=1).astype(float)  # (T,)
    d = died.sum(axis=1).astype(float)
    n_g = (at_risk[None] & member[:, None]).sum(axis=2).astype(float)  # (G, T)
    d_g = (died[None] & member[:, None]).sum(axis=2).astype(float)
    expected = n_g * d / n
    observed_minus = (d_g - expected).sum(axis=1)[:-1]
    factor = np.divide(d * (n - d), n**2 * (n - 1), out=np.zeros_like(n), where=n > 1)
    frac = n_g[:-1]
    cov = -(frac[:, None, :] * frac[None, :, :] * factor).sum(axis=2)
    cov[np.diag_indices_from(cov)] += (frac * n * factor).sum(axis=1)
    stat = float(observed_minus @ np.linalg.pinv(cov) @ observed_minus)
    return stat, float(chi2.sf(stat, len(labels) - 1))


def calibration(time: np.ndarray, event: np.ndarray, surv_at_h: np.ndarray, h: float, groups: int = 10) -> dict:
    """Mean predicted survival at h against the Kaplan-Meier estimate, per risk group (deciles of
    the predicted survival; fewer when there are fewer than 5 samples per group)."""
    groups = max(1, min(groups, len(time) // 5))
    order = np.argsort(-surv_at_h, kind="stable")  # lowest risk first
    rows = {"predicted": [], "observed": [], "n": []}
    for part in np.array_split(order, groups):
        km_t, km_s = kaplan_meier(time[part], event[part])
        rows["predicted"].append(float(surv_at_h[part].mean()))
        rows["observed"].append(float(step_at(km_t, km_s, np.array([h]))[0]))
        rows["n"].append(len(part))
    gap = np.abs(np.array(rows["predicted"]) - np.array(rows["observed"]))
    return {"horizon": float(h), **rows, "mean_abs_error": float(np.average(gap, weights=rows["n"]))}
