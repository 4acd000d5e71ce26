"""The test metrics in the report: the summary line, the metric table, which checkpoint was scored
and which epoch was best.

Tasks annotate metrics through their sections: a section may carry `metric_info`, `{metric:
{"unit": str, "n": int, "counted": str}}` (the unit of its value, and the count its interval
rests on when that is not the number of test cases, e.g. an AUROC's negatives). The report
needs no task knowledge to show "rmse (log mol/L)" or "n=5 negatives: wide interval".
"""

from __future__ import annotations

import datetime
import html
import math
import numbers
from collections.abc import Iterable
from typing import Any

from biomx.report.format import fmt, small_n_mark, table

# How the trainer decides that a monitored metric improves (engine/trainer.py, _track_best):
# lower is better for these words in its name. Used only when no checkpoint record says which
# epoch was best (a run without a test split).
_LOWER_IS_BETTER = ("loss", "error", "rmse", "mae", "ece", "brier")


def metric_info(sections: Iterable[dict]) -> dict[str, dict[str, Any]]:
    """The `metric_info` of every section, merged (a later section adds to an earlier one)."""
    merged: dict[str, dict[str, Any]] = {}
    for section in sections:
        for name, entry in (section.get("metric_info") or {}).items():
            merged.setdefault(str(name), {}).update(entry)
    return merged


def metric_label(name: str, info: dict[str, dict[str, Any]]) -> str:
    """ "rmse (log mol/L)" when the metric has a unit, else the name (plain text, unescaped)."""
    unit = (info.get(name) or {}).get("unit")
    return f"{name} ({unit})" if unit else name


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, numbers.Real) and math.isnan(float(value)))


def ci_mark(evaluation: dict, name: str, metric: dict, info: dict[str, dict[str, Any]]) -> str:
    """The small-n marker for a metric's interval, or "" (also when no interval was computed)."""
    if _is_nan(metric.get("ci_low")) or not evaluation.get("n_bootstrap"):
        return ""
    entry = info.get(name) or {}
    if "n" in entry:
        return small_n_mark(entry["n"], str(entry.get("counted", "")))
    return small_n_mark(evaluation.get("n"))


def _joined(mark: str) -> str:
    """A small-n mark set off from the interval before it in running text."""
    return f";{mark}" if mark else ""


def header(title: str, evaluation: dict | None, info: dict[str, dict[str, Any]]) -> str:
    """Title, date and the summary line of the headline test metrics."""
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="meta">Generated {date}</p>']
    if evaluation is None:
        parts.append('<p class="summary">No test split was evaluated.</p>')
        return "\n".join(parts)
    metrics = evaluation.get("metrics", {})
    level = f"{100 * float(evaluation.get('ci', 0.95)):g}% CI"
    found = []
    # The task names its headline metrics; the first two go in the summary line.
    headline = list(evaluation.get("headline") or metrics)[:2]
    for wanted in headline:
        # Exact name first, so "balanced_accuracy" does not stand in for "accuracy".
        name = wanted if wanted in metrics else next((k for k in metrics if wanted in k), None)
        if name is not None:
            m = metrics[name]
            unit = (info.get(name) or {}).get("unit")
            unit_text = f" {html.escape(str(unit))}" if unit else ""
            found.append(
                f"{html.escape(name)} <b>{fmt(m.get('value'))}</b>{unit_text} "
                f"({level} {fmt(m.get('ci_low'))}&ndash;{fmt(m.get('ci_high'))}"
                f"{_joined(ci_mark(evaluation, name, m, info))})"
            )
    found.append(f"n = {fmt(evaluation.get('n'))}")
    parts.append(f'<p class="summary">Test: {", ".join(found)}</p>')
    return "\n".join(parts)


def _epochs_run(history: list[dict]) -> int | None:
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    numbers_only = [e for e in epochs if isinstance(e, int)]
    return max(numbers_only) if numbers_only else None


def checkpoint_text(checkpoint: dict | None, history: list[dict]) -> str:
    """One sentence: which weights were scored on the test set, from which epoch ("" if unknown)."""
    if not checkpoint:
        return ""
    epoch, total = checkpoint.get("epoch"), _epochs_run(history)
    of = f" of {total}" if total is not None else ""
    monitor = checkpoint.get("monitor")
    if checkpoint.get("name") == "best":
        value = checkpoint.get("value")
        score = f" ({html.escape(str(monitor))} {fmt(value)})" if monitor and not _is_nan(value) else ""
        members = checkpoint.get("member_epochs") or []
        if len(members) > 1:  # the learning curves and the epoch table show member 1
            epochs = ", ".join(fmt(e) for e in members)
            text = (f"the <b>best</b> checkpoint of each of the {len(members)} ensemble members, saved at "
                    f"<b>epochs {epochs}</b>{of}; member 1's{score} is marked in the epoch table")  # fmt: skip
        else:
            text = f"the <b>best</b> checkpoint, saved at <b>epoch {fmt(epoch)}</b>{of}{score}"
    elif epoch is not None:
        text = (f"the <b>last</b> weights, after <b>epoch {fmt(epoch)}</b>{of}; no best checkpoint was saved"
                + (f" ({html.escape(str(monitor))} was never a number)" if monitor else ""))  # fmt: skip
    else:
        text = "the model as built; no checkpoint was found"
    return f'<p class="checkpoint">Scored on the test set: {text}.</p>'


def best_epoch(history: list[dict], checkpoint: dict | None, monitor: Any) -> Any:
    """The epoch to mark as best: the scored best checkpoint's epoch; without a checkpoint record,
    the best `monitor` value in the history, chosen as the trainer chooses it."""
    if checkpoint:
        return checkpoint.get("epoch") if checkpoint.get("name") == "best" else None
    if not isinstance(monitor, str) or not history:
        return None
    if not any(monitor in row for row in history):
        monitor = "train_loss"  # the trainer falls back to it when the monitor is never logged
    lower = any(word in monitor for word in _LOWER_IS_BETTER)
    best, epoch = None, None
    for i, row in enumerate(history):
        value = row.get(monitor)
        if (
            not isinstance(value, numbers.Real)
            or isinstance(value, bool)
            or math.isnan(float(value))
        ):
            continue
        if best is None or (value < best if lower else value > best):  # the first of equals wins
            best, epoch = value, row.get("epoch", i + 1)
    return epoch


def evaluation_section(
    evaluation: dict | None, info: dict[str, dict[str, Any]], history: list[dict]
) -> str:
    """The test metric table with intervals, units and small-n marks, and the scored checkpoint."""
    parts = ["<h2>Test evaluation</h2>"]
    if evaluation is None:
        parts.append("<p>No test split was evaluated.</p>")
        return "\n".join(parts)
    level = f"{100 * float(evaluation.get('ci', 0.95)):g}%"
    threshold = evaluation.get("threshold")  # None for multiclass (argmax)
    parts.append(
        f"<p>Task: {html.escape(str(evaluation.get('kind', '?')))}; "
        f"n = {fmt(evaluation.get('n'))}; "
        + (f"threshold {fmt(threshold)}; " if threshold is not None else "")
        + f"{level} CIs from {fmt(evaluation.get('n_bootstrap'))} bootstrap resamples.</p>"
    )
    text = checkpoint_text(evaluation.get("checkpoint"), history)
    if text:
        parts.append(text)
    rows = [
        [
            html.escape(metric_label(name, info)),
            fmt(m.get("value")),
            f"[{fmt(m.get('ci_low'))}, {fmt(m.get('ci_high'))}]{ci_mark(evaluation, name, m, info)}",
        ]
        for name, m in evaluation.get("metrics", {}).items()
    ]
    parts.append(table(["metric", "value", f"{level} CI"], rows))
    return "\n".join(parts)
