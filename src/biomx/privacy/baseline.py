"""The utility cost of DP: a DP run's non-private twin and the report section comparing them.

With `train.privacy.baseline: true` (the default) a DP run also trains the same model (BatchNorm
converted as in the DP run), on the same split, with the same seed and optimizer, without DP, into
`RUN/without_privacy/`: a plain biomx run (`biomx evaluate`, `predict` and `export` work on it).
The section reads both runs' `test_metrics.json` and `metrics.jsonl`, whatever the task: every
metric the task wrote, with its interval where it has one, and the training time of each.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from biomx.errors import BiomxError
from biomx.runs import read_json

TWIN = "without_privacy"  # the twin's folder inside the DP run


def twin_config(cfg: Any, model: dict[str, Any], unconverted: dict[str, Any], run_dir: Path) -> Any | None:
    """The twin's ExperimentConfig (`cfg` without train.privacy, writing into RUN/without_privacy/,
    with the model arguments the DP run changed, e.g. norm: group), or None when the run has no
    twin (no DP, or baseline: false). `model` / `unconverted`: run.json's model entry after / before
    the BatchNorm conversion."""
    privacy = cfg.train.privacy
    if privacy is None or not privacy.baseline:
        return None
    twin = cfg.model_copy(deep=True)
    changed = {k: v for k, v in model["args"].items() if unconverted["args"].get(k) != v}
    twin.model.args = {**cfg.model.args, **changed}
    twin.train.privacy = None
    twin.output.dir, twin.output.name = str(run_dir), TWIN
    return twin


def twin_resume(twin_dir: Path) -> Path | None | bool:
    """How to (re)start a twin: False when it finished (its report is written), the folder to
    resume when it has a checkpoint, None to start afresh (a folder left without a checkpoint, by
    a crash before the first save, is removed: only the twin ever writes there)."""
    if (twin_dir / "report.html").is_file():
        return False
    if (twin_dir / "checkpoints" / "last.safetensors").is_file():
        return twin_dir
    if twin_dir.is_dir():
        shutil.rmtree(twin_dir)
    return None


def train_time(run_dir: Path) -> float | None:
    """Seconds spent in the training loop (metrics.jsonl `time_s`, validation excluded)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    times = [r["time_s"] for r in rows if isinstance(r.get("time_s"), int | float)]
    return float(sum(times)) if times else None


def _metrics(run_dir: Path) -> dict[str, Any]:
    try:
        value = read_json(run_dir / "test_metrics.json")
    except BiomxError:
        return {}
    return value if isinstance(value, dict) else {}


def _shown(metric: Any) -> tuple[float | None, str]:
    """A metric entry ({value, ci_low, ci_high} or a number) as (value, 'value (low-high)')."""
    if isinstance(metric, dict):
        value, low, high = metric.get("value"), metric.get("ci_low"), metric.get("ci_high")
    else:
        value, low, high = metric, None, None
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return None, "-"
    ci = all(isinstance(x, int | float) and math.isfinite(x) for x in (low, high))
    return float(value), f"{value:.4g}" + (f" ({low:.3g}-{high:.3g})" if ci else "")


def baseline_sections(run_dir: Path) -> list[dict[str, Any]]:
    """One report section for a DP run with a trained twin: every test metric of both runs with
    their difference, and both training times with their ratio; none without a twin."""
    twin_dir = Path(run_dir) / TWIN
    if not (twin_dir / "run.json").is_file():
        return []
    private, plain = _metrics(Path(run_dir)), _metrics(twin_dir)
    values, twin_values = private.get("metrics") or {}, plain.get("metrics") or {}
    headline = [n for n in private.get("headline") or [] if n in values]
    rows = []
    for name in headline + [n for n in values if n not in headline]:
        (a, a_text), (b, b_text) = _shown(values[name]), _shown(twin_values.get(name))
        if a is None and b is None:
            continue
        rows.append([name, a_text, b_text, f"{a - b:+.4g}" if a is not None and b is not None else "-"])
    t_dp, t_plain = train_time(Path(run_dir)), train_time(twin_dir)
    ratio = f"{t_dp / t_plain:.2f}x" if t_dp and t_plain else "-"
    rows.append(["training time (s)", f"{t_dp:.1f}" if t_dp else "-", f"{t_plain:.1f}" if t_plain else "-", ratio])
    text = (f"The same model on the same split, with the same seed and optimizer, trained without DP "
            f"({TWIN}/, a run of its own). Training time is the training loop (validation excluded): "
            f"{_seconds(t_dp)} with DP, {_seconds(t_plain)} without ({ratio}).")  # fmt: skip
    if not twin_values:
        text += " The twin has no test metrics (no test split, or it did not finish)."
    table = {"header": ["metric (test)", "with DP", "without DP", "difference"], "rows": rows, "numeric": True}
    return [{"title": "Utility cost of differential privacy", "text": text, "table": table}]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"
