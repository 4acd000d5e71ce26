"""Test-split scoring of survival predictions: every metric on the split and on bootstrap
resamples of it, and the numbers the report draws (risk groups, example curves, calibration).

The censoring distribution behind the IPCW metrics (Uno's C, the Brier score, dynamic AUC) is
estimated on the training split, as scikit-survival does, so the test split's own censoring does
not weight itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from biomx.tasks.stats import percentile_ci
from biomx.tasks.survival.metrics import (
    Censoring,
    calibration,
    concordance,
    dynamic_auc,
    integrated_brier,
    kaplan_meier,
    logrank,
    uno_weights,
)

GRID_POINTS = 20  # times the Brier score is integrated over
GRID_QUANTILES = (0.1, 0.8)  # of the test times: past 80% few samples remain and the weights explode
EXAMPLES = (0.05, 0.25, 0.5, 0.75, 0.95)  # risk percentiles of the example patients shown
CURVE_POINTS = 60


def ibs_grid(test_time: np.ndarray, train_time: np.ndarray) -> np.ndarray:
    """Grid times within the test follow-up (10th to 80th percentile of its times) and before the
    last training time (where the censoring weights are known)."""
    grid = np.unique(np.quantile(test_time, np.linspace(*GRID_QUANTILES, GRID_POINTS)))
    return grid[grid < train_time.max()]


def metric_names(horizons: list[float], name_of) -> list[str]:
    return ["c_index", "uno_c", "ibs"] + [f"auc_at_{name_of(h)}" for h in horizons]


def score(time: np.ndarray, event: np.ndarray, risk: np.ndarray, surv_grid: np.ndarray, surv_h: np.ndarray,
          grid: np.ndarray, horizons: np.ndarray, censoring: Censoring, tau: float) -> list[float]:
    """The metrics of `metric_names`, in that order (NaN where undefined)."""
    ibs = integrated_brier(time, event, surv_grid, grid, censoring) if len(grid) >= 2 else float("nan")
    return [concordance(time, event, risk), concordance(time, event, risk, uno_weights(time, event, censoring, tau)),
            ibs, *dynamic_auc(time, event, 1.0 - surv_h, horizons, censoring)]  # fmt: skip


def with_intervals(names: list[str], args: tuple, n_bootstrap: int, ci: float, seed: int) -> dict[str, dict]:
    """{name: {value, ci_low, ci_high}}: `score(*args)` on the split and on resamples of its rows
    (the per-sample arrays, the first five of args, are resampled; the rest stay)."""
    point = score(*args)
    rng = np.random.default_rng(seed)
    n = len(args[0])
    boot = np.full((n_bootstrap, len(names)), np.nan)
    for b in range(n_bootstrap):
        idx = rng.integers(0, n, size=n)
        boot[b] = score(*(a[idx] for a in args[:5]), *args[5:])
    return {name: {"value": float(point[k]), **percentile_ci(boot[:, k], ci)} for k, name in enumerate(names)}


def risk_groups(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> dict[str, Any]:
    """Kaplan-Meier curves of the predicted-risk tertiles, and the log-rank test between them."""
    cuts = np.quantile(risk, [1 / 3, 2 / 3])
    group = np.digitize(risk, cuts, right=True)  # 0 low, 1 medium, 2 high
    curves = {}
    for k, label in enumerate(("low risk", "medium risk", "high risk")):
        rows = group == k
        if rows.any():
            t, s = kaplan_meier(time[rows], event[rows])
            curves[label] = {"n": int(rows.sum()), "events": int(event[rows].sum()), "time": t.tolist(),
                             "survival": s.tolist()}  # fmt: skip
    stat, p = logrank(time, event, group)
    return {"curves": curves, "logrank_chi2": stat, "logrank_p": p}


def examples(risk: np.ndarray, curve_times: np.ndarray, survival_fn) -> dict[str, Any]:
    """Predicted curves of the test samples at a few risk percentiles (no ids: they may identify
    patients)."""
    order = np.argsort(risk, kind="stable")
    rows = [int(order[min(len(order) - 1, int(q * len(order)))]) for q in EXAMPLES]
    surv = survival_fn(rows, curve_times)
    return {"time": curve_times.tolist(),
            "curves": [{"percentile": int(100 * q), "survival": surv[k].tolist()} for k, q in enumerate(EXAMPLES)]}


def evaluate(task, preds: np.ndarray, truth: np.ndarray, train_truth: np.ndarray, *, n_bootstrap: int,
             ci: float, seed: int, reference=None) -> dict[str, Any]:
    """The test evaluation: metrics with CIs, and what the report plots.

    `reference` is an optional (risk, survival function of times -> (N, T), note) of a classical
    model scored beside the network on the same rows, grid and censoring weights."""
    from biomx.tasks.survival.task import horizon_name

    time, event = truth[:, 0].astype(np.float64), truth[:, 1].astype(np.float64)
    censoring = Censoring(train_truth[:, 0], train_truth[:, 1])
    grid = ibs_grid(time, train_truth[:, 0])
    horizons = np.asarray(task.horizons, dtype=np.float64)
    tau = float(task.tau or horizons[-1])
    names = metric_names(task.horizons, horizon_name)
    risk = task.risk(preds)
    surv_h = task.survival(preds, horizons)
    args = (time, event, risk, task.survival(preds, grid), surv_h, grid, horizons, censoring, tau)
    evaluation: dict[str, Any] = {
        "kind": "survival", "model": task.model, "headline": list(task.headline), "n": len(time),
        "n_events": int(event.sum()), "ci": float(ci), "n_bootstrap": int(n_bootstrap),
        "metrics": with_intervals(names, args, n_bootstrap, ci, seed),
        "horizons": horizons.tolist(), "tau": tau, "grid": grid.tolist(), "time_unit": task.time_unit,
        "risk_groups": risk_groups(time, event, risk),
    }  # fmt: skip
    curve_times = np.linspace(0.0, float(time.max()), CURVE_POINTS)
    evaluation["examples"] = examples(risk, curve_times, lambda rows, t: task.survival(preds[rows], t))
    middle = len(horizons) // 2
    evaluation["calibration"] = calibration(time, event, surv_h[:, middle], float(horizons[middle]))
    if reference is not None:
        ref_risk, ref_survival, note = reference
        if ref_risk is None:
            evaluation["cox_ph"] = {"note": note}
        else:
            ref_args = (time, event, ref_risk, ref_survival(grid), ref_survival(horizons), *args[5:])
            evaluation["cox_ph"] = {"note": note, "metrics": with_intervals(names, ref_args, n_bootstrap, ci, seed)}
    return evaluation
