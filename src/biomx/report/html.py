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
import os
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import yaml
from matplotlib.figure import Figure

from biomx.modalities.common.gradcam import overlay

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


def _fmt(value: Any) -> str:
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
    headline = {"regression": ("rmse", "r2"), "segmentation": ("dice", "hd95")}.get(
        evaluation.get("kind"), ("auroc", "accuracy"))
    for wanted in headline:
        # Exact name first, so "balanced_accuracy" does not stand in for "accuracy".
        name = wanted if wanted in metrics else next((k for k in metrics if wanted in k), None)
        if name is not None:
            m = metrics[name]
            found.append(
                f"{html.escape(name)} <b>{_fmt(m.get('value'))}</b> "
                f"({level} {_fmt(m.get('ci_low'))}&ndash;{_fmt(m.get('ci_high'))})"
            )
    found.append(f"n = {_fmt(evaluation.get('n'))}")
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
        + [_fmt(row.get(k)) for k in keys if k != "epoch"]
        for i, row in enumerate(history)
    ]
    parts.append(_table(["epoch"] + [k for k in keys if k != "epoch"], rows))
    return "\n".join(parts)


def _curves_figure(curves: dict, kind: str) -> str:
    """ROC (with chance diagonal) or PR curves, one line per class."""
    x_key, y_key, score = ("fpr", "tpr", "auc") if kind == "roc" else ("recall", "precision", "ap")
    fig = Figure(figsize=(4.6, 4))
    ax = fig.add_subplot()
    if kind == "roc":
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for name, curve in curves.items():
        label = f"{name} ({score.upper()} {_fmt(curve.get(score))})"
        ax.plot(curve[x_key], curve[y_key], linewidth=1.5, label=label)
    ax.set_xlabel(x_key.upper() if kind == "roc" else "recall")
    ax.set_ylabel(y_key.upper() if kind == "roc" else "precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("ROC curve" if kind == "roc" else "Precision-recall curve")
    ax.legend(fontsize=8, loc="lower right" if kind == "roc" else "lower left")
    ax.grid(alpha=0.3)
    return _img(figure_to_data_uri(fig), f"{kind} curves")


def _draw_confusion(ax: Any, matrix: np.ndarray, labels: list[str], title: str) -> None:
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(labels))
    rotate = len(labels) > 3  # long class lists need slanted labels to stay readable
    ax.set_xticks(ticks, labels, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    # White text on dark cells, black on light: readable on the whole colormap.
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if count > threshold else "black"
        ax.text(col, row, f"{count:g}", ha="center", va="center", color=colour, fontsize=11)


def _confusion_figure(evaluation: dict) -> str | None:
    """One matrix for binary/multiclass, a small grid of 2x2 matrices for multilabel."""
    confusion = evaluation.get("confusion_matrix")
    if confusion is not None and not isinstance(confusion, dict):
        matrix = np.asarray(confusion)
        classes = [str(c) for c in evaluation.get("classes", range(len(matrix)))]
        size = 3 + 0.45 * len(classes)
        fig = Figure(figsize=(size, size))
        _draw_confusion(fig.add_subplot(), matrix, classes, "Confusion matrix")
        return _img(figure_to_data_uri(fig), "confusion matrix")
    per_label = confusion.get("per_label") if isinstance(confusion, dict) else evaluation.get("per_label")
    if not per_label:
        return None
    cols = min(4, len(per_label))
    rows = math.ceil(len(per_label) / cols)
    fig = Figure(figsize=(3 * cols, 3 * rows))
    for i, (name, matrix) in enumerate(per_label.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw_confusion(ax, np.asarray(matrix), ["neg", "pos"], str(name))
    fig.tight_layout()
    return _img(figure_to_data_uri(fig), "per-label confusion matrices")


def _calibration_figure(calibration: dict) -> str:
    confidence = np.asarray(calibration.get("bin_confidence", []), dtype=float)
    frequency = np.asarray(calibration.get("bin_frequency", []), dtype=float)
    count = np.asarray(calibration.get("bin_count", np.ones_like(confidence)), dtype=float)
    keep = (count > 0) & np.isfinite(confidence) & np.isfinite(frequency)  # empty bins
    fig = Figure(figsize=(4.6, 4))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    ax.bar(confidence[keep], frequency[keep], width=0.06, alpha=0.35, color="tab:blue")
    ax.plot(confidence[keep], frequency[keep], marker="o", color="tab:blue", label="model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"Reliability diagram (ECE {_fmt(calibration.get('ece'))})")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _img(figure_to_data_uri(fig), "reliability diagram")


MAX_SCATTER_TARGETS = 4  # a report with a figure pair for each of 12 Tox21 tasks is unreadable


def _scatter_figure(name: str, true: np.ndarray, pred: np.ndarray, stats: dict) -> str:
    """Predicted vs true with the identity line; RMSE and R\u00b2 in the title."""
    fig = Figure(figsize=(4.6, 4))
    ax = fig.add_subplot()
    low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1, label="y = x")
    # Fainter points when there are many, so dense regions still show their density.
    ax.scatter(true, pred, s=10, alpha=0.6 if len(true) < 500 else 0.25, color="tab:blue")
    ax.set_xlabel(f"true {name}")
    ax.set_ylabel(f"predicted {name}")
    ax.set_title(f"{name}: RMSE {_fmt(stats.get('rmse'))}, R\u00b2 {_fmt(stats.get('r2'))}")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _img(figure_to_data_uri(fig), f"{name} predicted vs true")


def _residual_figure(name: str, true: np.ndarray, pred: np.ndarray) -> str:
    """Histogram of residuals (predicted - true), with zero marked."""
    fig = Figure(figsize=(4.6, 4))
    ax = fig.add_subplot()
    ax.hist(pred - true, bins=min(40, max(5, len(true) // 10)), color="tab:blue", alpha=0.7)
    ax.axvline(0.0, linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel(f"residual (predicted - true {name})")
    ax.set_ylabel("cases")
    ax.set_title(f"{name}: residuals")
    ax.grid(alpha=0.3)
    return _img(figure_to_data_uri(fig), f"{name} residuals")


def _stats_table(title: str, label: str, stats_by_name: dict) -> str:
    """A table of per-class or per-target statistics, one row per name."""
    columns = list(dict.fromkeys(k for stats in stats_by_name.values() for k in stats))
    rows = [
        [html.escape(str(name))] + [_fmt(stats.get(c)) for c in columns]
        for name, stats in stats_by_name.items()
    ]
    return f"<h3>{title}</h3>" + _table([label] + columns, rows)


def _regression_parts(evaluation: dict) -> list[str]:
    """Per-target table, then a scatter and a residual histogram for the first few targets."""
    parts = []
    per_target = evaluation.get("per_target", {})
    if per_target:
        parts.append(_stats_table("Per target", "target", per_target))
    figures = []
    scatter = evaluation.get("scatter", {})
    for name in list(scatter)[:MAX_SCATTER_TARGETS]:
        true = np.asarray(scatter[name].get("true", []), dtype=float)
        pred = np.asarray(scatter[name].get("pred", []), dtype=float)
        if len(true) == 0:  # a target with no observed test value has nothing to plot
            continue
        stats = per_target.get(name, {})
        figures.append(_scatter_figure(str(name), true, pred, stats))
        figures.append(_residual_figure(str(name), true, pred))
    if len(scatter) > MAX_SCATTER_TARGETS:
        figures.append(f"<p>Figures for the first {MAX_SCATTER_TARGETS} of {len(scatter)} "
                       "targets; every target is in the table above.</p>")
    parts.append('<div class="grid">' + "".join(figures) + "</div>")
    return parts


def _evaluation_section(evaluation: dict | None) -> str:
    parts = ["<h2>Test evaluation</h2>"]
    if evaluation is None:
        parts.append("<p>No test split was evaluated.</p>")
        return "\n".join(parts)
    level = f"{100 * float(evaluation.get('ci', 0.95)):g}%"
    threshold = evaluation.get("threshold")  # None for multiclass (argmax)
    parts.append(
        f"<p>Task: {html.escape(str(evaluation.get('kind', '?')))}; "
        f"n = {_fmt(evaluation.get('n'))}; "
        + (f"threshold {_fmt(threshold)}; " if threshold is not None else "")
        + f"{level} CIs from {_fmt(evaluation.get('n_bootstrap'))} bootstrap resamples.</p>"
    )
    rows = [
        [
            html.escape(name),
            _fmt(m.get("value")),
            f"[{_fmt(m.get('ci_low'))}, {_fmt(m.get('ci_high'))}]",
        ]
        for name, m in evaluation.get("metrics", {}).items()
    ]
    parts.append(_table(["metric", "value", f"{level} CI"], rows))
    if evaluation.get("kind") == "regression":
        parts.extend(_regression_parts(evaluation))
        return "\n".join(parts)
    figures = []
    curves = evaluation.get("curves", {})
    for kind in ("roc", "pr"):
        if curves.get(kind):
            figures.append(_curves_figure(curves[kind], kind))
    confusion = _confusion_figure(evaluation)
    if confusion is not None:
        figures.append(confusion)
    if evaluation.get("calibration"):
        figures.append(_calibration_figure(evaluation["calibration"]))
    parts.append('<div class="grid">' + "".join(figures) + "</div>")
    per_class = evaluation.get("per_class")
    if per_class:
        parts.append(_stats_table("Per class", "class", per_class))
    return "\n".join(parts)


def _examples_section(examples: list[dict]) -> str:
    cards = []
    for example in examples:
        image = np.asarray(example["image"], dtype=np.float32)
        heatmap = example.get("heatmap")
        caption = html.escape(str(example.get("caption", "")))
        plain = overlay(image, np.zeros(image.shape[-2:], dtype=np.float32), alpha=0.0)
        imgs = _img(_array_to_data_uri(plain), "image", "px")
        if heatmap is not None:
            imgs += _img(_array_to_data_uri(overlay(image, heatmap)), "Grad-CAM overlay", "px")
        cards.append(f"<figure>{imgs}<figcaption>{caption}</figcaption></figure>")
    return (
        "<h2>Explanations</h2><p>Each image with its Grad-CAM overlay: red marks the regions "
        "that raised the explained logit most.</p>"
        f'<div class="grid">{"".join(cards)}</div>'
    )


def _extra_section(section: dict) -> str:
    parts = [f"<h2>{html.escape(str(section['title']))}</h2>"]
    if section.get("text"):
        parts.append(f"<p>{html.escape(str(section['text']))}</p>")
    if section.get("table"):
        table = section["table"]
        rows = [[html.escape(str(cell)) for cell in row] for row in table["rows"]]
        parts.append(_table([str(h) for h in table["header"]], rows, numeric=False))
    for fig in section.get("figures", []):  # matplotlib figures or ready PNG bytes (e.g. RDKit drawings)
        uri = figure_to_data_uri(fig) if isinstance(fig, Figure) else _png_data_uri(fig)
        parts.append(_img(uri, str(section["title"])))
    return "\n".join(parts)


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
    examples: list[dict] | None = None,
    notes: list[str] | None = None,
    extra: list[dict] | None = None,
) -> Path:
    """Write the run report as one self-contained HTML file, atomically.

    Args:
        path: where to write, e.g. `runs/exp1/report.html`; parent folders are created.
        title: the report's heading.
        history: per-epoch dicts (`epoch`, `train_loss`, `val_loss`, `val_<metric>`, ...);
            missing keys are skipped, an empty list gives a "no history" note.
        evaluation: the test evaluation dict (`kind`, `n`, `metrics`, `curves`,
            `confusion_matrix` or `per_label`, `calibration`, `per_class`; regression:
            `per_target` and `scatter`), or None.
        config: the resolved experiment config, shown as YAML.
        environment: versions, device and the like, shown as a table.
        examples: dicts with `image` (C, H, W) in [0, 1], `heatmap` (H, W) or None, and
            `caption`, shown as an image/Grad-CAM grid.
        notes: free-text remarks (e.g. skipped files).
        extra: modality-specific sections, each `{"title": str, "text": str (optional),
            "figures": [Figure, ...] (optional), "table": {"header": [...], "rows": [[...]]}
            (optional)}`; text and cells are escaped.

    Returns:
        `path`.

    Raises:
        BiomxError: if an example's heatmap does not match its image size.
        OSError: if the file cannot be written.
    """
    path = Path(path)
    sections = [
        _header(title, evaluation),
        _history_section(history),
        _evaluation_section(evaluation),
    ]
    if examples:
        sections.append(_examples_section(examples))
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
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: a crash mid-write never leaves a truncated report at `path`.
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(document, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
