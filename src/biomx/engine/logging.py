"""The training console: a progress display per epoch and the per-epoch summary line (rank 0 only).

The metric files (metrics.jsonl, TensorBoard) are callbacks: see `biomx.engine.callbacks`.
"""

from __future__ import annotations

import sys
import time
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

console = Console(stderr=True, highlight=False, soft_wrap=True)


def _rich_bar() -> Progress:
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


def format_duration(seconds: float) -> str:
    """`42s`, `1m35s`, `2h03m`: short enough for a log line, precise enough for an ETA."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class EpochProgress:
    """One epoch's progress on rank 0: a rich bar on a terminal; otherwise (nohup, SLURM, CI logs,
    where a bar would print nothing useful until the epoch ends) a plain line whenever
    `every_s` seconds or `every_steps` batches have passed since the last one:

        epoch 1/5  step 120/400  loss 0.412  312 samples/s  eta 1m35s

    Use as a context manager; `update` after each optimizer step. `enabled=False`: silent.
    """

    def __init__(self, enabled: bool, epoch: int, epochs: int, total: int, completed: int,
                 every_s: float = 30.0, every_steps: int | None = None):  # fmt: skip
        self.description, self.total = f"epoch {epoch}/{epochs}", total
        self.every_s, self.every_steps = every_s, every_steps
        self.bar = _rich_bar() if enabled and sys.stderr.isatty() else None
        self.plain = enabled and self.bar is None
        self.task = None
        if self.bar is not None:
            self.task = self.bar.add_task(self.description, total=total, completed=completed, rate=0.0, loss=0.0)
        # The ETA uses this session's pace only: batches done before a resume took no time here.
        self.first = self.last_line_at = completed
        self.started = self.last_line_time = time.perf_counter()

    def __enter__(self) -> EpochProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, completed: int, rate: float, loss: float) -> None:
        """`completed` batches of `total` done; `rate` samples/s (all ranks); `loss` running mean."""
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, rate=rate, loss=loss)
        if not self.plain:
            return
        now = time.perf_counter()
        due = now - self.last_line_time >= self.every_s or (
            self.every_steps is not None and completed - self.last_line_at >= self.every_steps)
        if due:
            self.last_line_time, self.last_line_at = now, completed
            console.print(self.line(completed, rate, loss, now - self.started))

    def line(self, completed: int, rate: float, loss: float, elapsed: float) -> str:
        done = completed - self.first
        eta = format_duration((self.total - completed) * elapsed / done) if done > 0 else "?"
        return (f"{self.description}  step {completed}/{self.total}  loss {loss:.4g}  "
                f"{rate:.0f} samples/s  eta {eta}")  # fmt: skip


def format_epoch(row: dict[str, Any]) -> str:
    parts = [f"epoch {row['epoch']}"]
    for key, value in row.items():
        if key in ("epoch", "step"):
            continue
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
    return "  ".join(parts)
