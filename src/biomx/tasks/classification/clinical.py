"""A binary task's test evaluation with its operating point: the threshold is chosen on the
validation split (`operating_point`), the test split is scored at it with a decision curve
(`decision_curve`), and the run keeps the threshold where `biomx predict` finds it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

import biomx.tasks.classification.decision_curve as decision_curve
from biomx import batched
from biomx.protocols import TestRun
from biomx.report.html import fmt
from biomx.runs import read_json, write_json
from biomx.tasks.classification.operating_point import select, select_labels

if TYPE_CHECKING:
    from biomx.tasks.classification.task import ClassificationTask


def validation_scores(task: ClassificationTask, run: TestRun) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The validation split's mean predictions (every member and dropout pass, as the test split's) and
    targets; (None, None) without a validation split."""
    return batched.mean_predictions(task, run, "val") or (None, None)


def evaluate_test(task: ClassificationTask, run: TestRun) -> tuple[dict[str, Any] | None, list[dict]]:
    """A binary task first chooses its threshold on the validation split, then scores the test split
    at it (`biomx.batched`); the run keeps the threshold (run.json's task entry, which `biomx predict`,
    `biomx.load`, the server and the export read), operating_point.json and decision_curve.csv."""
    if task.kind == "binary":
        task.selection = select(task, *validation_scores(task, run))
    elif task.kind == "multilabel" and task.rule != "fixed":
        task.selection = select_labels(task, *validation_scores(task, run))
    else:
        return batched.evaluate_test(task, run)
    evaluation, sections = batched.evaluate_test(task, run)
    if evaluation is None:  # not the main process
        return evaluation, sections
    write_json(run.run_dir / "operating_point.json", evaluation["operating_point"])
    if "decision_curve" in evaluation:
        decision_curve.write(run.run_dir / "decision_curve.csv", evaluation["decision_curve"])
    info_path = run.run_dir / "run.json"
    if info_path.is_file():
        info = read_json(info_path)
        if info.get("task") != task.info():
            write_json(info_path, {**info, "task": task.info()})
    return evaluation, sections


def _interval(metric: dict[str, float] | None) -> str:
    if not metric:
        return "-"
    value, low, high = (metric.get(k) for k in ("value", "ci_low", "ci_high"))
    return fmt(value) if low is None or np.isnan(low) else f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def _point_rows(points: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, point in points.items():
        val, test = point.get("validation") or {}, point.get("test") or {}
        metrics, found = test.get("metrics") or {}, test.get("counts") or {}
        label = f"chosen ({point.get('rule', '?')})" if name == "chosen" else name
        rows.append([label, fmt(point.get("threshold")), fmt(val.get("sensitivity")), fmt(val.get("specificity")),
                     *(_interval(metrics.get(m)) for m in ("sensitivity", "specificity", "ppv", "npv", "f1")),
                     "/".join(str(found.get(k, "-")) for k in ("tp", "fp", "tn", "fn"))])  # fmt: skip
    return rows


def report_sections(evaluation: dict[str, Any]) -> list[dict]:
    """"Operating point" (the rule, the threshold, the validation rates that chose it, every point's test
    rates with CIs, the decision curve) and "Decision curve" (net benefit at a few threshold probabilities)."""
    record, curve = evaluation.get("operating_point"), evaluation.get("decision_curve")
    if not record:
        return []
    level = f"{100 * float(evaluation.get('ci', 0.95)):g}%"
    if "labels" in record:
        return [_labels_section(record, level, evaluation.get("n_bootstrap"))]
    validation = record.get("validation")
    chosen = (f"chosen on the validation split (n = {validation['n']}, {validation['positives']} positive)"
              if record.get("chosen_on") == "validation" else "kept as configured")  # fmt: skip
    text = (f"Rule {record.get('rule')} (task.operating_point): threshold {fmt(record.get('threshold'))}, {chosen}; "
            f"task.threshold is {fmt(record.get('task_threshold'))}. biomx predict, biomx.load, the server and the "
            f"export label cases with the chosen threshold; the other rows are alternatives. Test rates with {level} "
            f"CIs from {evaluation.get('n_bootstrap')} bootstrap resamples; counts are TP/FP/TN/FN on the test split.")
    if record.get("note"):
        text += f" Note: {record['note']}."
    header = ["point", "threshold", "val sensitivity", "val specificity", "sensitivity", "specificity", "PPV", "NPV",
              "F1", "TP/FP/TN/FN"]  # fmt: skip
    table = {"header": header, "rows": _point_rows(record.get("points") or {}), "numeric": True}
    sections = [{"title": "Operating point", "text": text, "table": table,
                 **({"figures": [decision_curve.figure(curve)]} if curve else {})}]  # fmt: skip
    if curve:
        sections.append({"title": "Decision curve", "table": decision_curve.table(curve), "text": (
            "Net benefit of treating the cases whose predicted probability reaches the threshold probability pt, "
            "TP/n - FP/n * pt/(1 - pt) (Vickers & Elkin 2006), against treating everyone and no one, on the test "
            f"split; {level} bootstrap CIs. It reads probabilities as risks: see the reliability diagram. "
            "Every pt from 0.01 to 0.99 is in decision_curve.csv.")})
    return sections


def _labels_section(record: dict[str, Any], level: str, n_boot: Any) -> dict:
    """Multilabel: each label's threshold, the validation rates that chose it and its test rates with CIs."""
    text = (f"Rule {record.get('rule')} (task.operating_point), applied to each label on the validation cases where "
            f"it was measured; biomx predict and the export use these thresholds. Test rates with {level} CIs from "
            f"{n_boot} bootstrap resamples of each label's measured cases; counts are TP/FP/TN/FN.")
    if record.get("note"):
        text += f" Note: {record['note']}."
    rows = []
    for name, found in (record.get("labels") or {}).items():
        val, test = found.get("validation") or {}, found.get("test") or {}
        metrics, counted = test.get("metrics") or {}, test.get("counts") or {}
        rows.append([name, fmt(found.get("threshold")) + ("" if found.get("chosen", True) else " (kept)"),
                     fmt(val.get("sensitivity")), fmt(val.get("specificity")),
                     *(_interval(metrics.get(m)) for m in ("sensitivity", "specificity", "ppv", "npv", "f1")),
                     "/".join(str(counted.get(k, "-")) for k in ("tp", "fp", "tn", "fn"))])  # fmt: skip
    header = ["label", "threshold", "val sensitivity", "val specificity", "sensitivity", "specificity", "PPV", "NPV",
              "F1", "TP/FP/TN/FN"]  # fmt: skip
    return {"title": "Operating point", "text": text, "table": {"header": header, "rows": rows, "numeric": True}}
