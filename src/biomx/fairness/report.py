"""The report's subgroup sections, drawn from subgroups.json (any task).

Per column: a table of groups (n, the task's headline metrics and calibration error with CIs, the
"small" flag); the task's disparities (difference and min/max ratio across groups of each measure,
plus its overall measures); and per-group thresholds fitted on validation, before and after.
"""

from __future__ import annotations

import math
from typing import Any

CALIBRATION = ("ece",)  # shown beside the headline metrics when the task scores it


def _cell(m: dict[str, Any] | None) -> str:
    if not m or m.get("value") is None or math.isnan(m["value"]):
        return "n/a"
    if math.isnan(m.get("ci_low", float("nan"))):
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def _number(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def group_table(entry: dict[str, Any], headline: list[str]) -> dict[str, Any]:
    """group | n | headline metrics (and ECE) with CIs | flag."""
    names = list(headline) or list(next((r["metrics"] for r in entry["groups"] if r["metrics"]), {}))[:4]
    names += [m for m in CALIBRATION if m not in names and any(m in r["metrics"] for r in entry["groups"])]
    rows = [[r["group"], r["n"], *[_cell(r["metrics"].get(m)) for m in names], r["flag"] or r.get("note", "")]
            for r in entry["groups"]]  # fmt: skip
    return {"header": ["group", "n", *names, "flag"], "rows": rows, "numeric": True}


def disparity_table(disparity: dict[str, Any]) -> dict[str, Any]:
    """measure | value per group | difference (max - min) | ratio (min / max)."""
    groups = list(dict.fromkeys(g for m in disparity["measures"].values() for g in m["by_group"]))
    rows = [[name, *[_number(m["by_group"].get(g)) for g in groups], _number(m["difference"]), _number(m["ratio"])]
            for name, m in disparity["measures"].items()]  # fmt: skip
    rows += [[name, *[""] * len(groups), _number(value), ""] for name, value in disparity.get("overall", {}).items()]
    return {"header": ["measure", *groups, "difference", "ratio"], "rows": rows, "numeric": True}


def thresholds_table(fitted: dict[str, Any]) -> dict[str, Any]:
    """measure | before | after, on the test split."""
    rows = [[name, _number(fitted["before"].get(name)), _number(value)] for name, value in fitted["after"].items()]
    return {"header": ["test measure", "one threshold", "per-group rule"], "rows": rows, "numeric": True}


def mitigation_section(facts: dict[str, Any]) -> dict[str, Any]:
    """What train.fairness did: the reweighing weights, the adversary's accuracy against chance."""
    rows, text = [], []
    if "reweight" in facts:
        r = facts["reweight"]
        text.append(f"Training reweighted by {r['column']} (Kamiran & Calders reweighing, drawn by a weighted "
                    "sampler: the expected loss is the weighted mean).")  # fmt: skip
        rows += [[f"weight: {cell}", _number(w)] for cell, w in r["weights"].items()]
    if "adversary" in facts:
        a = facts["adversary"]
        text.append(f"Adversarial debiasing on {a['column']} (gradient reversal, weight {a['weight']:g}): an "
                    "adversary reading the model's representation predicts the group; near chance means the "
                    "representation holds little of it.")  # fmt: skip
        last = (a.get("accuracy_by_epoch") or [None])[-1]
        rows += [["adversary accuracy, last epoch (training batches)", _number(last)],
                 ["chance (largest group's share)", _number(a["chance"])]]  # fmt: skip
        if "probe" in a:
            text.append("A fresh linear probe, fitted on the final representation of the training split, "
                        "reads the group on validation: far above chance means the group is still there.")
            rows += [["fresh probe accuracy (validation)", _number(a["probe"]["accuracy"])],
                     ["probe chance (validation)", _number(a["probe"]["chance"])]]  # fmt: skip
    return {"title": "Fairness mitigation in training", "text": " ".join(text),
            "table": {"header": ["", "value"], "rows": rows, "numeric": True}}  # fmt: skip


def sections(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One section per column, one per disparity table, one per threshold fit."""
    out = [mitigation_section(result["mitigation"])] if result.get("mitigation") else []
    headline = result.get("headline") or []
    for column, entry in result["columns"].items():
        small = [r["group"] for r in entry["groups"] if r["flag"]]
        text = (f"Test split by {column}: each group scored on its own rows, {result['ci']:.0%} bootstrap CIs "
                f"({result['n_bootstrap']} resamples).")  # fmt: skip
        if small:
            text += (f" Groups under eval.min_group ({result['min_group']}) are flagged small: "
                     f"{', '.join(small)}; their numbers are indicative only.")  # fmt: skip
        out.append({"title": f"Subgroups: {column}", "text": text, "table": group_table(entry, headline)})
        compared = entry.get("compared_groups", [])
        left_out = [r["group"] for r in entry["groups"] if r["group"] not in compared]
        among = f" Compared: {', '.join(compared)}" + (f" (small groups left out: {', '.join(left_out)})."
                                                        if left_out else ".")  # fmt: skip
        if "disparity" in entry:
            d = entry["disparity"]
            out.append({"title": f"Disparity across {column}", "text": d.get("text", "") + among,
                        "table": disparity_table(d)})  # fmt: skip
        if "thresholds" in entry:
            t = entry["thresholds"]
            rules = "; ".join(f"{g}: {rule}" for g, rule in t.get("rules", {}).items())
            out.append({"title": f"Per-group thresholds by {column} (fitted on validation)",
                        "text": f"{t['method']}.{among} Rules: {rules}", "table": thresholds_table(t)})  # fmt: skip
    return out
