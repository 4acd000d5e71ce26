"""The card's caveats and recommendations, derived from the run's own numbers: a small test set
and its wide intervals, small groups, undefined metrics, rare classes, miscalibration, skipped
inputs, internal-only validation. Each caveat is one sentence that names the number behind it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from biomx.card.facts import ci_width, find_records, is_metric, number, show
from biomx.card.sections import (
    FEW_OF_A_CLASS,
    MISCALIBRATED,
    SMALL_TEST,
    WIDE_CI,
    RunFacts,
    audit_checks,
    make_section,
)


def _test_set(run: RunFacts) -> list[str]:
    ev = run.evaluation
    if ev is None:
        return ["No test evaluation: nothing in this card supports using the model."]
    out = []
    n = ev.get("n")
    metrics = {k: m for k, m in (ev.get("metrics") or {}).items() if is_metric(m)}
    widths = {k: w for k in (ev.get("headline") or metrics) if k in metrics and (w := ci_width(metrics[k])) is not None}
    widest = max(widths, key=lambda k: widths[k]) if widths else None
    if isinstance(n, int) and n < SMALL_TEST:
        tail = f"; the widest headline interval ({widest}) spans {show(widths[widest])}" if widest else ""
        out.append(f"Small test set (n={n}): the metrics are uncertain{tail}.")
    elif widest and widths[widest] >= WIDE_CI:
        out.append(f"Wide interval: {widest} spans {show(widths[widest])} on {n} test samples.")
    if not ev.get("n_bootstrap"):
        out.append("No intervals (eval.bootstrap: 0): single numbers overstate how certain they are.")
    undefined = [k for k, m in metrics.items() if number(m.get("value")) is not None and math.isnan(m["value"])]
    if undefined:
        out.append(f"Undefined on this test set: {', '.join(undefined)} (e.g. a class that is absent or never "
                   "predicted).")  # fmt: skip
    return out


def _rare_classes(run: RunFacts) -> list[str]:
    out = []
    ev = run.evaluation or {}
    for key, table in ev.items():
        if not key.startswith("per_") or not isinstance(table, Mapping):
            continue
        few = {name: rec.get("support", rec.get("n")) for name, rec in table.items() if isinstance(rec, Mapping)}
        few = {name: c for name, c in few.items() if isinstance(c, int) and c < FEW_OF_A_CLASS}
        if few:
            listed = ", ".join(f"{name} ({c})" for name, c in few.items())
            out.append(f"Few test samples of {listed}: their {key.replace('_', '-')} numbers are unreliable.")
    train = run.counts.get("train") or {}
    total = sum(train.values())
    rare = {k: v / total for k, v in train.items() if total and v / total < 0.1}
    if rare:
        listed = ", ".join(f"{k} {show(100 * f)}%" for k, f in rare.items())
        out.append(f"Imbalanced training data: {listed} of the training split.")
    return out


def _groups(run: RunFacts) -> list[str]:
    if run.subgroups is None:
        return ["Performance across patient groups, sites and devices is unknown: not evaluated (eval.subgroups)."]
    min_group = run.cfg("eval", "min_group") or 30
    groups = [r for r in find_records(run.subgroups) if isinstance(r.get("n"), int) and not is_metric(r)]
    small = [r for r in groups if r.get("small") is True or r["n"] < min_group]
    out = []
    if small:
        out.append(f"{len(small)} of {len(groups)} subgroup results rest on fewer than {min_group} test samples: "
                   "indicative only.")  # fmt: skip
    out.append("Differences between groups are estimates with intervals; a gap whose intervals overlap is not "
               "shown to exist, and an absent gap is not shown to be absent.")  # fmt: skip
    return out


def _calibration(run: RunFacts) -> list[str]:
    cal = (run.evaluation or {}).get("calibration")
    if not isinstance(cal, Mapping):
        return []
    gaps = {k: v for k, v in cal.items() if k in ("ece", "mean_abs_error") and number(v) is not None}
    bad = {k: v for k, v in gaps.items() if math.isfinite(v) and v > MISCALIBRATED}
    if not bad:
        return []
    listed = ", ".join(f"{k} {show(v)}" for k, v in bad.items())
    return [f"Miscalibrated ({listed}): do not read the outputs as probabilities or risks without recalibration."]


def caveats(run: RunFacts) -> dict[str, Any]:
    method = run.cfg("data", "split", "method")
    items = [*_test_set(run), *_rare_classes(run), *_groups(run), *_calibration(run)]
    items += [f"Data audit, {c.get('name')}: {c.get('status')}: {c.get('message')}." for c in audit_checks(run)
              if c.get("status") in ("problem", "warning")]  # fmt: skip
    skipped = run.data.get("skipped") or 0
    if skipped:
        items.append(f"{skipped} inputs could not be read and were left out (skipped.csv): the data the model "
                     "saw is not all the data given.")  # fmt: skip
    items.append(f"Internal validation only: the test split comes from the same source as the training data "
                 f"(split: {method}); performance at other sites, on other devices or populations is unknown.")
    items.append("Comparisons with other runs or published results are indicative: they hold only on the same "
                 "test samples, and overlapping intervals show no difference.")  # fmt: skip
    items.append("Not a medical device: clinical use needs prospective validation and regulatory review.")
    return make_section("caveats", "Caveats and recommendations", items=items)
