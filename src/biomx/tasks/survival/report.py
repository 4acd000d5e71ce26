"""Report sections of a survival evaluation: risk groups, example curves, calibration, and the
network beside a classical Cox model. Everything is drawn from the evaluation dict alone."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from biomx.report.html import fmt

_GROUP_COLOURS = {"low risk": "tab:green", "medium risk": "tab:orange", "high risk": "tab:red"}


def _time_label(evaluation: dict[str, Any]) -> str:
    unit = evaluation.get("time_unit")
    return f"time ({unit})".replace("$", r"\$") if unit else "time"


def _risk_groups(evaluation: dict[str, Any]) -> dict | None:
    groups = evaluation.get("risk_groups") or {}
    curves = groups.get("curves") or {}
    if not curves:
        return None
    fig = Figure(figsize=(5.2, 4))
    ax = fig.add_subplot()
    for label, curve in curves.items():
        t = np.concatenate([[0.0], curve["time"]])
        s = np.concatenate([[1.0], curve["survival"]])
        ax.step(t, s, where="post", color=_GROUP_COLOURS.get(label),
                label=f"{label} (n={curve['n']}, {curve['events']} events)")  # fmt: skip
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(_time_label(evaluation))
    ax.set_ylabel("Kaplan-Meier survival")
    ax.set_title(f"test split by predicted risk; log-rank p = {fmt(groups.get('logrank_p'))}")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    text = ("Test samples split into tertiles of the predicted risk, each group's observed survival "
            f"(Kaplan-Meier). Log-rank test of equal curves: chi-square {fmt(groups.get('logrank_chi2'))} "
            f"on {len(curves) - 1} degrees of freedom, p = {fmt(groups.get('logrank_p'))}.")  # fmt: skip
    return {"title": "Risk groups (Kaplan-Meier)", "text": text, "figures": [(fig, "Kaplan-Meier curves by risk group")]}


def _examples(evaluation: dict[str, Any]) -> dict | None:
    examples = evaluation.get("examples") or {}
    if not examples.get("curves"):
        return None
    fig = Figure(figsize=(5.2, 4))
    ax = fig.add_subplot()
    for curve in examples["curves"]:
        ax.plot(examples["time"], curve["survival"], label=f"risk percentile {curve['percentile']}")
    for h in evaluation.get("horizons", []):
        ax.axvline(h, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(_time_label(evaluation))
    ax.set_ylabel("predicted survival S(t)")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    text = ("Predicted survival curves of the test samples at a few percentiles of the predicted risk "
            "(dotted: the horizons).")  # fmt: skip
    return {"title": "Predicted survival curves", "text": text, "figures": [(fig, "predicted survival curves")]}


def _calibration(evaluation: dict[str, Any]) -> dict | None:
    cal = evaluation.get("calibration")
    if not cal or not cal.get("predicted"):
        return None
    h = cal["horizon"]
    fig = Figure(figsize=(4.6, 4))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="ideal")
    ax.plot(cal["predicted"], cal["observed"], marker="o", color="tab:blue", label="risk groups")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"mean predicted S({h:g})")
    ax.set_ylabel(f"observed S({h:g}) (Kaplan-Meier)")
    ax.set_title(f"calibration at t = {h:g}")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    rows = [[str(k + 1), str(n), fmt(p), fmt(o)]
            for k, (n, p, o) in enumerate(zip(cal["n"], cal["predicted"], cal["observed"], strict=True))]
    text = (f"Test samples in {len(rows)} groups of predicted survival at t = {h:g} (lowest risk first): "
            f"mean predicted against Kaplan-Meier observed; weighted mean absolute gap {fmt(cal['mean_abs_error'])}.")
    return {"title": f"Calibration at t = {h:g}", "text": text, "figures": [(fig, "calibration plot")],
            "table": {"header": ["group", "n", "predicted", "observed"], "rows": rows, "numeric": True}}


def _comparison(evaluation: dict[str, Any]) -> dict | None:
    ref = evaluation.get("cox_ph")
    if ref is None:
        return None
    if "metrics" not in ref:
        return {"title": "Classical Cox model", "text": ref.get("note", "no linear baseline")}
    rows = []
    for name, m in evaluation.get("metrics", {}).items():
        r = ref["metrics"].get(name, {})
        rows.append([name, f"{fmt(m.get('value'))} [{fmt(m.get('ci_low'))}, {fmt(m.get('ci_high'))}]",
                     f"{fmt(r.get('value'))} [{fmt(r.get('ci_low'))}, {fmt(r.get('ci_high'))}]"])  # fmt: skip
    text = (f"A linear Cox proportional-hazards model ({ref.get('note')}) fitted on the training split's "
            "input features, scored on the same test samples, grid and censoring weights (ibs: lower is better).")
    return {"title": "Network against a classical Cox model", "text": text,
            "table": {"header": ["metric", "network", "Cox PH"], "rows": rows, "numeric": True}}


def report_sections(evaluation: dict[str, Any]) -> list[dict]:
    """The network against a Cox model, risk groups, example curves and calibration."""
    parts = [_comparison(evaluation), _risk_groups(evaluation), _examples(evaluation), _calibration(evaluation)]
    return [part for part in parts if part is not None]
