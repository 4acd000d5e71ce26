"""`torchrun --nproc_per_node N -m biomx tune CONFIG`: every trial trained by all N processes
together (DDP), with one process, rank 0, talking to the study.

Rank 0 asks the study for a trial and broadcasts its number and parameters; every rank trains
that trial as a normal distributed run (`biomx.experiment.train`, one run folder written by rank
0). After each epoch rank 0 reports the validation metric and decides whether to prune; the
Trainer shares its stop with every rank (`any_rank` on `stopped_early`), so all ranks end the
epoch loop together and still evaluate the pruned run. Rank 0 then tells the study and writes the
tune folder. Every exchange goes through `_lead`: an error on rank 0 between two trainings (the
database gone, a bad tune_trial.json) is broadcast in place of the next message, so the other
ranks raise it too instead of waiting. An error on one rank inside a training ends that process,
and torchrun then stops the others; the trial stays RUNNING and is queued again at the next start.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from biomx.engine import distributed as dist
from biomx.engine.runtime import select_device
from biomx.errors import BiomxError
from biomx.tune.search import Pruning, Setup, finish, next_trial, open_study, recorded


def _share(value: Any) -> Any:
    """Rank 0's `value` on every rank (broadcast on the CPU/gloo group: plain JSON-like values)."""
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def _lead(step: Callable[[], Any] | None) -> Any:
    """Rank 0 runs `step` (the others pass None) and every rank gets its result. When it raises,
    rank 0 broadcasts the error's line instead and raises; the others raise that line."""
    if dist.is_main():
        assert step is not None
        try:
            value = step()
        except BaseException as err:
            _share(["error", str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__])
            raise
        _share(["ok", value])
        return value
    kind, value = _share(None)
    if kind == "error":
        raise BiomxError(f"tune: rank 0 stopped: {value}")
    return value


class SharedPruning(Pruning):
    """Pruning on rank 0 of a torchrun (callbacks run there only). Its decision reaches the other
    ranks through the Trainer's shared stop; an error talking to the study stops the trial on
    every rank the same way, and is raised after the run, through `_lead`, on every rank."""

    def __init__(self, trial, metric: str, direction: str) -> None:
        super().__init__(trial, metric, direction)
        self.error: BaseException | None = None

    def on_epoch_end(self, trainer, record: dict[str, Any]) -> None:
        try:
            super().on_epoch_end(trainer, record)
        except Exception as err:  # raised here, on rank 0 alone, it would leave the others training
            self.error = err
            trainer.state["stopped_early"] = True


class _Leader:
    """Rank 0's side: the study, the trial being trained and its pruning callback."""

    def __init__(self, setup: Setup, trials: int, worker: bool) -> None:
        self.setup, self.trials, self.worker = setup, trials, worker
        self.study: Any = None
        self.trial: Any = None
        self.params: dict[str, Any] = {}
        self.pruning: SharedPruning | None = None

    def open(self) -> None:
        self.study = open_study(self.setup, self.worker)

    def ask(self) -> list[Any] | None:
        asked = next_trial(self.setup, self.study, self.trials)
        if asked is None:
            return None
        self.trial, self.params = asked
        self.pruning = SharedPruning(self.trial, self.setup.metric, self.setup.direction)
        return [self.trial.number, self.params]

    def settle(self, run_dir: Path) -> None:
        assert self.pruning is not None
        if self.pruning.error is not None:
            with recorded(self.study, self.trial):
                raise self.pruning.error
        finish(self.setup, self.study, self.trial, self.params, self.pruning, run_dir)

    def summary(self) -> None:
        from biomx.tune.report import write_summary

        write_summary(self.setup, self.study)


def tune_ranks(setup: Setup, trials: int, worker: bool) -> Path:
    """The search (or a --worker's share of it) under torchrun, on every rank; returns the tune folder."""
    from biomx.experiment import train

    dist.init_from_env(select_device(setup.cfg.train.device))
    leader = _Leader(setup, trials, worker) if dist.is_main() else None
    _lead(leader and leader.open)
    while (order := _lead(leader and leader.ask)) is not None:
        cfg = setup.trial_config(order[1], order[0])  # [number, params]: the same run on every rank
        if leader is None:
            run_dir = train(cfg)
        else:
            with recorded(leader.study, leader.trial):
                run_dir = train(cfg, callbacks=[leader.pruning])
        _lead(leader and functools.partial(leader.settle, run_dir))
    if not worker:
        _lead(leader and leader.summary)
    return setup.dir
