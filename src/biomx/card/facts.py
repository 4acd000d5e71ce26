"""Reading a run's files for its model card, and turning numbers and nested JSON into card rows.

Files written by other parts of biomx (operating_point.json, subgroups.json) are read without
assuming their layout: nested JSON becomes facts ("a / b: value") and tables (a mapping whose
entries are flat records: one row each), so a new field shows up in the card without a change here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

MAX_ROWS = 60  # a table row per group or class; more are cut (the JSON file beside has them all)
MAX_COLUMNS = 14
MAX_DEPTH = 5


def read_optional(path: Path) -> Any:
    """The JSON in `path`; None when the file is absent; {"unreadable": why} when it cannot be read
    (a card is written at the end of training: a bad optional file must not fail the run)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return {"unreadable": f"{path.name}: {type(err).__name__}"}


def number(value: Any) -> float | None:
    """A finite or NaN float for ints and floats (not bools); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def show(value: Any) -> str:
    """A value as the card prints it: ints plainly, floats with 3 decimals (or 3 significant
    digits when tiny or huge), n/a for missing or undefined, lists and mappings inline."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if value != 0 and not 1e-3 <= abs(value) < 1e6:
            return f"{value:.3g}"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"
    if is_metric(value):
        return metric_text(value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {show(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(show(v) for v in value)
    return str(value)


def is_metric(value: Any) -> bool:
    """A metric with its interval, as the tasks write them: {"value", "ci_low", "ci_high"}."""
    return isinstance(value, Mapping) and "value" in value and ("ci_low" in value or "ci" in value)


def interval(metric: Mapping[str, Any]) -> tuple[float | None, float | None]:
    if "ci" in metric and isinstance(metric["ci"], list | tuple) and len(metric["ci"]) == 2:
        return number(metric["ci"][0]), number(metric["ci"][1])
    return number(metric.get("ci_low")), number(metric.get("ci_high"))


def metric_text(metric: Mapping[str, Any]) -> str:
    """'0.861 [0.725, 0.987]'; the value alone when there is no interval."""
    low, high = interval(metric)
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return show(metric.get("value"))
    return f"{show(metric.get('value'))} [{show(low)}, {show(high)}]"


def ci_width(metric: Mapping[str, Any]) -> float | None:
    low, high = interval(metric)
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return None
    return high - low


def _leaf(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool) or is_metric(value) or (
        isinstance(value, list | tuple) and len(value) <= 6 and all(isinstance(v, str | int | float) for v in value))


def _record(value: Any, depth: int = 0) -> dict[str, Any] | None:
    """A record (one table row): its scalars and metrics, those of mappings inside it named by
    their path ("test / metrics / sensitivity"), up to 3 levels down; None for anything else."""
    if not isinstance(value, Mapping) or is_metric(value) or not value or depth > 3:
        return None
    row: dict[str, Any] = {}
    for key, item in value.items():
        if _leaf(item):
            row[str(key)] = item
            continue
        inner = _record(item, depth + 1)
        if inner is None:
            return None
        row.update({f"{key} / {k}": v for k, v in inner.items()})
    return row


def _table(title: str, label: str, records: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One row per record, or, when the records have many more fields than there are records
    (operating points: a few rules, many numbers each), one row per field."""
    columns = list(dict.fromkeys(k for _, row in records for k in row))
    if len(columns) > 2 * len(records) and len(records) <= MAX_COLUMNS:
        rows = [[c, *(show(row[c]) if c in row else "" for _, row in records)] for c in columns[:MAX_ROWS]]
        table = {"title": title, "header": [label, *(name for name, _ in records)], "rows": rows}
        left = len(columns) - MAX_ROWS
    else:
        shown = columns[:MAX_COLUMNS]
        rows = [[name, *(show(row[c]) if c in row else "" for c in shown)] for name, row in records[:MAX_ROWS]]
        table = {"title": title, "header": [label, *shown], "rows": rows}
        left = len(records) - MAX_ROWS
        if len(columns) > MAX_COLUMNS:
            table["note"] = f"{len(columns) - MAX_COLUMNS} more columns in the JSON file"
    if left > 0:
        table["note"] = f"{left} more rows in the JSON file"
    return table


def describe_json(obj: Any, prefix: str = "") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(facts, tables) for any JSON: a mapping or list whose entries are all flat records is a
    table (one row per entry); other mappings are walked, their scalars become facts named by
    their path ("sex / disparity / auroc_ratio")."""
    facts: dict[str, Any] = {}
    tables: list[dict[str, Any]] = []
    for path, value in _walk(obj, prefix, 0):
        if isinstance(value, tuple) and value and value[0] == "table":
            tables.append(value[1])
        else:
            facts[path] = value
    return facts, tables


def _named(records: list[tuple[str, dict[str, Any]]], label: str) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """A list's records named by their first field when it is a text that tells them apart
    ({"group": "F", ...} -> row "F", label "group"); else as they are (numbered)."""
    first = next(iter(records[0][1]), None)
    names = [row.get(first) for _, row in records] if first is not None else []
    if first is None or any(next(iter(row), None) != first or not isinstance(row.get(first), str)
                            for _, row in records) or len(set(map(str, names))) < len(names):  # fmt: skip
        return records, label
    return [(str(row[first]), {k: v for k, v in row.items() if k != first}) for _, row in records], first


def _alike(entries: list[tuple[str, Any]]) -> list[str]:
    """The keys of the largest set (two or more) of records with the same fields, e.g. "before" and
    "after" beside a "method" text: a table of their own."""
    groups: dict[frozenset, list[str]] = {}
    for key, value in entries:
        record = None if _leaf(value) else _record(value)
        if record is not None:
            groups.setdefault(frozenset(record), []).append(key)
    best = max(groups.values(), key=len, default=[])
    return best if len(best) >= 2 else []


def _walk(obj: Any, path: str, depth: int) -> Iterator[tuple[str, Any]]:
    is_list = isinstance(obj, list)
    entries = [(str(k), v) for k, v in (enumerate(obj, 1) if is_list else obj.items() if isinstance(obj, Mapping)
                                        else [])]  # fmt: skip
    label = path.rsplit(" / ", 1)[-1] or "name"
    records = [(k, _record(v)) for k, v in entries]
    if len(entries) > 1 and all(r is not None for _, r in records) and not all(_leaf(v) for _, v in entries):
        rows, label = _named(records, label) if is_list else (records, label)  # type: ignore[arg-type]
        yield path, ("table", _table(path or "values", label, rows))  # type: ignore[misc]
        return
    if not entries or depth > MAX_DEPTH:
        yield path, obj if _leaf(obj) else show(obj)
        return
    alike = _alike(entries)
    if alike:
        yield path, ("table", _table(path or "values", label, [(k, _record(v)) for k, v in entries if k in alike]))
    for key, value in entries:
        name = f"{path} / {key}" if path else str(key)
        if _leaf(value):
            yield name, value
        elif key not in alike:
            yield from _walk(value, name, depth + 1)


def find_records(obj: Any, depth: int = 0) -> Iterator[Mapping[str, Any]]:
    """Every mapping in nested JSON (for caveats: the groups that carry an "n" or a "small" flag)."""
    if depth > MAX_DEPTH:
        return
    if isinstance(obj, Mapping):
        yield obj
        for value in obj.values():
            yield from find_records(value, depth + 1)
    elif isinstance(obj, list):
        for value in obj:
            yield from find_records(value, depth + 1)
