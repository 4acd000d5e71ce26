"""Predictive uncertainty: deep ensembles and Monte Carlo dropout, and how well it ranks errors.

Every pass (an ensemble member, a dropout sample) gives predictions in task space
(probabilities, or values in original units). The prediction is their mean and the
uncertainty their standard deviation (Lakshminarayanan et al. 2017; Gal & Ghahramani 2016).
A useful uncertainty is larger where the error is larger: `uncertainty_evaluation` measures
that (Spearman of |error| against std, error in bins of std, and for regression how often
the truth falls inside mean +/- 1.96 std) and draws error against predicted uncertainty.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import spearmanr

N_BINS = 5  # quantile bins of predicted std


def mean_and_std(passes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions of several passes (each (N,) or (N, K)) -> their mean, and std (None for one pass)."""
    stacked = np.stack(passes)
    if len(passes) == 1:
        return stacked[0], None
    return stacked.mean(0), stacked.std(0, ddof=1)


def _columns(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def uncertainty_evaluation(task: Any, preds: np.ndarray, std: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """How well the predicted std ranks the errors, per output column of the task.

    Args:
        task: the run's task; `task.uncertainty_errors` says what an error is (|p - y|, a wrong
            class, |prediction - value|) and whether it is Gaussian ("rmse": RMSE per bin and
            the 95% coverage are reported).
        preds, std: mean predictions and their std, (N,) or (N, K).
        targets: true values (NaN = missing) or labels as the task encodes them.
    """
    error, std, names, error_name = task.uncertainty_errors(preds, std, targets)
    gaussian = error_name == "rmse"
    out: dict[str, Any] = {"kind": task.kind, "error": error_name, "n_passes_note": "std over ensemble members and/or dropout passes",
                           "targets": {}}  # fmt: skip
    for k, name in enumerate(names):
        observed = ~np.isnan(error[:, k])
        e, s = error[observed, k], std[observed, k]
        if len(e) < 3:
            continue
        rho = spearmanr(s, e).statistic if np.ptp(s) > 0 and np.ptp(e) > 0 else float("nan")
        edges = np.unique(np.quantile(s, np.linspace(0, 1, N_BINS + 1)))
        bins = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, max(len(edges) - 2, 0))
        rows = []
        for b in range(max(len(edges) - 1, 1)):
            inside = bins == b
            if inside.any():
                rows.append({"mean_std": float(s[inside].mean()), "n": int(inside.sum()),
                             "rmse" if gaussian else "mean_error":
                             float(np.sqrt((e[inside] ** 2).mean()) if gaussian else e[inside].mean())})  # fmt: skip
        entry = {"spearman_error_vs_std": float(rho), "mean_std": float(s.mean()), "bins": rows, "n": int(len(e))}
        if gaussian:
            entry["coverage_95"] = float((e <= 1.96 * s).mean())  # fraction inside mean +/- 1.96 std
        out["targets"][str(name)] = entry
    return out


def uncertainty_section(evaluation: dict[str, Any]) -> dict[str, Any]:
    """A report section: error against predicted uncertainty, and a table of the summary numbers."""
    regression = evaluation["error"] == "rmse"  # a Gaussian std: RMSE per bin, 95% coverage
    key = "rmse" if regression else "mean_error"
    figures, rows = [], []
    for name, entry in list(evaluation["targets"].items())[:6]:
        fig = Figure(figsize=(4.2, 3.4))
        ax = fig.subplots()
        xs = [b["mean_std"] for b in entry["bins"]]
        ys = [b[key] for b in entry["bins"]]
        ax.plot(xs, ys, "o-", label="observed")
        if regression:  # a calibrated Gaussian std has RMSE = std
            top = max(xs + ys) * 1.1 if xs else 1.0
            ax.plot([0, top], [0, top], "--", color="grey", label="RMSE = std")
            ax.legend(fontsize=8)
        ax.set_xlabel("predicted std (bin mean)")
        ax.set_ylabel("RMSE" if regression else evaluation["error"])
        ax.set_title(f"{name}: error vs uncertainty", fontsize=10)
        fig.tight_layout()
        figures.append(fig)
        rows.append([name, entry["n"], f"{entry['spearman_error_vs_std']:.3f}", f"{entry['mean_std']:.3f}",
                     f"{entry['coverage_95']:.3f}" if regression else "-"])  # fmt: skip
    return {
        "title": "Uncertainty",
        "text": "Mean and standard deviation over ensemble members and/or Monte Carlo dropout passes. "
        "A useful uncertainty ranks the errors: Spearman(|error|, std) > 0, and the error grows "
        "across bins of predicted std. Coverage: fraction of test values within mean +/- 1.96 std "
        "(0.95 if the std is calibrated).",
        "table": {"header": ["target", "n", "Spearman |error| vs std", "mean std", "coverage 95%"], "rows": rows},
        "figures": figures,
        "json": evaluation,
    }
