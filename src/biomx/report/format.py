"""How numbers and tables look in the report: one number format, tables that scroll in their box.

Kept apart from `html.py` so the task report modules and the page layout share one set of rules.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# A bootstrap interval from fewer cases than this is marked as wide: with 12 cases a percentile
# interval is both wide and itself unstable from one seed to the next.
SMALL_N = 20

# Below this (and at or above BIG) a number is written in scientific notation with three
# significant digits: a learning rate of 5.23e-4 would read "0.001" with three decimals.
TINY = 1e-3
BIG = 1e6


def _number(value: Any) -> float | None:
    """`value` (or a numeric string) as a float; None for anything else, bool included."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _needs_scientific(number: float) -> bool:
    return math.isfinite(number) and number != 0 and not TINY <= abs(number) < BIG


def fmt(value: Any, scientific: bool = False) -> str:
    """A number as the report shows it: escaped HTML-safe text.

    Ints plainly, floats with three decimals (one from 100 up), tiny or huge floats (and any
    float when `scientific`) as `5.23e-04`; "n/a" for missing or NaN; anything else escaped.
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    number = _number(value)
    if number is None:
        return html.escape(str(value))
    if math.isnan(number):
        return "n/a"
    if scientific or _needs_scientific(number):
        return f"{number:.2e}"
    return f"{number:.1f}" if abs(number) >= 100 else f"{number:.3f}"


def fmt_column(values: Sequence[Any]) -> list[str]:
    """Format one table column alike: if any float needs scientific notation, all floats get it,
    so a learning-rate column reads 1.00e-03, 5.05e-04, 1.00e-05 rather than 0.001, 5.05e-04."""
    floats = [
        n for v in values if not isinstance(v, int | np.integer) and (n := _number(v)) is not None
    ]
    scientific = any(_needs_scientific(n) for n in floats)
    return [fmt(v, scientific=scientific and not isinstance(v, int | np.integer)) for v in values]


def small_n_mark(count: Any, counted: str = "") -> str:
    """The marker shown next to an interval that rests on fewer than SMALL_N cases ("" if none).

    `counted` says what was counted when it is not the cases (e.g. "negatives")."""
    number = _number(count)
    if number is None or math.isnan(number) or number >= SMALL_N:
        return ""
    what = f" {counted}" if counted else ""
    tip = f"fewer than {SMALL_N}{what or ' cases'}: the bootstrap interval is wide and unstable"
    return (f' <span class="small-n" title="{html.escape(tip)}">'
            f"n={int(number)}{html.escape(what)}: wide interval</span>")  # fmt: skip


def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: bool = True,
          row_classes: Sequence[str] | None = None) -> str:  # fmt: skip
    """An HTML table in a box that scrolls sideways, so a wide table never runs off the page.

    Header cells are escaped here; row cells must already be safe. With `numeric`, every column
    after the first is right-aligned and never wraps. `row_classes` gives each row a CSS class
    ("" for none), e.g. to highlight the best epoch.
    """
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    num = ' class="num"' if numeric else ""
    body = []
    for k, row in enumerate(rows):
        css = row_classes[k] if row_classes is not None and k < len(row_classes) else ""
        cells = "".join(f"<td{num}>{c}</td>" if i else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f'<tr class="{css}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    return (f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")  # fmt: skip
