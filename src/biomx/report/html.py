"""A single self-contained HTML report for one run.

Everything lives in one file: figures are base64 PNGs, the style sheet is inline, there
is no JavaScript. The file can be mailed, attached to a lab notebook or opened offline
years later. All text that comes from data or config goes through `html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import matplotlib.image
import numpy as np
import yaml
from matplotlib.figure import Figure

from biomx.engine.checkpoint import atomic_write_text
from biomx.report.format import fmt, fmt_column, table
from biomx.report.metrics import best_epoch, evaluation_section, header, metric_info

__all__ = ["figure_to_data_uri", "fmt", "stats_table", "write_report"]

_DPI = 100  # small PNGs keep a typical report well under 2 MB
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; } .summary { font-size: 1.15em; }
section { margin-top: 2em; border-top: 1px solid #ddd; }
.table-wrap { max-width: 100%; overflow-x: auto; margin: 0.8em 0; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }
th { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.best td { background: #fff4c2; font-weight: 600; }
.mark { color: #7a5c00; font-size: 0.85em; font-weight: 600; white-space: nowrap; }
.small-n { color: #a13d00; font-size: 0.85em; white-space: nowrap; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
img { max-width: 100%; height: auto; }
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


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for the epochs that recorded `key` as a number."""
    xs, ys = [], []
    for i, row in enumerate(history):
        value = row.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            xs.append(row.get("epoch", i + 1))
            ys.append(float(value))
    return xs, ys


def _history_section(history: list[dict], best: Any = None) -> str:
    """Learning curves and the epoch table; the row of epoch `best` is highlighted and marked."""
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
            if best is not None:
                ax.axvline(best, linestyle=":", color="grey", linewidth=1, label=f"best epoch {best}")
            ax.set_xlabel("epoch")
            ax.set_title("loss" if panel is loss_keys else "validation metrics")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        parts.append(_img(figure_to_data_uri(fig), "learning curves"))
    columns = [k for k in keys if k != "epoch"]
    # One format per column, so a learning rate decaying past 1e-3 does not switch notation mid-table.
    cells = [fmt_column([row.get(k) for row in history]) for k in columns]
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    is_best = [best is not None and epoch == best for epoch in epochs]
    rows = [
        [html.escape(str(epoch)) + (' <span class="mark">best</span>' if mark else "")]
        + [column[i] for column in cells]
        for i, (epoch, mark) in enumerate(zip(epochs, is_best, strict=True))
    ]
    parts.append(table(["epoch", *columns], rows, row_classes=["best" if mark else "" for mark in is_best]))
    return "\n".join(parts)


def stats_table(label: str, stats_by_name: dict, labels: dict[str, str] | None = None) -> dict:
    """A section table of per-class or per-target statistics, one row per name.

    `labels` renames header cells (e.g. "rmse" -> "rmse (log mol/L)"); values are not changed."""
    columns = list(dict.fromkeys(k for stats in stats_by_name.values() for k in stats))
    cells = [fmt_column([stats.get(c) for stats in stats_by_name.values()]) for c in columns]
    rows = [[str(name)] + [column[i] for column in cells] for i, name in enumerate(stats_by_name)]
    header = [label] + [(labels or {}).get(c, c) for c in columns]
    return {"header": header, "rows": rows, "numeric": True}


def _extra_section(section: dict) -> str:
    """A task's or modality's section; cells come as plain text and are escaped here."""
    parts = [f"<h2>{html.escape(str(section['title']))}</h2>"]
    if section.get("text"):
        parts.append(f"<p>{html.escape(str(section['text']))}</p>")
    link = section.get("link") or {}
    href = str(link.get("href", ""))
    if href and ":" not in href and not href.startswith(("/", "\\")):  # only a file of the run, beside the report
        parts.append(f'<p><a href="{html.escape(quote(href))}">{html.escape(str(link.get("text") or href))}</a></p>')
    if section.get("table"):
        given = section["table"]
        rows = [[html.escape(str(cell)) for cell in row] for row in given["rows"]]
        parts.append(table([str(h) for h in given["header"]], rows, numeric=given.get("numeric", False)))
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


def _inline(value: Any) -> str:
    """A note's value as readable text: "train 120, val 16, test 24" rather than a dict repr."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_inline(v)}" for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return ", ".join(_inline(v) for v in value)
    return str(value)


def _note_items(notes: Sequence[Any]) -> str:
    """One list item per note; a mapping note gives one item per key ("split sizes: train 120, ...")."""
    items = []
    for note in notes:
        pairs = note.items() if isinstance(note, Mapping) else [(None, note)]
        for key, value in pairs:
            text = _inline(value) if key is None else f"{key}: {_inline(value)}"
            items.append(f"<li>{html.escape(text)}</li>")
    return "".join(items)


def write_report(
    path: Path,
    *,
    title: str,
    history: list[dict],
    evaluation: dict | None,
    config: dict,
    environment: dict,
    notes: Sequence[str | Mapping[str, Any]] | None = None,
    extra: list[dict] | None = None,
) -> Path:
    """Write the run report as one self-contained HTML file, atomically.

    Args:
        path: where to write, e.g. `runs/exp1/report.html`; parent folders are created.
        title: the report's heading.
        history: per-epoch dicts (`epoch`, `train_loss`, `val_loss`, `val_<metric>`, ...);
            missing keys are skipped, an empty list gives a "no history" note.
        evaluation: the test evaluation dict (`kind`, `n`, `n_bootstrap`, `metrics` with CIs,
            `headline`: the metrics named in the summary line; optionally `checkpoint`: which
            weights were scored, `{"name": "best" | "last", "epoch", "monitor", "value",
            "member_epochs"}`, whose best epoch is highlighted in the epoch table), or None.
            What else a task measured comes in `extra`, as the task's own sections.
        config: the config to show, as YAML (the experiment passes the part that applies to
            the run); without a checkpoint record its `train.monitor` picks the best epoch.
        environment: versions, device and the like, shown as a table.
        notes: remarks (e.g. skipped files): strings, or mappings shown as "key: value" items.
        extra: the task's and the modality's sections, each `{"title": str, "text": str
            (optional), "figures": [Figure or PNG bytes or (either, alt text), ...] (optional),
            "table": {"header": [...], "rows": [[...]], "numeric": bool} (optional), "gallery":
            [{"pictures": [((H, W, 3) uint8, alt), ...], "caption": str}, ...] (optional),
            "metric_info": {metric: {"unit": str, "n": int, "counted": str}} (optional: a unit
            for the metric table and summary, and the count its interval rests on when that is
            not the test cases), "link": {"href": a file of the run, relative, e.g. "model_card.md",
            "text": str} (optional)}`; text and cells are escaped. A section without a title only
            annotates the metrics.

    Returns:
        `path`.

    Raises:
        OSError: if the file cannot be written.
    """
    path = Path(path)
    extra = list(extra or [])
    info = metric_info(extra)
    checkpoint = evaluation.get("checkpoint") if evaluation else None
    monitor = (config.get("train") or {}).get("monitor") if isinstance(config.get("train"), dict) else None
    sections = [
        header(title, evaluation, info),
        _history_section(history, best_epoch(history, checkpoint, monitor)),
        evaluation_section(evaluation, info, history),
    ]
    sections += [_extra_section(section) for section in extra if section.get("title")]
    config_yaml = yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)
    sections.append(f"<h2>Resolved config</h2><pre>{html.escape(config_yaml)}</pre>")
    env_rows = [[html.escape(str(k)), html.escape(str(v))] for k, v in environment.items()]
    sections.append("<h2>Environment</h2>" + table(["key", "value"], env_rows, numeric=False))
    if notes:
        sections.append(f"<h2>Notes</h2><ul>{_note_items(notes)}</ul>")
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
