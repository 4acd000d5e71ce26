"""Classification tasks: loss, probabilities, labels, and the Task protocol.

One `ClassificationTask` covers three kinds of problem:

- binary: one logit per case, P(positive) = sigmoid(logit); classes = [negative, positive].
- multiclass: K logits, softmax; exactly one class per case.
- multilabel: K logits, independent sigmoids; any number of labels per case.

Multilabel targets may be NaN: not measured, as in multi-task assay data (Tox21), where most
molecules lack most labels. Such entries are left out of the loss and every label is scored
on its observed cases only.

The metrics with bootstrap CIs are in `evaluation` (built on the vectorised kernels of
`metrics`), class weights in `weights`, the explanation hooks in `explain`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

import biomx.tasks.classification.clinical as clinical
import biomx.tasks.classification.evaluation as evaluation
import biomx.tasks.classification.explain as explain
import biomx.tasks.classification.fairness as fairness
from biomx.errors import ConfigError
from biomx.protocols import TestRun
from biomx.tasks.classification.config import RULES
from biomx.tasks.classification.operating_point import DEFAULT_TARGET
from biomx.tasks.classification.report import report_sections
from biomx.tasks.classification.weights import check_weights
from biomx.tasks.rows import RowTaskHooks
from biomx.tasks.stats import as_float

KINDS = ("binary", "multiclass", "multilabel")


@dataclass
class ClassificationTask(RowTaskHooks):
    """A classification problem: its kind, class names, and how it is trained and scored.

    Construction validates every field (ConfigError naming the `task.*` key). For multilabel,
    `class_weights[k]` is the BCE pos_weight of label k (a positive's weight relative to a
    negative's), not the weight of label k in the total loss.

    `threshold` is the one labels are called with; a binary task whose `rule` is not "fixed"
    replaces it by the one chosen on the validation split when the test split is evaluated
    (`clinical.evaluate_test`), keeping the configured one as `task_threshold`.
    """

    kind: str
    classes: list[str]
    class_weights: list[float] | None = None
    label_smoothing: float = 0.0
    threshold: float = 0.5
    rule: str = "fixed"  # task.operating_point.rule
    target: float | None = None  # task.operating_point.target (sensitivity / specificity rules)
    task_threshold: float | None = None  # task.threshold as configured; None: `threshold`
    label_thresholds: list[float] | None = None  # multilabel: one per label, chosen on validation
    selection: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # what chose it

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"task.kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.classes, (list, tuple)) or len(self.classes) < 2:
            raise ConfigError(
                f"task.classes: expected a list of at least 2 class names, got {self.classes!r}")
        self.classes = [str(c) for c in self.classes]
        if "" in self.classes or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"task.classes: names must be unique, non-empty, got {self.classes}")
        if self.kind == "binary" and len(self.classes) != 2:
            raise ConfigError(f"task.classes: binary needs exactly 2 names [negative, positive], "
                              f"got {len(self.classes)}; use kind: multiclass for more")
        if self.class_weights is not None:
            self.class_weights = check_weights(self.class_weights, len(self.classes))
        self.label_smoothing = as_float(self.label_smoothing, "task.label_smoothing")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"task.label_smoothing: expected 0 <= value < 1, got {self.label_smoothing}")
        self.threshold = as_float(self.threshold, "task.threshold")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"task.threshold: expected 0 < value < 1, got {self.threshold}")
        self.task_threshold = self.threshold if self.task_threshold is None else float(self.task_threshold)
        self._check_operating_point()

    def _check_operating_point(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"task.operating_point.rule: expected one of {', '.join(RULES)}, got {self.rule!r}")
        if self.rule != "fixed" and self.kind == "multiclass":
            raise ConfigError(f"task.operating_point.rule: {self.rule} chooses a threshold, and a multiclass task "
                              f"({len(self.classes)} classes) has none (argmax); use rule: fixed")  # fmt: skip
        if self.label_thresholds is not None:
            found = [as_float(t, "task.label_thresholds") for t in self.label_thresholds]
            if self.kind != "multilabel" or len(found) != len(self.classes) or not all(0 < t < 1 for t in found):
                raise ConfigError(f"task.label_thresholds: expected one value in (0, 1) per label of a multilabel "
                                  f"task, got {self.label_thresholds!r}")  # fmt: skip
            self.label_thresholds = found
        if self.rule in ("sensitivity", "specificity"):
            key = "task.operating_point.target"
            self.target = DEFAULT_TARGET if self.target is None else as_float(self.target, key)
            if not 0.0 < self.target <= 1.0:
                raise ConfigError(f"task.operating_point.target: expected 0 < value <= 1, got {self.target}")
        elif self.target is not None:
            raise ConfigError(f"task.operating_point.target: only rule: sensitivity or specificity takes a "
                              f"target, not rule: {self.rule}")  # fmt: skip

    @property
    def out_dim(self) -> int:
        """Number of logits the model outputs: 1 for binary, else one per class."""
        return 1 if self.kind == "binary" else len(self.classes)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean training loss.

        Binary and multilabel: BCE-with-logits on smoothed targets y * (1 - eps) + eps / 2, with
        pos_weight = w_pos / w_neg (binary) or the per-label weights (multilabel), averaged over
        the observed (non-NaN) targets only: a missing label has no loss and no gradient.
        Multiclass: cross-entropy with `weight=class_weights` and `label_smoothing=eps`.

        Args:
            logits: binary (N,) or (N, 1); multiclass and multilabel (N, K).
            targets: binary (N,) 0/1; multiclass (N,) class indices; multilabel (N, K) 0/1, NaN
                = not measured.

        Returns:
            A scalar tensor; 0 (still attached to the graph) when every target is missing.
        """
        eps = self.label_smoothing
        if self.kind == "multiclass":
            weight = None if self.class_weights is None else logits.new_tensor(self.class_weights)
            return F.cross_entropy(logits, targets.long(), weight=weight, label_smoothing=eps)
        logits = _squeeze_binary(logits) if self.kind == "binary" else logits
        y = targets.to(logits.dtype)
        pos_weight, w = None, self.class_weights
        if w is not None:
            pos_weight = logits.new_tensor(w[1] / w[0] if self.kind == "binary" else w)
        observed = ~torch.isnan(y)
        if bool(observed.all()):  # the common case, exactly as without missing labels
            y = y * (1.0 - eps) + eps / 2.0
            return F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
        # Missing targets become 0 before the loss: a NaN target would make the gradient NaN
        # even where the masked loss is 0.
        y = torch.where(observed, y, torch.zeros_like(y)) * (1.0 - eps) + eps / 2.0
        per_entry = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight,
                                                       reduction="none")
        masked = torch.where(observed, per_entry, torch.zeros_like(per_entry))
        return masked.sum() / observed.sum().clamp(min=1)  # 0, with a graph, if none observed

    def solver_targets(self, targets: torch.Tensor) -> tuple[str, np.ndarray]:
        """Binary and multiclass as class indices for a solver (SolverTask); multilabel has none."""
        if self.kind == "multilabel":
            raise ConfigError("model.name: this model fits one class per sample; multilabel tasks need a "
                              "network (e.g. fingerprint_mlp or dmpnn)")
        return "classes", targets.reshape(-1).long().numpy()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Binary: (N,) P(positive); multiclass: (N, K) softmax; multilabel: (N, K) sigmoid."""
        if self.kind == "binary":
            return torch.sigmoid(_squeeze_binary(logits))
        if self.kind == "multiclass":
            return torch.softmax(logits, dim=1)
        return torch.sigmoid(logits)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """The task's prediction from model outputs (every task has this): the probabilities."""
        return self.probabilities(logits)

    def predict_labels(self, probs: np.ndarray) -> np.ndarray:
        """Binary: (N,) 1 where P >= threshold; multiclass: (N,) argmax; multilabel: (N, K) 0/1."""
        probs = np.asarray(probs)
        if self.kind == "multiclass":
            return probs.argmax(axis=1)
        probs = probs.reshape(-1) if self.kind == "binary" else probs
        return (probs >= self.cutoff()).astype(np.int64)

    def cutoff(self) -> float | np.ndarray:
        """What a probability is compared with: `threshold`, or multilabel's per-label thresholds (K,)."""
        return self.threshold if self.label_thresholds is None else np.asarray(self.label_thresholds)

    def prediction_columns(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """Columns for predictions.csv: "prob_<class>" for every class, then "predicted".

        Binary gives both prob columns (prob_<negative> = 1 - p). Multilabel joins the predicted
        names with "|" (an empty string when no label passes the threshold).
        """
        labels = self.predict_labels(probs)
        probs = np.asarray(probs, dtype=np.float64)
        if self.kind == "binary":
            probs = np.stack([1.0 - probs.reshape(-1), probs.reshape(-1)], axis=1)
        columns = {f"prob_{name}": probs[:, k] for k, name in enumerate(self.classes)}
        names = np.array(self.classes, dtype=object)
        if self.kind == "multilabel":
            columns["predicted"] = np.array(["|".join(names[row == 1]) for row in labels], object)
        else:
            columns["predicted"] = names[labels]
        return columns

    # ------------------------------------------------------------------ the Task protocol

    name: ClassVar[str] = "classification"
    explain: ClassVar = explain  # its explanation hooks (see tasks/rows.py)
    sections: ClassVar = staticmethod(report_sections)
    output_prefix: ClassVar[str] = "prob"  # predictions.csv: prob_<class>
    headline: ClassVar[tuple[str, ...]] = ("auroc", "accuracy", "balanced_accuracy", "f1")

    def info(self) -> dict[str, Any]:
        """The run.json entry; `threshold` is the one predictions are labelled with (for a binary task,
        the operating point chosen on the validation split once the run is evaluated)."""
        info = {"name": self.name, "kind": self.kind, "classes": self.classes, "threshold": self.threshold}
        if self.kind != "multiclass":
            info["operating_point"] = {"rule": self.rule, "target": self.target, "task_threshold": self.task_threshold}
        if self.label_thresholds is not None:
            info["label_thresholds"] = list(self.label_thresholds)
        return info

    def evaluate_test(self, run: TestRun) -> tuple[dict[str, Any] | None, list[dict]]:
        """Binary (multilabel with a rule): choose the threshold(s) on the validation split first (`clinical`)."""
        return clinical.evaluate_test(self, run)

    def output_names(self) -> list[str]:
        """One name per column of the predictions: P(positive) for binary, else every class."""
        return self.classes[1:] if self.kind == "binary" else list(self.classes)

    def truth_column(self, targets: np.ndarray) -> list[str]:
        """The "true" column of predictions_test.csv (multilabel: names joined by |; NaN: not measured)."""
        if self.kind == "multilabel":
            return ["|".join(self.classes[k] for k in np.flatnonzero(t == 1)) for t in targets]
        return [self.classes[int(t)] for t in targets]

    def uncertainty_errors(self, probs: np.ndarray, std: np.ndarray, targets: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, list[str], str]:  # fmt: skip
        """(|error|, std, names) per output column and the error's name, for `uncertainty`.

        Multiclass: whether the predicted class is wrong, against the std of its probability."""
        probs, std = probs.reshape(len(probs), -1), std.reshape(len(std), -1)
        if self.kind == "multiclass":
            top = probs.argmax(1)
            error = (top != targets.astype(int)).astype(float)[:, None]
            return error, std[np.arange(len(top)), top][:, None], ["predicted class"], "error rate"
        truth = targets.astype(float).reshape(len(targets), -1)
        return np.abs(probs - truth), std, self.output_names(), "mean |p - y|"

    # Scoring (`evaluation`): the same code for the validation epochs and the test split.
    def quick_metrics(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Cheap metrics for every validation epoch: QUICK_METRICS, NaN where undefined, never
        raising on a diverged model (see `evaluation.quick_metrics`)."""
        return evaluation.quick_metrics(self, probs, targets)

    def evaluate(self, probs: np.ndarray, targets: np.ndarray, *, n_bootstrap: int = 1000,
                 ci: float = 0.95, seed: int = 0, n_bins: int = 10) -> dict:
        """Full test evaluation with bootstrap CIs (see `evaluation.evaluate`)."""
        return evaluation.evaluate(self, probs, targets, n_bootstrap=n_bootstrap, ci=ci,
                                   seed=seed, n_bins=n_bins)

    # Subgroups (`protocols.GroupedTask`, see `fairness`): disparities and per-group thresholds.
    def group_disparity(self, probs: np.ndarray, targets: np.ndarray, groups: np.ndarray) -> dict | None:
        return fairness.group_disparity(self, probs, targets, groups)

    def group_thresholds(self, val: tuple, test: tuple, seed: int) -> dict | None:
        return fairness.group_thresholds(self, val, test, seed)


def build_task(kind: str, classes: list[str], class_weights: list[float] | None = None,
               label_smoothing: float = 0.0, threshold: float = 0.5, operating_point: dict[str, Any] | None = None
               ) -> ClassificationTask:  # fmt: skip
    """Build a validated ClassificationTask from config values.

    Args:
        kind: "binary", "multiclass" or "multilabel".
        classes: unique class names, at least 2 (binary: [negative, positive]).
        class_weights: one weight > 0 per class, or None for unweighted.
        label_smoothing: eps, 0 <= eps < 1.
        threshold: decision threshold for binary and multilabel, 0 < t < 1.
        operating_point: binary and multilabel: {"rule", "target", "task_threshold", "label_thresholds"}
            (task.operating_point; task.threshold as configured when `threshold` is one chosen on the
            validation split; multilabel: the per-label thresholds chosen there).

    Returns:
        The task.

    Raises:
        ConfigError: naming the offending `task.*` key and what it expects.
    """
    op = operating_point or {}
    return ClassificationTask(kind, classes, class_weights, label_smoothing, threshold, rule=op.get("rule", "fixed"),
                              target=op.get("target"), task_threshold=op.get("task_threshold"),
                              label_thresholds=op.get("label_thresholds"))  # fmt: skip


def _squeeze_binary(logits: torch.Tensor) -> torch.Tensor:
    """(N, 1) -> (N,); other shapes unchanged (the loss rejects wrong ones)."""
    return logits[:, 0] if logits.ndim == 2 and logits.shape[1] == 1 else logits

