"""Report sections of a regression evaluation: per-target statistics, predicted against true
values and residuals."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from biomx.report.html import fmt, stats_table

MAX_SCATTER_TARGETS = 4  # a report with a figure pair for each of 12 Tox21 tasks is unreadable
UNIT_METRICS = ("rmse", "mae")  # in the targets' units; r2 and the correlations have none


def _with_unit(text: str, units: str | None) -> str:
    return f"{text} ({units})" if units else text


def _plot_text(units: str | None) -> str | None:
    """Units as matplotlib text: a "$" would otherwise open mathtext."""
    return units.replace("$", r"\$") if units else units


def metric_info(evaluation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Units of the error metrics (`units`, set from task.units) and, when a target was observed in
    fewer test cases than the split holds, that smallest count: the macro interval rests on it."""
    units = evaluation.get("units")
    info: dict[str, dict[str, Any]] = {m: {"unit": units} for m in UNIT_METRICS} if units else {}
    observed = [stats.get("n") for stats in (evaluation.get("per_target") or {}).values()]
    observed = [k for k in observed if isinstance(k, int) and k > 0]  # unobserved targets score NaN
    n = evaluation.get("n")
    if observed and isinstance(n, int) and min(observed) < n:
        for metric in evaluation.get("metrics", {}):
            info.setdefault(metric, {}).update(n=min(observed), counted="observed values")
    return info


def _scatter_figure(name: str, true: np.ndarray, pred: np.ndarray, stats: dict,
                    units: str | None = None) -> tuple[Figure, str]:  # fmt: skip
    """Predicted vs true with the identity line; RMSE and R\u00b2 in the title."""
    fig = Figure(figsize=(4.6, 4))
    ax = fig.add_subplot()
    low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1, label="y = x")
    # Fainter points when there are many, so dense regions still show their density.
    ax.scatter(true, pred, s=10, alpha=0.6 if len(true) < 500 else 0.25, color="tab:blue")
    ax.set_xlabel(_with_unit(f"true {name}", units))
    ax.set_ylabel(_with_unit(f"predicted {name}", units))
    rmse = f"{fmt(stats.get('rmse'))} {units}" if units else fmt(stats.get("rmse"))
    ax.set_title(f"{name}: RMSE {rmse}, R\u00b2 {fmt(stats.get('r2'))}")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return fig, f"{name} predicted vs true"


def _residual_figure(name: str, true: np.ndarray, pred: np.ndarray,
                     units: str | None = None) -> tuple[Figure, str]:  # fmt: skip
    """Histogram of residuals (predicted - true), with zero marked."""
    fig = Figure(figsize=(4.6, 4))
    ax = fig.add_subplot()
    ax.hist(pred - true, bins=min(40, max(5, len(true) // 10)), color="tab:blue", alpha=0.7)
    ax.axvline(0.0, linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel(_with_unit(f"residual (predicted - true {name})", units))
    ax.set_ylabel("cases")
    ax.set_title(f"{name}: residuals")
    ax.grid(alpha=0.3)
    return fig, f"{name} residuals"


def report_sections(evaluation: dict[str, Any]) -> list[dict]:
    """Per-target table, then a scatter and a residual histogram for the first few targets; units
    (evaluation["units"], from task.units) on the error columns and the axes. A first, title-less
    section annotates the metric table with units and small counts."""
    units = evaluation.get("units") or None
    sections: list[dict] = [{"metric_info": metric_info(evaluation)}]
    per_target = evaluation.get("per_target", {})
    if per_target:
        labels = {m: _with_unit(m, units) for m in UNIT_METRICS}
        sections.append({"title": "Per target", "table": stats_table("target", per_target, labels)})
    figures = []
    scatter = evaluation.get("scatter", {})
    for name in list(scatter)[:MAX_SCATTER_TARGETS]:
        true = np.asarray(scatter[name].get("true", []), dtype=float)
        pred = np.asarray(scatter[name].get("pred", []), dtype=float)
        if len(true) == 0:  # a target with no observed test value has nothing to plot
            continue
        figures.append(_scatter_figure(str(name), true, pred, per_target.get(name, {}), _plot_text(units)))
        figures.append(_residual_figure(str(name), true, pred, _plot_text(units)))
    text = (f"Figures for the first {MAX_SCATTER_TARGETS} of {len(scatter)} targets; every target is in the "
            "table above." if len(scatter) > MAX_SCATTER_TARGETS else "")  # fmt: skip
    if figures:
        sections.append({"title": "Predicted against true", "text": text, "figures": figures})
    return sections
