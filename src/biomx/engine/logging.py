"""Per-epoch metrics to metrics.jsonl and TensorBoard, and a progress display (rank 0 only)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from biomx.engine.checkpoint import atomic_write_text

console = Console(stderr=True, highlight=False, soft_wrap=True)


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsLog:
    """metrics.jsonl (rewritten atomically from the full history) plus TensorBoard events."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when asked

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, history: list[dict[str, Any]]) -> None:
        # Rewriting the whole file keeps it consistent with the checkpoint after a resume.
        lines = [json.dumps({k: _json_safe(v) for k, v in row.items()}) for row in history]
        atomic_write_text(self.path, "\n".join(lines) + "\n")
        if self.writer is not None and history:
            row = history[-1]
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    self.writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def make_progress(enabled: bool) -> Progress | None:
    """A rich progress bar with samples/s and ETA, only on an interactive terminal."""
    if not enabled or not sys.stderr.isatty():
        return None
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.0f} samples/s  loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def format_epoch(row: dict[str, Any]) -> str:
    parts = [f"epoch {row['epoch']}"]
    for key, value in row.items():
        if key in ("epoch", "step"):
            continue
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
    return "  ".join(parts)
