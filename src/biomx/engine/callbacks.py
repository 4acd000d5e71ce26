"""Trainer callbacks: code that runs at fixed points of training without living in the loop.

A callback is any object with these methods; subclass `Callback` to get no-op defaults and
override only what you need:

    class PrintBest(Callback):
        def on_epoch_end(self, trainer, record):
            print(record["epoch"], trainer.state["best"])

    Trainer(model, loss_fn, train_ds, run_dir="runs/x", callbacks=[PrintBest()]).fit()

Hooks run on rank 0 only, in list order, after the Trainer's own (metrics.jsonl, TensorBoard).
A callback may call `trainer.request_stop()`; every rank then stops after the current step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomx.engine.checkpoint import atomic_write_text

if TYPE_CHECKING:
    from biomx.engine.trainer import Trainer


class Callback:
    """The hooks, all no-ops. `trainer` is the running `Trainer` (its `state`, `history`,
    `settings`, `run_dir`, `model`)."""

    def on_train_start(self, trainer: Trainer) -> None:
        """`fit` begins (after a resumed checkpoint is loaded: `trainer.history` holds the
        epochs already done)."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """An epoch ended and `last.safetensors` was saved. `record` is its row of
        metrics.jsonl: epoch, step, train_loss, val_loss, val_<metric>..., lr, samples_per_s,
        time_s."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """A checkpoint was written: `last.safetensors` (every epoch, every
        `train.checkpoint_every` steps, on a stop) or `best.safetensors`."""

    def on_train_end(self, trainer: Trainer, error: BaseException | None) -> None:
        """`fit` ends: `error` is None after the last epoch (or early stopping), else what ends
        it (`TrainingInterrupted` after Ctrl-C/SIGTERM, or any other exception, re-raised after
        the callbacks ran)."""

    def on_run_end(self, run_dir: Path, evaluation: dict[str, Any] | None) -> None:
        """The whole experiment is done: every ensemble member trained, the test split scored
        (`evaluation`, the content of test_metrics.json; None without a test split) and the
        report written. Called by `biomx.experiment`, not by the Trainer."""


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsFile(Callback):
    """`run_dir/metrics.jsonl`, one line per epoch."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        # Rewriting the whole file from the history keeps it consistent with the checkpoint
        # after a resume (epochs logged after the last save are dropped, not duplicated).
        lines = [json.dumps({k: _json_safe(v) for k, v in row.items()}) for row in trainer.history]
        atomic_write_text(trainer.run_dir / "metrics.jsonl", "\n".join(lines) + "\n")


class TensorBoardLogger(Callback):
    """`run_dir/tensorboard/`: each epoch's numbers as scalars (`train_loss` -> `train/loss`)."""

    def __init__(self) -> None:
        self.writer = None

    def on_train_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when asked

        self.writer = SummaryWriter(log_dir=str(trainer.run_dir / "tensorboard"))

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)):
                self.writer.add_scalar(key.replace("_", "/", 1), value, record["epoch"])
        self.writer.flush()

    def on_train_end(self, trainer: Trainer, error: BaseException | None) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
