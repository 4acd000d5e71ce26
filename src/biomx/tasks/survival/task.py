"""The survival task: right-censored (time, event) targets, a Cox or a discrete-time model.

Task-space predictions are what the network's outputs mean before any baseline: a Cox model's
log-risk (N,), or a logistic-hazard model's survival at its bin edges (N, K). `risk` and
`survival` turn either into a risk score (higher = earlier event) and S(t) at any times, so the
metrics, reports and prediction files do not care which model made them. A Cox model's S(t)
needs the Breslow baseline hazard (`baseline`), estimated on the training split after training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.integrate import trapezoid  # np.trapezoid is numpy >= 2 only

from biomx.errors import BiomxError, ConfigError, DataError
from biomx.protocols import PredictRequest, TestRun
from biomx.tasks.survival import evaluate as _evaluate
from biomx.tasks.survival import explain
from biomx.tasks.survival.baseline import cox_survival
from biomx.tasks.survival.losses import cox_loss, hazard_survival, logistic_hazard_loss
from biomx.tasks.survival.metrics import concordance
from biomx.tasks.survival.report import report_sections

MODELS = ("cox", "logistic_hazard")
QUICK_METRICS = ("c_index",)


def horizon_name(h: float) -> str:
    """How a horizon appears in column and metric names: 365.0 -> "365", 2.5 -> "2.5"."""
    return f"{h:g}"


@dataclass
class SurvivalTask:
    """A survival problem; `cuts` (logistic_hazard) and `horizons` are fitted on the training split."""

    model: str
    horizons: list[float]
    ties: str = "efron"
    cuts: list[float] | None = None  # logistic_hazard: right edges of the time bins
    offset: list[float] | None = None  # logistic_hazard: training hazard logits added to the outputs
    tau: float | None = None  # Uno's C truncation (default: the last horizon)
    time_unit: str | None = None
    columns: list[str] = field(default_factory=lambda: ["time", "event"])
    baseline: dict[str, Any] | None = None  # cox: Breslow estimate (see baseline.breslow)
    kind: str = "survival"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"task.model: expected cox or logistic_hazard, got {self.model!r}")
        if self.model == "logistic_hazard" and not self.cuts:
            raise ConfigError("task: a logistic_hazard model needs its time bins (cuts)")
        if not self.horizons:
            raise ConfigError("task.horizons: give at least one time")

    name: ClassVar[str] = "survival"
    headline: ClassVar[tuple[str, ...]] = ("c_index", "ibs", "uno_c")

    @property
    def classes(self) -> list[str]:
        return ["risk"]

    @property
    def out_dim(self) -> int:
        return 1 if self.model == "cox" else len(self.cuts or [])

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() != 2 or targets.shape[1] != 2 or len(targets) != len(outputs):
            raise DataError(f"survival task: targets {tuple(targets.shape)} must be (N, 2): time and event")
        time, event = targets[:, 0], targets[:, 1]
        if self.model == "cox":
            return cox_loss(outputs.reshape(-1), time, event, self.ties)
        return logistic_hazard_loss(self._logits(outputs), time, event, torch.tensor(self.cuts, dtype=torch.float32))

    def _logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """Hazard logits: the network's outputs plus the training split's per-bin offset."""
        logits = outputs.reshape(len(outputs), -1).float()
        return logits + logits.new_tensor(self.offset) if self.offset is not None else logits

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Cox: the log-risk (N,); logistic hazard: survival at each bin edge (N, K)."""
        if self.model == "cox":
            return outputs.float().reshape(-1)
        return hazard_survival(self._logits(outputs))

    def risk(self, preds: np.ndarray) -> np.ndarray:
        """One score per sample, higher = earlier event: the Cox log-risk, or for the discrete
        model the expected time lost before the last bin edge (its restricted mean survival
        subtracted from that edge)."""
        preds = np.asarray(preds, dtype=np.float64)
        if self.model == "cox":
            return preds.reshape(-1)
        edges = np.concatenate([[0.0], self.cuts or []])
        surv = np.concatenate([np.ones((len(preds), 1)), preds.reshape(len(preds), -1)], axis=1)
        return edges[-1] - trapezoid(surv, edges, axis=1)

    def survival(self, preds: np.ndarray, times: np.ndarray) -> np.ndarray:
        """S(t) at `times` for each sample, (N, T)."""
        preds = np.asarray(preds, dtype=np.float64)
        times = np.asarray(times, dtype=np.float64)
        if self.model == "cox":
            if self.baseline is None:
                raise BiomxError("survival task: this Cox run has no baseline hazard "
                                 "(survival_baseline.json); run `biomx evaluate RUN` to estimate it")
            return cox_survival(self.baseline, preds, times)
        # linear between bin edges (a constant event density within a bin), 1 at time 0
        edges = np.concatenate([[0.0], self.cuts or []])
        surv = np.concatenate([np.ones((len(preds), 1)), preds.reshape(len(preds), -1)], axis=1)
        return np.stack([np.interp(times, edges, row) for row in surv]) if len(surv) else np.zeros((0, len(times)))

    def quick_metrics(self, preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Harrell's C on the validation split; NaN without a comparable pair or for NaN outputs."""
        targets = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
        risk = self.risk(preds)
        if len(risk) == 0 or not np.isfinite(risk).all() or targets.shape[1] != 2:
            return {"c_index": float("nan")}
        return {"c_index": concordance(targets[:, 0], targets[:, 1], risk)}

    def prediction_columns(self, preds: np.ndarray) -> dict[str, np.ndarray]:
        """`risk` and `survival_at_<h>` for every horizon."""
        columns = {"risk": self.risk(preds)}
        surv = self.survival(preds, np.asarray(self.horizons))
        for k, h in enumerate(self.horizons):
            columns[f"survival_at_{horizon_name(h)}"] = surv[:, k]
        return columns

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "model": self.model, "ties": self.ties, "cuts": self.cuts,
                "offset": self.offset, "horizons": self.horizons, "tau": self.tau, "time_unit": self.time_unit,
                "columns": self.columns}  # fmt: skip

    def evaluate_test(self, run: TestRun) -> tuple[dict[str, Any] | None, list[dict]]:
        return _evaluate.evaluate_test(self, run)

    def report_sections(self, evaluation: dict[str, Any]) -> list[dict]:
        return report_sections(evaluation)

    def predict(self, request: PredictRequest) -> dict[str, list]:
        return _evaluate.predict(self, request)

    # Explanation hooks a modality may ask (see explain.py).
    def attribution_target(self, preds: np.ndarray) -> tuple[np.ndarray, int | None]:
        return explain.attribution_target(self, preds)

    def attribution_text(self) -> tuple[str, str]:
        return explain.attribution_text(self)

    def pick_explained(self, preds: np.ndarray, targets: np.ndarray, n: int) -> list[tuple[int, str, int]]:
        return explain.pick_explained(self, preds, targets, n)

    def describe(self, column: int, pred: np.ndarray, target: np.ndarray) -> tuple[str, float, object, str]:
        return explain.describe(self, column, pred, target)


def task_from_info(info: dict[str, Any]) -> SurvivalTask:
    return SurvivalTask(model=info["model"], horizons=info["horizons"], ties=info.get("ties", "efron"),
                        cuts=info.get("cuts"), offset=info.get("offset"), tau=info.get("tau"), time_unit=info.get("time_unit"),
                        columns=info.get("columns") or ["time", "event"])  # fmt: skip
