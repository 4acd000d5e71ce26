"""Decision-curve analysis of a binary classifier (Vickers & Elkin 2006), on the test split.

Treating a case when P(positive) >= pt, the threshold probability at which a clinician is
indifferent between treating and not, has net benefit NB(pt) = TP/n - FP/n * pt / (1 - pt): true
positives gained, false positives charged at the odds pt / (1 - pt). It is compared with treating
everyone (prevalence - (1 - prevalence) * pt / (1 - pt)) and no one (0). A model is useful at a pt
only where its curve lies above both. The curve reads probabilities as risks, so it presumes a
calibrated model (the report's reliability diagram shows whether it is).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from biomx.report.html import fmt
from biomx.runs import write_csv
from biomx.tasks.classification.operating_point import resample_weights
from biomx.tasks.stats import percentile_ci

THRESHOLDS = np.round(np.arange(1, 100) / 100.0, 2)  # pt = 0.01 ... 0.99
SHOWN = (0.05, 0.1, 0.2, 0.3, 0.5)  # the report's table


def net_benefit(probs: np.ndarray, y: np.ndarray, pt: np.ndarray = THRESHOLDS) -> np.ndarray:
    """NB of treating `probs >= pt`, one value per threshold probability."""
    return _net_benefit(np.ones((1, len(np.asarray(y).reshape(-1)))), probs, y, pt)[0]


def treat_all(prevalence: float, pt: np.ndarray = THRESHOLDS) -> np.ndarray:
    """NB of treating everyone: prevalence - (1 - prevalence) * pt / (1 - pt)."""
    return prevalence - (1.0 - prevalence) * pt / (1.0 - pt)


def _net_benefit(weights: np.ndarray, probs: np.ndarray, y: np.ndarray, pt: np.ndarray) -> np.ndarray:
    """NB under (b, n) case multiplicities (a bootstrap resample each; ones: the sample itself): (b, P)."""
    probs, truth = np.asarray(probs, dtype=np.float64).reshape(-1), np.asarray(y).reshape(-1) == 1
    calls = (probs[:, None] >= pt[None, :]).astype(np.float64)  # (n, P)
    n = weights.sum(axis=1, keepdims=True)
    tp, fp = (weights * truth) @ calls, (weights * ~truth) @ calls
    return tp / n - fp / n * (pt / (1.0 - pt))[None, :]


def decision_curve(probs: np.ndarray, y: np.ndarray, n_boot: int, ci: float, seed: int,
                   pt: np.ndarray = THRESHOLDS) -> dict[str, Any]:  # fmt: skip
    """The model's net benefit with bootstrap percentile CIs, treat-all and treat-none, per pt."""
    y = np.asarray(y).reshape(-1)
    prevalence = float((y == 1).mean())
    model = net_benefit(probs, y, pt)
    boot = [_net_benefit(w, probs, y, pt) for w in resample_weights(len(y), n_boot, seed, len(pt))]
    stacked = np.concatenate(boot) if boot else np.zeros((0, len(pt)))
    intervals = [percentile_ci(stacked[:, j], ci) for j in range(len(pt))]
    return {"n": len(y), "prevalence": prevalence, "pt": pt.tolist(), "model": model.tolist(),
            "ci_low": [i["ci_low"] for i in intervals], "ci_high": [i["ci_high"] for i in intervals],
            "treat_all": treat_all(prevalence, pt).tolist(), "treat_none": [0.0] * len(pt)}  # fmt: skip


def write(path: Path, curve: dict[str, Any]) -> None:
    """decision_curve.csv: one row per threshold probability."""
    keys = ("pt", "model", "ci_low", "ci_high", "treat_all", "treat_none")
    names = {"pt": "threshold_probability", "model": "net_benefit"}
    write_csv(path, {names.get(k, k): [f"{v:.6g}" for v in curve[k]] for k in keys})


def figure(curve: dict[str, Any]) -> tuple[Figure, str]:
    """Net benefit against threshold probability: the model (with its CI band), treat all, treat none."""
    pt, model = np.asarray(curve["pt"]), np.asarray(curve["model"], dtype=float)
    low, high = (np.asarray(curve[k], dtype=float) for k in ("ci_low", "ci_high"))
    prevalence = float(curve["prevalence"])
    fig = Figure(figsize=(5.2, 4))
    ax = fig.add_subplot()
    if np.isfinite(low).any():
        level = f"{100 * float(curve.get('ci', 0.95)):g}%"
        ax.fill_between(pt, low, high, color="tab:blue", alpha=0.2, linewidth=0, label=f"model, {level} CI")
    ax.plot(pt, model, color="tab:blue", linewidth=1.8, label="model")
    ax.plot(pt, curve["treat_all"], color="tab:red", linestyle="--", linewidth=1.2, label="treat all")
    ax.plot(pt, curve["treat_none"], color="black", linewidth=1, label="treat none")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.05 - 0.05 * prevalence, max(prevalence, 0.01) * 1.15)
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit")
    ax.set_title(f"Decision curve (test, prevalence {fmt(prevalence)})")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    return fig, "decision curve"


def table(curve: dict[str, Any], shown: tuple[float, ...] = SHOWN) -> dict[str, Any]:
    """The report's rows at a few threshold probabilities (net benefit per 100 cases is x 100)."""
    pt = [round(p, 2) for p in curve["pt"]]
    rows = []
    for p in shown:
        if p not in pt:
            continue
        j = pt.index(p)
        model, low, high, everyone = (curve[k][j] for k in ("model", "ci_low", "ci_high", "treat_all"))
        better = "yes" if model > max(everyone, 0.0) else "no"
        rows.append([f"{p:g}", fmt(model), f"[{fmt(low)}, {fmt(high)}]", fmt(everyone), "0", better])
    level = f"{100 * float(curve.get('ci', 0.95)):g}% CI"
    header = ["threshold probability", "model", level, "treat all", "treat none", "model above both"]
    return {"header": header, "rows": rows, "numeric": True}
