"""Log a run to MLflow (`output.mlflow`): the flattened config as params, every epoch's numbers,
the test metrics, and the report, config and best checkpoint(s) as artifacts.

MLflow is optional (`pip install "biomx[tracking]"`, or mlflow itself) and imported only when asked for.
The default store is a file store in `<run>/mlruns` (`mlflow ui --backend-store-uri
<run>/mlruns`); `output.mlflow.tracking_uri` takes any MLflow URI. `<run>/mlflow.json` keeps the
MLflow run id, so `biomx train --resume` continues the same MLflow run.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from biomx.config import ExperimentConfig, MlflowConfig
from biomx.engine import distributed as dist
from biomx.engine.callbacks import Callback
from biomx.engine.checkpoint import atomic_write_text
from biomx.engine.logging import console
from biomx.engine.trainer import Trainer, TrainingInterrupted
from biomx.errors import BiomxError

MAX_PARAM_CHARS = 500  # MLflow's limit on a param value in older servers (6000 in newer ones)
BATCH = 100  # params or metrics per request: the MLflow REST limit for params
RUN_FILES = ("report.html", "test_metrics.json", "config.yaml", "run.json")  # the run's artifacts


def require_mlflow() -> None:
    """Raise the one-line install hint if MLflow is not importable."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise BiomxError('output.mlflow needs MLflow: pip install "biomx[tracking]" (or mlflow)') from None


def check_tracking(cfg: ExperimentConfig) -> None:
    """Before any run file is written: what `cfg.output` asks for can be imported."""
    if cfg.output.mlflow.enabled:
        require_mlflow()


def tracking_callbacks(cfg: ExperimentConfig, run_dir: Path) -> list[Callback]:
    """The callbacks `cfg.output` asks for: an `MLflowLogger`, or none."""
    if not cfg.output.mlflow.enabled:
        return []
    return [MLflowLogger(cfg.output.mlflow, run_dir, cfg.model_dump(mode="json"), cfg.name)]


def flat_params(config: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """`{"train": {"optimizer": {"lr": 0.001}}}` -> `("train.optimizer.lr", "0.001")`; lists,
    numbers, booleans and null as JSON."""
    for key, value in config.items():
        if isinstance(value, dict) and value:
            yield from flat_params(value, f"{prefix}{key}.")
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            yield f"{prefix}{key}", text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def _name(key: str) -> str:
    # MLflow accepts letters, digits, _ - . / and spaces in names; a target column may hold more.
    return re.sub(r"[^\w\-./ ]", "_", key)


def _numbers(row: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, float]:
    numbers = {k: v for k, v in row.items() if k not in skip and type(v) in (int, float)}  # not bool
    return {k: float(v) for k, v in numbers.items() if math.isfinite(v)}


class MLflowLogger(Callback):
    """One MLflow run per biomx run (ensemble members log `members/<k>/<metric>`). Rank 0 only.

    Args:
        settings: the `output.mlflow` section.
        run_dir: the biomx run directory (the default file store and `mlflow.json` live there).
        config: the experiment's config as JSON-able dict (logged flattened, as params).
        experiment: the MLflow experiment name when `settings.experiment` is not set.
    """

    def __init__(self, settings: MlflowConfig, run_dir: Path, config: dict[str, Any], experiment: str):
        require_mlflow()
        self.run_dir = Path(run_dir)
        self.uri = settings.tracking_uri or (self.run_dir / "mlruns").resolve().as_uri()
        self.experiment = settings.experiment or experiment
        self.config = config
        self.client: Any = None
        self.run_id: str | None = None
        self._warned = False

    # ------------------------------------------------------------------ the MLflow run

    def _start(self) -> None:
        """Open the MLflow run: the one in mlflow.json (a resume), else a new one with the params."""
        from mlflow import MlflowClient

        if "://" not in self.uri or self.uri.startswith("file:"):
            # MLflow 3 refuses file stores unless opted in; this one was asked for (or is our default).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        record = self.run_dir / "mlflow.json"
        saved = json.loads(record.read_text()) if record.is_file() else {}
        if saved.get("tracking_uri") == self.uri and saved.get("run_id"):
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(self.experiment)
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                     tags={"biomx.run_dir": str(self.run_dir.resolve())})  # fmt: skip
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(_name(k), v) for k, v in flat_params(self.config)]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + BATCH])
        atomic_write_text(record, json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}, indent=1) + "\n")

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(_name(k), v, stamp, step) for k, v in values.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + BATCH])

    def _safely(self, what: str, action: Callable[[], None]) -> None:
        # A tracking server that goes away must not end hours of training (or fail a finished
        # run): the run directory holds everything. One warning, then keep going.
        if self.run_id is None:
            return
        try:
            action()
        except Exception as err:  # noqa: BLE001  any MLflow or network failure
            if not self._warned:
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                console.print(f"[yellow]warning: MLflow: could not log {what} to {self.uri}: {first}[/]")
                self._warned = True

    def _prefix(self, trainer: Trainer) -> str:
        """'' for the run's own model; 'members/<k>/' for an ensemble member."""
        if trainer.run_dir is None:
            return ""
        try:
            rel = trainer.run_dir.resolve().relative_to(self.run_dir.resolve())
        except ValueError:
            return ""
        return "" if rel == Path() else f"{rel.as_posix()}/"

    # ------------------------------------------------------------------ the hooks

    def on_train_start(self, trainer: Trainer) -> None:
        if self.run_id is None:
            try:
                self._start()
            except Exception as err:  # noqa: BLE001  a bad URI, an unreachable server: one line
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                raise BiomxError(f"output.mlflow: cannot log to {self.uri}: {first}") from None
        else:  # the next ensemble member
            self._safely("the run status", lambda: self.client.update_run(self.run_id, status="RUNNING"))
        if trainer.history:  # resumed: epochs an interrupted run saved but never logged
            self._safely("earlier epochs", lambda: self._log_missing(trainer))

    def _log_missing(self, trainer: Trainer) -> None:
        prefix = self._prefix(trainer)
        history = self.client.get_metric_history(self.run_id, _name(f"{prefix}train_loss"))
        logged = {m.step for m in history}
        for row in trainer.history:
            if row["epoch"] not in logged:
                self.on_epoch_end(trainer, row)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        prefix = self._prefix(trainer)
        values = {f"{prefix}{k}": v for k, v in _numbers(record, skip=("epoch", "step")).items()}
        self._safely(f"epoch {record['epoch']}", lambda: self._log_metrics(values, record["epoch"]))

    def on_train_end(self, trainer: Trainer, error: BaseException | None) -> None:
        if error is not None:  # the run can be resumed after a stop; it failed otherwise
            status = "KILLED" if isinstance(error, TrainingInterrupted | KeyboardInterrupt) else "FAILED"
            self._safely("the run status", lambda: self.client.set_terminated(self.run_id, status))
            return
        if trainer.run_dir is not None:  # the model's files: members/<k>/... for an ensemble member
            prefix = self._prefix(trainer)
            for path, folder in ((trainer.run_dir / "checkpoints" / "best.safetensors", f"{prefix}checkpoints"),
                                 (trainer.run_dir / "metrics.jsonl", prefix.rstrip("/") or None)):  # fmt: skip
                if path.is_file():
                    self._safely(path.name, lambda p=path, f=folder: self.client.log_artifact(self.run_id, str(p), f))
        self._safely("the run status", lambda: self.client.set_terminated(self.run_id, "FINISHED"))

    def on_run_end(self, run_dir: Path, evaluation: dict[str, Any] | None) -> None:
        if not dist.is_main():
            return
        if evaluation is not None:
            values: dict[str, float] = {}
            for name, m in evaluation.get("metrics", {}).items():
                if isinstance(m, dict):
                    found = _numbers(m)
                    values.update({f"test_{name}{'' if k == 'value' else '_' + k}": v for k, v in found.items()})
            self._safely("the test metrics", lambda: self._log_metrics(values, 0))
        for name in RUN_FILES:
            if (run_dir / name).is_file():
                self._safely(name, lambda name=name: self.client.log_artifact(self.run_id, str(run_dir / name)))
        self._safely("the run status", lambda: self.client.set_terminated(self.run_id, "FINISHED"))
