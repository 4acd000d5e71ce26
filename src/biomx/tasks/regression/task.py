"""Regression tasks: one or several continuous targets, with metrics and bootstrap CIs.

The model predicts standardised targets, z = (y - mean) / std, with mean and std fit on the
training split (`fit_scaling`), so one learning rate suits targets in any unit. `loss` scales
the targets itself and `predictions` maps outputs back, so everything outside the model
(metrics, reports, predictions.csv) is in the original units.

Missing targets are NaN: a multi-task data set rarely has every label for every case
(Tox21-style). They are left out of the loss and of each target's metrics.

As in `classification`, all metrics come from one vectorised function (`_summary`) that
scores a batch of resamples at once, so the point estimate and every bootstrap resample run
the same code. A metric that is undefined on a sample (R² or a correlation of a constant,
anything with no observed cases) is NaN, and macro averages skip undefined targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

import biomx.tasks.regression.explain as explain
from biomx.errors import ConfigError, DataError
from biomx.tasks.regression.report import report_sections
from biomx.tasks.rows import RowTaskHooks
from biomx.tasks.stats import BLOCK_VALUES as _BLOCK_VALUES
from biomx.tasks.stats import as_float as _as_float
from biomx.tasks.stats import gather as _gather
from biomx.tasks.stats import nanmean as _nanmean
from biomx.tasks.stats import percentile_ci as _percentile_ci
from biomx.tasks.stats import ratio as _ratio

LOSSES = ("mse", "huber", "mae")
METRICS = ("rmse", "mae", "r2", "spearman", "pearson")
MAX_SCATTER_POINTS = 2000  # per target: enough for a scatter plot, small in test_metrics.json
_MIN_STD = 1e-8  # a constant training target would otherwise divide by zero


@dataclass
class RegressionTask(RowTaskHooks):
    """A regression problem: target names, target scaling and the training loss.

    Construction validates every field (ConfigError naming the `task.*` key). `mean` and `std`
    are both None (no scaling: the model predicts the original units) or one value per target.
    """

    targets: list[str]
    mean: list[float] | None = None
    std: list[float] | None = None
    loss_name: str = "mse"
    kind: str = "regression"

    def __post_init__(self) -> None:
        if self.kind != "regression":
            raise ConfigError(f"task.kind: expected regression, got {self.kind!r}")
        if not isinstance(self.targets, (list, tuple)) or len(self.targets) < 1:
            raise ConfigError(
                f"task.targets: expected a list of at least 1 target name, got {self.targets!r}")
        self.targets = [str(t) for t in self.targets]
        if "" in self.targets or len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"task.targets: names must be unique, non-empty, got {self.targets}")
        if self.loss_name not in LOSSES:
            raise ConfigError(f"task.loss: expected mse, huber or mae, got {self.loss_name!r}")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("task.mean, task.std: give both (one value per target) or neither")
        if self.mean is not None:
            self.mean = _check_values(self.mean, len(self.targets), "task.mean")
            self.std = _check_values(self.std, len(self.targets), "task.std")
            if not all(s > 0 for s in self.std):
                raise ConfigError(f"task.std: every value must be > 0, got {self.std}")

    @property
    def classes(self) -> list[str]:
        """The target names, under the name generic code (run.json, reports) prints."""
        return list(self.targets)

    @property
    def out_dim(self) -> int:
        """Number of model outputs: one per target."""
        return len(self.targets)

    def fit_scaling(self, train_targets: np.ndarray) -> None:
        """Set `mean` and `std` per target from the training targets, ignoring NaN.

        Args:
            train_targets: (N,) for one target or (N, K), in the original units.

        Raises:
            DataError: if the shape does not fit the targets or a target has no observed value.
        """
        values = np.asarray(train_targets, dtype=np.float64)
        values = values.reshape(len(values), -1)
        if values.shape[1] != len(self.targets):
            raise DataError(f"regression task: training targets have {values.shape[1]} columns, "
                            f"expected {len(self.targets)} (one per target in {self.targets})")
        observed = ~np.isnan(values)
        empty = np.flatnonzero(~observed.any(axis=0))
        if len(empty):
            raise DataError(f"regression task: target {self.targets[empty[0]]!r} has no observed "
                            "value in the training split; check the label column and the split")
        n = observed.sum(axis=0)
        mean = np.where(observed, values, 0.0).sum(axis=0) / n
        std = np.sqrt(np.where(observed, (values - mean) ** 2, 0.0).sum(axis=0) / n)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in np.maximum(std, _MIN_STD)]

    def solver_targets(self, targets: torch.Tensor) -> tuple[str, np.ndarray]:
        """The targets as a solver fits them (SolverTask): standardised like `loss`, (N, K), NaN missing."""
        y = targets.reshape(len(targets), len(self.targets)).double().numpy()
        if self.mean is not None:
            y = (y - np.asarray(self.mean)) / np.asarray(self.std)
        return "values", y

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean training loss over the observed (non-NaN) targets.

        The targets are standardised with `mean` and `std` and compared with the raw outputs
        (the model predicts standardised values). Huber uses delta = 1, i.e. one training
        standard deviation when the targets are scaled.

        Args:
            outputs: (N,) or (N, K) model outputs.
            targets: (N,) or (N, K) targets in the original units; NaN = missing.

        Returns:
            A scalar tensor; 0 (still attached to the graph) when every target is missing.

        Raises:
            DataError: if outputs and targets do not hold N x K values each.
        """
        k = len(self.targets)
        if outputs.numel() != len(outputs) * k or targets.shape[:1] != outputs.shape[:1] \
                or targets.numel() != outputs.numel():
            raise DataError(f"regression task: outputs {tuple(outputs.shape)} and targets "
                            f"{tuple(targets.shape)} do not fit {k} target(s); check out_dim")
        # (N,) and (N, 1) both become (N, K): broadcasting (N, 1) against (N,) would be (N, N).
        out = outputs.reshape(len(outputs), k)
        y = targets.reshape(len(targets), k).to(out.dtype)
        if self.mean is not None:
            y = (y - out.new_tensor(self.mean)) / out.new_tensor(self.std)
        observed = ~torch.isnan(y)
        if not observed.any():
            return 0.0 * outputs.sum()
        # Fill missing targets with 0 so that no NaN reaches the loss or its gradient.
        y = torch.where(observed, y, torch.zeros_like(y))
        if self.loss_name == "mse":
            per_entry = F.mse_loss(out, y, reduction="none")
        elif self.loss_name == "huber":
            per_entry = F.huber_loss(out, y, reduction="none", delta=1.0)
        else:
            per_entry = F.l1_loss(out, y, reduction="none")
        return (per_entry * observed).sum() / observed.sum()

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Outputs back in the original units: outputs * std + mean; (N,) for one target."""
        out = outputs.reshape(-1, len(self.targets))  # -1: an exported graph keeps its batch axis dynamic
        if self.mean is not None:
            out = out * out.new_tensor(self.std) + out.new_tensor(self.mean)
        return out[:, 0] if len(self.targets) == 1 else out

    def prediction_columns(self, preds: np.ndarray) -> dict[str, np.ndarray]:
        """Columns for predictions.csv: "pred_<target>" per target, in the original units."""
        preds = np.asarray(preds, dtype=np.float64).reshape(len(preds), len(self.targets))
        return {f"pred_{name}": preds[:, k] for k, name in enumerate(self.targets)}

    # ------------------------------------------------------------------ the Task protocol

    name: ClassVar[str] = "regression"
    explain: ClassVar = explain  # its explanation hooks (see tasks/rows.py)
    sections: ClassVar = staticmethod(report_sections)
    output_prefix: ClassVar[str] = "pred"  # predictions.csv: pred_<target>
    headline: ClassVar[tuple[str, ...]] = ("rmse", "r2", "mae", "spearman")  # the first two head the report

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "targets": self.targets, "loss": self.loss_name,
                "mean": self.mean, "std": self.std}  # fmt: skip

    def output_names(self) -> list[str]:
        return list(self.targets)

    def truth_column(self, targets: np.ndarray) -> list[str]:
        """The "true" column of predictions_test.csv: the first target, in its units."""
        return [f"{v:.6g}" for v in targets.reshape(len(targets), -1)[:, 0]]

    def uncertainty_errors(self, preds: np.ndarray, std: np.ndarray, targets: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, list[str], str]:  # fmt: skip
        """(|error|, std, names) per target and the error's name ("rmse": a Gaussian std, so the
        report also shows RMSE against std and the 95% coverage)."""
        preds, std = preds.reshape(len(preds), -1), std.reshape(len(std), -1)
        return np.abs(preds - targets.astype(float).reshape(len(targets), -1)), std, self.output_names(), "rmse"

    def quick_metrics(self, preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Cheap metrics for every validation epoch: METRICS, macro-averaged over targets.

        Args:
            preds: output of `predictions`, as numpy.
            targets: true values, shaped as for `loss`; NaN = missing.

        Returns:
            Metric name -> float; NaN where undefined (no observed target, a constant, NaN
            predictions), never raising for those.

        Raises:
            DataError: if the shapes do not fit the task.
        """
        preds, targets = self._check(preds, targets)
        if len(targets) == 0 or not np.isfinite(preds).all():  # nothing to score, or diverged
            return {m: float("nan") for m in METRICS}
        point = _summary(*_gather(_views(preds, targets), np.arange(len(targets))[None]))
        return {m: float(_nanmean(point[m])[0]) for m in METRICS}

    def evaluate(self, preds: np.ndarray, targets: np.ndarray, *, n_bootstrap: int = 1000,
                 ci: float = 0.95, seed: int = 0) -> dict:
        """Full test evaluation: macro metrics with bootstrap CIs, per-target metrics, scatter.

        Args:
            preds: output of `predictions`, as numpy.
            targets: true values, shaped as for `loss`; NaN = missing.
            n_bootstrap: resamples of the N cases with replacement (0: CIs are NaN).
            ci: level of the percentile intervals.
            seed: seed of the resampling and of the scatter subsample; same seed, same output.

        Returns:
            A JSON-serialisable dict (NaN allowed): kind, n, targets, ci, n_bootstrap, metrics
            ({name: {value, ci_low, ci_high}}, macro over targets), per_target ({target: {n,
            metrics}}), scatter ({target: {true, pred}}, at most MAX_SCATTER_POINTS each).

        Raises:
            DataError: if there are no cases, preds are not finite, or the shapes do not fit.
            ConfigError: if n_bootstrap or ci is out of range.
        """
        if n_bootstrap < 0 or not 0.0 < ci < 1.0:
            raise ConfigError(f"evaluate: expected n_bootstrap >= 0 and 0 < ci < 1, "
                              f"got n_bootstrap={n_bootstrap}, ci={ci}")
        preds, targets = self._check(preds, targets)
        n = len(targets)
        if n == 0:
            raise DataError("evaluate: the test set is empty; check the split or the data filter")
        if not np.isfinite(preds).all():
            raise DataError("evaluate: predictions contain NaN or inf; the model diverged (lower "
                            "the learning rate) or a checkpoint is corrupt")
        views = _views(preds, targets)
        point = _summary(*_gather(views, np.arange(n)[None]))
        boot = _bootstrap(views, n_bootstrap, seed)
        metrics = {m: {"value": float(_nanmean(point[m])[0]), **_percentile_ci(boot[m], ci)}
                   for m in METRICS}  # fmt: skip
        per_target = {name: {"n": int(point["n"][0, k]),
                             **{m: float(point[m][0, k]) for m in METRICS}}
                      for k, name in enumerate(self.targets)}  # fmt: skip
        return {
            "kind": self.kind, "headline": list(self.headline), "n": n, "targets": list(self.targets), "ci": float(ci),
            "n_bootstrap": int(n_bootstrap), "metrics": metrics, "per_target": per_target,
            "scatter": self._scatter(preds, targets, seed),
        }

    def _check(self, preds: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validate shapes; return float64 (N, K) preds and targets."""
        preds = np.asarray(preds, dtype=np.float64)
        targets = np.asarray(targets, dtype=np.float64)
        k = len(self.targets)
        if preds.size != len(preds) * k or targets.shape[:1] != preds.shape[:1] \
                or targets.size != preds.size:
            raise DataError(f"regression task: preds {preds.shape} and targets {targets.shape} "
                            f"do not fit {k} target(s) {self.targets}; check the model's out_dim")
        preds, targets = preds.reshape(len(preds), k), targets.reshape(len(targets), k)
        if np.isinf(targets).any():
            raise DataError("regression task: targets contain inf; use NaN (an empty cell) "
                            "for a missing value")
        return preds, targets

    def _scatter(self, preds: np.ndarray, targets: np.ndarray, seed: int) -> dict:
        """Observed (true, pred) pairs per target; a seeded subsample beyond the cap."""
        rng = np.random.default_rng(seed)
        scatter = {}
        for k, name in enumerate(self.targets):
            rows = np.flatnonzero(~np.isnan(targets[:, k]))
            if len(rows) > MAX_SCATTER_POINTS:
                rows = np.sort(rng.choice(rows, size=MAX_SCATTER_POINTS, replace=False))
            scatter[name] = {"true": targets[rows, k].tolist(), "pred": preds[rows, k].tolist()}
        return scatter


def build_regression_task(targets: list[str], loss_name: str = "mse",
                          mean: list[float] | None = None,
                          std: list[float] | None = None) -> RegressionTask:
    """Build a validated RegressionTask from config values.

    Args:
        targets: unique target names, at least 1.
        loss_name: "mse", "huber" or "mae" (on the standardised targets).
        mean: per-target training mean, or None (set later by `fit_scaling`, or no scaling).
        std: per-target training standard deviation (> 0), or None.

    Returns:
        The task.

    Raises:
        ConfigError: naming the offending `task.*` key and what it expects.
    """
    return RegressionTask(targets, mean=mean, std=std, loss_name=loss_name)


def _bootstrap(views: tuple, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Each macro metric over `n_boot` resamples of the N cases with replacement: (n_boot,)."""
    n, k = views[0].shape
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_VALUES // (n * k))
    parts = [{m: np.empty(0) for m in METRICS}]
    for start in range(0, n_boot, block):
        idx = rng.integers(0, n, size=(min(block, n_boot - start), n))
        stats = _summary(*_gather(views, idx))
        parts.append({m: _nanmean(stats[m]) for m in METRICS})
    return {m: np.concatenate([p[m] for p in parts]) for m in METRICS}


def _views(preds: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true, pred, observed), each (N, K)."""
    return targets, preds, ~np.isnan(targets)


# Metric kernels. y, pred and observed are (B, K, N): resamples, targets, cases.


def _summary(y: np.ndarray, pred: np.ndarray, observed: np.ndarray) -> dict[str, np.ndarray]:
    """Observed count and every metric in METRICS per resample and target, each (B, K)."""
    n = observed.sum(axis=-1)
    err = np.where(observed, pred - y, 0.0)
    sse = (err**2).sum(axis=-1)
    y_varies = _varies(y, observed)
    sst = (_centred(y, observed, n) ** 2).sum(axis=-1)
    # R² of a constant target is undefined (sklearn's 1.0/0.0 convention would hide that).
    r2 = np.where(y_varies, 1.0 - _ratio(sse, sst), np.nan)
    # Spearman = Pearson of the ranks. Missing entries rank last (inf) and are masked after,
    # so the observed entries get ranks 1..n with ties averaged, as scipy.stats.spearmanr.
    ranks = [rankdata(np.where(observed, v, np.inf), axis=-1) for v in (y, pred)]
    return {
        "n": n,
        "rmse": np.sqrt(_ratio(sse, n)),
        "mae": _ratio(np.abs(err).sum(axis=-1), n),
        "r2": r2,
        "pearson": _pearson(y, pred, observed, n),
        "spearman": _pearson(*ranks, observed, n),
    }


def _centred(x: np.ndarray, observed: np.ndarray, n: np.ndarray) -> np.ndarray:
    """x minus its mean over the observed entries, 0 where missing."""
    mean = _ratio(np.where(observed, x, 0.0).sum(axis=-1), n)
    return np.where(observed, x - mean[..., None], 0.0)


def _varies(x: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """True where the observed entries take at least two values.

    Tested exactly rather than by variance > 0: rounding leaves a constant's variance a
    tiny positive number, which would turn an undefined correlation into noise.
    """
    return np.where(observed, x, -np.inf).max(axis=-1) > np.where(observed, x, np.inf).min(axis=-1)


def _pearson(x: np.ndarray, y: np.ndarray, observed: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Pearson correlation over the observed entries; NaN where x or y is constant."""
    dx, dy = _centred(x, observed, n), _centred(y, observed, n)
    r = _ratio((dx * dy).sum(axis=-1), np.sqrt((dx**2).sum(axis=-1) * (dy**2).sum(axis=-1)))
    return np.where(_varies(x, observed) & _varies(y, observed), np.clip(r, -1.0, 1.0), np.nan)


def _check_values(values: object, k: int, key: str) -> list[float]:
    """Validate task.mean / task.std: k finite numbers."""
    if not isinstance(values, (list, tuple)) or len(values) != k:
        got = len(values) if isinstance(values, (list, tuple)) else repr(values)
        raise ConfigError(f"{key}: expected {k} values (one per target), got {got}")
    numbers = [_as_float(v, key) for v in values]
    if not all(np.isfinite(v) for v in numbers):
        raise ConfigError(f"{key}: every value must be finite, got {numbers}")
    return numbers
