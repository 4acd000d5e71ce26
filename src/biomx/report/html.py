"""A single self-contained HTML report for one run.

Everything lives in one file: figures are base64 PNGs, the style sheet is inline, there
is no JavaScript. The file can be mailed, attached to a lab notebook or opened offline
years later. All text that comes from data or config goes through `html.escape`.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
import numbers
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import yaml
from matplotlib.figure import Figure

from biomx.engine.checkpoint import atomic_write_text

_DPI = 100  # small PNGs keep a typical report well under 2 MB
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; } .summary { font-size: 1.15em; }
section { margin-top: 2em; border-top: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: 0.9em; color: #444; max-width: 340px; }
img.px { image-rendering: pixelated; width: 160px; height: auto; }
"""


def figure_to_data_uri(fig: Figure, dpi: int = _DPI) -> str:
    """Render a matplotlib figure to a `data:image/png;base64,...` URI.

    Args:
        fig: a `matplotlib.figure.Figure` (no pyplot needed).
        dpi: resolution of the PNG.

    Returns:
        The PNG as a data URI, ready for an `<img src=...>`.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return _png_data_uri(buffer.getvalue())


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _array_to_data_uri(rgb: np.ndarray) -> str:
    """Encode an (H, W, 3) uint8 picture as a PNG data URI at its native size."""
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, rgb, format="png")
    return _png_data_uri(buffer.getvalue())


def _img(uri: str, alt: str, css_class: str = "") -> str:
    cls = f' class="{css_class}"' if css_class else ""
    return f'<img{cls} src="{uri}" alt="{html.escape(alt)}">'


def fmt(value: Any) -> str:
    """Three decimals for floats, plain ints, "n/a" for missing or NaN."""
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    if math.isnan(number):
        return "n/a"
    # Learning rates like 1e-4 would read "0.000" with three decimals.
    if 0 < abs(number) < 1e-3:
        return f"{number:.2e}"
    return f"{number:.1f}" if abs(number) >= 100 else f"{number:.3f}"


def _table(header: list[str], rows: list[list[str]], numeric: bool = True) -> str:
    """An HTML table; header cells are escaped here, row cells must already be safe.

    With `numeric`, every column after the first is right-aligned.
    """
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    num = ' class="num"' if numeric else ""
    body = "".join(
        "<tr>"
        + "".join(f"<td{num}>{c}</td>" if i else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _header(title: str, evaluation: dict | None) -> str:
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
            found.append(
                f"{html.escape(name)} <b>{fmt(m.get('value'))}</b> "
                f"({level} {fmt(m.get('ci_low'))}&ndash;{fmt(m.get('ci_high'))})"
            )
    found.append(f"n = {fmt(evaluation.get('n'))}")
    parts.append(f'<p class="summary">Test: {", ".join(found)}</p>')
    return "\n".join(parts)


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for the epochs that recorded `key` as a number."""
    xs, ys = [], []
    for i, row in enumerate(history):
        value = row.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            xs.append(row.get("epoch", i + 1))
            ys.append(float(value))
    return xs, ys


def _history_section(history: list[dict]) -> str:
    if not history:
        return "<h2>Learning curves</h2><p>No training history was recorded.</p>"
    keys = list(dict.fromkeys(k for row in history for k in row))
    loss_keys = [k for k in ("train_loss", "val_loss") if k in keys]
    metric_keys = [k for k in keys if k.startswith("val_") and k != "val_loss"]
    panels = [p for p in (loss_keys, metric_keys) if p]
    parts = ["<h2>Learning curves</h2>"]
    if panels:
        fig = Figure(figsize=(5 * len(panels), 3.4))
        for i, panel in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            for key in panel:
                ax.plot(*_series(history, key), marker="o", markersize=3, label=key)
            ax.set_xlabel("epoch")
            ax.set_title("loss" if panel is loss_keys else "validation metrics")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        parts.append(_img(figure_to_data_uri(fig), "learning curves"))
    rows = [
        [html.escape(str(row.get("epoch", i + 1)))]
        + [fmt(row.get(k)) for k in keys if k != "epoch"]
        for i, row in enumerate(history)
    ]
    parts.append(_table(["epoch"] + [k for k in keys if k != "epoch"], rows))
    return "\n".join(parts)


def stats_table(label: str, stats_by_name: dict) -> dict:
    """A section table of per-class or per-target statistics, one row per name."""
    columns = list(dict.fromkeys(k for stats in stats_by_name.values() for k in stats))
    rows = [[str(name)] + [fmt(stats.get(c)) for c in columns] for name, stats in stats_by_name.items()]
    return {"header": [label] + columns, "rows": rows, "numeric": True}


def _evaluation_section(evaluation: dict | None) -> str:
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
    rows = [
        [
            html.escape(name),
            fmt(m.get("value")),
            f"[{fmt(m.get('ci_low'))}, {fmt(m.get('ci_high'))}]",
        ]
        for name, m in evaluation.get("metrics", {}).items()
    ]
    parts.append(_table(["metric", "value", f"{level} CI"], rows))
    return "\n".join(parts)


def _extra_section(section: dict) -> str:
    parts = [f"<h2>{html.escape(str(section['title']))}</h2>"]
    if section.get("text"):
        parts.append(f"<p>{html.escape(str(section['text']))}</p>")
    if section.get("table"):
        table = section["table"]
        rows = [[html.escape(str(cell)) for cell in row] for row in table["rows"]]
        parts.append(_table([str(h) for h in table["header"]], rows, numeric=table.get("numeric", False)))
    figures = []
    for item in section.get("figures", []):  # figures or PNG bytes (e.g. RDKit drawings), or (either, alt)
        fig, alt = item if isinstance(item, tuple) else (item, str(section["title"]))
        figures.append(_img(figure_to_data_uri(fig) if isinstance(fig, Figure) else _png_data_uri(fig), alt))
    if figures:
        parts.append('<div class="grid">' + "".join(figures) + "</div>")
    if section.get("gallery"):
        parts.append(_gallery(section["gallery"]))
    return "\n".join(parts)


def _gallery(items: list[dict]) -> str:
    """Small pictures side by side with a caption: `{"pictures": [(H, W, 3) uint8 ...], "caption"}`."""
    cards = []
    for item in items:
        pictures = "".join(_img(_array_to_data_uri(np.asarray(p)), str(alt), "px") for p, alt in item["pictures"])
        cards.append(f"<figure>{pictures}<figcaption>{html.escape(str(item.get('caption', '')))}</figcaption></figure>")
    return f'<div class="grid">{"".join(cards)}</div>'


def _plain(value: Any) -> Any:
    """Make a config YAML-safe: paths, numpy scalars, tuples and other objects."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def write_report(
    path: Path,
    *,
    title: str,
    history: list[dict],
    evaluation: dict | None,
    config: dict,
    environment: dict,
    notes: list[str] | None = None,
    extra: list[dict] | None = None,
) -> Path:
    """Write the run report as one self-contained HTML file, atomically.

    Args:
        path: where to write, e.g. `runs/exp1/report.html`; parent folders are created.
        title: the report's heading.
        history: per-epoch dicts (`epoch`, `train_loss`, `val_loss`, `val_<metric>`, ...);
            missing keys are skipped, an empty list gives a "no history" note.
        evaluation: the test evaluation dict (`kind`, `n`, `metrics` with CIs, `headline`: the
            metrics named in the summary line), or None. What else a task measured comes in
            `extra`, as the task's own sections.
        config: the resolved experiment config, shown as YAML.
        environment: versions, device and the like, shown as a table.
        notes: free-text remarks (e.g. skipped files).
        extra: the task's and the modality's sections, each `{"title": str, "text": str
            (optional), "figures": [Figure or PNG bytes or (either, alt text), ...] (optional),
            "table": {"header": [...], "rows": [[...]], "numeric": bool} (optional), "gallery":
            [{"pictures": [((H, W, 3) uint8, alt), ...], "caption": str}, ...] (optional)}`; text
            and cells are escaped.

    Returns:
        `path`.

    Raises:
        OSError: if the file cannot be written.
    """
    path = Path(path)
    sections = [
        _header(title, evaluation),
        _history_section(history),
        _evaluation_section(evaluation),
    ]
    sections += [_extra_section(section) for section in extra or []]
    config_yaml = yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)
    sections.append(f"<h2>Resolved config</h2><pre>{html.escape(config_yaml)}</pre>")
    env_rows = [[html.escape(str(k)), html.escape(str(v))] for k, v in environment.items()]
    sections.append("<h2>Environment</h2>" + _table(["key", "value"], env_rows, numeric=False))
    if notes:
        items = "".join(f"<li>{html.escape(str(n))}</li>" for n in notes)
        sections.append(f"<h2>Notes</h2><ul>{items}</ul>")
    body = "\n".join(f"<section>{s}</section>" if i else s for i, s in enumerate(sections))
    document = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
    # Write then rename: a crash mid-write never leaves a truncated report at `path`, and
    # nothing but a regular file is ever replaced.
    atomic_write_text(path, document)
    return path
