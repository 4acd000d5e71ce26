"""Classification tasks: loss, probabilities, labels, and metrics with bootstrap CIs.

One `ClassificationTask` covers three kinds of problem:

- binary: one logit per case, P(positive) = sigmoid(logit); classes = [negative, positive].
- multiclass: K logits, softmax; exactly one class per case.
- multilabel: K logits, independent sigmoids; any number of labels per case.

All metrics come from one vectorised function (`_summary`) that scores a batch of resamples
at once, so the point estimate and every bootstrap resample run exactly the same code.
A metric that is undefined on a sample (AUROC with one class present, precision with no
positive predictions) is NaN. Macro averages skip undefined classes, except precision, where
a class that occurs but is never predicted counts as 0 (sklearn's zero_division=0).

Multilabel targets may be NaN: not measured, as in multi-task assay data (Tox21), where most
molecules lack most labels. Such entries are left out of the loss and every label is scored
on its observed cases only. The kernels take an `observed` mask next to (y, pred, score), so
this costs no Python loop over labels or resamples; with nothing missing the mask is all True
and the numbers are exactly those of the unmasked formulas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from sklearn.metrics import precision_recall_curve, roc_curve

import biomx.tasks.classification.explain as explain
from biomx import batched
from biomx.errors import ConfigError, DataError
from biomx.protocols import PredictRequest, TestRun
from biomx.tasks.classification.report import report_sections
from biomx.tasks.stats import BLOCK_VALUES as _BLOCK_VALUES
from biomx.tasks.stats import as_float as _as_float
from biomx.tasks.stats import gather as _gather
from biomx.tasks.stats import nanmean as _nanmean
from biomx.tasks.stats import percentile_ci as _percentile_ci
from biomx.tasks.stats import ratio as _ratio

KINDS = ("binary", "multiclass", "multilabel")
METRICS = ("accuracy", "balanced_accuracy", "auroc", "auprc", "f1", "sensitivity",
           "specificity", "precision", "npv", "ece", "brier")
QUICK_METRICS = ("accuracy", "balanced_accuracy", "auroc", "auprc", "f1")
MAX_CURVE_POINTS = 200


@dataclass
class ClassificationTask:
    """A classification problem: its kind, class names, and how it is trained and scored.

    Construction validates every field (ConfigError naming the `task.*` key). For multilabel,
    `class_weights[k]` is the BCE pos_weight of label k (a positive's weight relative to a
    negative's), not the weight of label k in the total loss.
    """

    kind: str
    classes: list[str]
    class_weights: list[float] | None = None
    label_smoothing: float = 0.0
    threshold: float = 0.5

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
            self.class_weights = _check_weights(self.class_weights, len(self.classes))
        self.label_smoothing = _as_float(self.label_smoothing, "task.label_smoothing")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"task.label_smoothing: expected 0 <= value < 1, got {self.label_smoothing}")
        self.threshold = _as_float(self.threshold, "task.threshold")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"task.threshold: expected 0 < value < 1, got {self.threshold}")

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
        return (probs >= self.threshold).astype(np.int64)

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
    output_prefix: ClassVar[str] = "prob"  # predictions.csv: prob_<class>
    headline: ClassVar[tuple[str, ...]] = ("auroc", "accuracy", "balanced_accuracy", "f1")

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "classes": self.classes, "threshold": self.threshold}

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

    def evaluate_test(self, run: TestRun) -> tuple[dict[str, Any] | None, list[dict]]:
        return batched.evaluate_test(self, run)

    def predict(self, request: PredictRequest) -> dict[str, list]:
        return batched.predict(self, request)

    def report_sections(self, evaluation: dict[str, Any]) -> list[dict]:
        return report_sections(evaluation)

    # Explanation hooks: which samples and outputs a modality's explanations show.
    def pick_examples(self, probs: np.ndarray, targets: np.ndarray, n: int) -> list[int]:
        return explain.pick_examples(self, probs, targets, n)

    def attribution_target(self, probs: np.ndarray) -> tuple[np.ndarray, Any]:
        return explain.attribution_target(self, probs)

    def caption(self, target: np.ndarray, prob: np.ndarray, predicted: Any) -> str:
        return explain.caption(self, target, prob, predicted)

    def class_views(self, probs: np.ndarray, targets: np.ndarray) -> list:
        return explain.class_views(self, probs, targets)

    def pick_explained(self, probs: np.ndarray, targets: np.ndarray, n: int) -> list[tuple[int, str, int]]:
        return explain.pick_explained(self, probs, targets, n)

    def describe(self, column: int, prob: np.ndarray, target: np.ndarray) -> tuple[str, float, object, str]:
        return explain.describe(self, column, prob, target)

    def attribution_text(self) -> tuple[str, str]:
        return explain.attribution_text(self)

    def quick_metrics(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Cheap metrics for every validation epoch: QUICK_METRICS (macro where K > 2).

        Args:
            probs: output of `probabilities`, as numpy.
            targets: true labels, shaped as for `loss` (multilabel: NaN = not measured).

        Returns:
            Metric name -> float; NaN where undefined (one class present, no cases, NaN
            probs), never raising. Multilabel: each label on its observed cases, then macro.

        Raises:
            DataError: if the shapes or target values do not fit the task.
        """
        probs, targets, observed = self._check(probs, targets)
        if len(targets) == 0 or not np.isfinite(probs).all():  # nothing to score, or diverged
            return {m: float("nan") for m in QUICK_METRICS}
        views = _gather(self._views(probs, targets, observed), np.arange(len(targets))[None])
        point = _summary(self.kind, *views, n_bins=10)
        return {m: float(point[m][0]) for m in QUICK_METRICS}

    def evaluate(self, probs: np.ndarray, targets: np.ndarray, *, n_bootstrap: int = 1000,
                 ci: float = 0.95, seed: int = 0, n_bins: int = 10) -> dict:
        """Full test evaluation: metrics with bootstrap CIs, confusion, curves, calibration.

        Args:
            probs: output of `probabilities`, as numpy.
            targets: true labels, shaped as for `loss` (multilabel: NaN = not measured; each
                label is scored on its observed cases, in the point estimate and in every
                resample).
            n_bootstrap: resamples of the N cases with replacement (0: CIs are NaN).
            ci: level of the percentile intervals.
            seed: seed of the resampling generator; the same seed gives the same CIs.
            n_bins: equal-width probability bins for the ECE and the reliability diagram.

        Returns:
            A JSON-serialisable dict: kind, n, classes, threshold, ci, n_bootstrap, metrics
            ({name: {value, ci_low, ci_high}}), confusion_matrix, curves, calibration, per_class
            (multilabel: with "n", the label's observed cases).

        Raises:
            DataError: if there are no cases, probs are not finite, or shapes or targets do not fit.
            ConfigError: if n_bootstrap, ci or n_bins is out of range.
        """
        if n_bootstrap < 0 or not 0.0 < ci < 1.0 or n_bins < 1:
            raise ConfigError(f"evaluate: expected n_bootstrap >= 0, 0 < ci < 1, n_bins >= 1, "
                              f"got n_bootstrap={n_bootstrap}, ci={ci}, n_bins={n_bins}")
        probs, targets, observed = self._check(probs, targets)
        n = len(targets)
        if n == 0:
            raise DataError("evaluate: the test set is empty; check the split or the data filter")
        if not np.isfinite(probs).all():
            raise DataError("evaluate: probs contain NaN or inf; the model diverged (lower the "
                            "learning rate) or a checkpoint is corrupt")
        views = self._views(probs, targets, observed)
        full = _gather(views, np.arange(n)[None])
        point = _summary(self.kind, *full, n_bins=n_bins)
        boot = self._bootstrap(views, n_bootstrap, seed, n_bins)
        metrics = {m: {"value": float(point[m][0]), **_percentile_ci(boot[m], ci)} for m in METRICS}
        return {
            "kind": self.kind, "headline": list(self.headline), "n": n, "classes": list(self.classes),
            "threshold": self.threshold,
            "ci": float(ci), "n_bootstrap": int(n_bootstrap), "metrics": metrics,
            "confusion_matrix": self._confusion(probs, targets, observed),
            "curves": self._curves(views, _class_stats(*full)),
            "calibration": _calibration(*_calibration_view(self.kind, *full), n_bins),
            "per_class": self._per_class(views),
        }

    def _check(self, probs: np.ndarray,
               targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate shapes and target values; return float64 probs, int64 targets (missing
        multilabel entries as 0) and the observed mask, shaped as the targets."""
        probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets)
        k = len(self.classes)
        if self.kind == "binary":
            probs = probs.reshape(-1)
        if self.kind != "multilabel":
            targets = targets.reshape(-1)
        expected = (len(targets),) if self.kind == "binary" else (len(targets), k)
        if probs.shape != expected or targets.shape[0] != probs.shape[0]:
            raise DataError(f"{self.kind} task: probs have shape {probs.shape}, expected "
                            f"{expected}; check the model's out_dim and task.classes")
        if self.kind == "multilabel" and targets.shape != probs.shape:
            raise DataError(f"multilabel task: targets have shape {targets.shape}, "
                            f"expected {probs.shape} (one 0/1 column per class)")
        valid = np.arange(k) if self.kind == "multiclass" else np.array([0, 1])
        observed = np.ones(targets.shape, dtype=bool)
        if self.kind == "multilabel" and targets.dtype.kind == "f":
            observed = ~np.isnan(targets)
            targets = np.where(observed, targets, 0)
        if not np.isin(targets, valid).all():
            missing = " or NaN (not measured)" if self.kind == "multilabel" else ""
            raise DataError(f"{self.kind} task: targets must be in {valid.tolist()}{missing}, "
                            f"got values {np.unique(targets)[:10].tolist()}")
        return probs, targets.astype(np.int64), observed

    def _views(self, probs: np.ndarray, targets: np.ndarray,
               observed: np.ndarray) -> tuple[np.ndarray, ...]:
        """One-vs-rest (y, pred, score, observed), each (N, C); binary has C = 1 (the positive
        class). y is False where the target is missing; `observed` says where it is not."""
        if self.kind == "binary":
            return (targets[:, None] == 1, (probs >= self.threshold)[:, None], probs[:, None],
                    observed[:, None])
        if self.kind == "multiclass":
            eye = np.eye(len(self.classes), dtype=bool)
            return (eye[targets], eye[probs.argmax(axis=1)], probs,
                    np.broadcast_to(observed[:, None], probs.shape))
        return targets == 1, probs >= self.threshold, probs, observed

    def _bootstrap(self, views: tuple, n_boot: int, seed: int, n_bins: int) -> dict:
        """Each metric over `n_boot` resamples of the N cases with replacement: (n_boot,)."""
        n, c = views[0].shape
        rng = np.random.default_rng(seed)
        block = max(1, _BLOCK_VALUES // (n * c))
        parts = [{m: np.empty(0) for m in METRICS}]
        for start in range(0, n_boot, block):
            idx = rng.integers(0, n, size=(min(block, n_boot - start), n))
            parts.append(_summary(self.kind, *_gather(views, idx), n_bins=n_bins))
        return {m: np.concatenate([p[m] for p in parts]) for m in METRICS}

    def _confusion(self, probs: np.ndarray, targets: np.ndarray,
                   observed: np.ndarray) -> list | dict:
        """Rows = true class, columns = predicted; multilabel: {"per_label": {name: 2x2}}, each
        label's counts over its observed cases."""
        pred = self.predict_labels(probs)
        if self.kind == "multilabel":
            return {"per_label": {name: _confusion(targets[observed[:, k], k],
                                                   pred[observed[:, k], k], 2)
                                  for k, name in enumerate(self.classes)}}
        return _confusion(targets, pred, len(self.classes))

    def _curves(self, views: tuple, stats: dict) -> dict:
        """ROC and PR curves per class (binary: the positive class) over its observed cases,
        at most 200 points each."""
        y, _, score, observed = views
        names = self.classes[1:] if self.kind == "binary" else self.classes
        roc, pr = {}, {}
        for c, name in enumerate(names):
            yc, sc = y[observed[:, c], c], score[observed[:, c], c]
            if yc.all() or not yc.any():
                continue  # a curve needs both classes
            fpr, tpr, _ = roc_curve(yc, sc)
            precision, recall, _ = precision_recall_curve(yc, sc)
            roc[name] = {**_downsample(fpr=fpr, tpr=tpr), "auc": float(stats["auroc"][0, c])}
            pr[name] = {**_downsample(recall=recall, precision=precision),
                        "ap": float(stats["auprc"][0, c])}
        return {"roc": roc, "pr": pr}

    def _per_class(self, views: tuple) -> dict:
        """One-vs-rest support, sensitivity, specificity, precision, f1, auroc, auprc per class
        (multilabel: also n, the label's observed cases, on which all of these are computed)."""
        y, pred, score, observed = views
        if self.kind == "binary":  # both classes; the negative one is scored by 1 - p
            y, pred = np.hstack([~y, y]), np.hstack([~pred, pred])
            score, observed = np.hstack([1 - score, score]), np.hstack([observed, observed])
        stats = _class_stats(*_gather((y, pred, score, observed), np.arange(len(y))[None]))
        keys = ("sensitivity", "specificity", "precision", "f1", "auroc", "auprc")
        observed_n = observed.sum(axis=0)
        return {name: {**({"n": int(observed_n[c])} if self.kind == "multilabel" else {}),
                       "support": int(stats["support"][0, c]),
                       **{m: float(stats[m][0, c]) for m in keys}}
                for c, name in enumerate(self.classes)}


def build_task(kind: str, classes: list[str], class_weights: list[float] | None = None,
               label_smoothing: float = 0.0, threshold: float = 0.5) -> ClassificationTask:
    """Build a validated ClassificationTask from config values.

    Args:
        kind: "binary", "multiclass" or "multilabel".
        classes: unique class names, at least 2 (binary: [negative, positive]).
        class_weights: one weight > 0 per class, or None for unweighted.
        label_smoothing: eps, 0 <= eps < 1.
        threshold: decision threshold for binary and multilabel, 0 < t < 1.

    Returns:
        The task.

    Raises:
        ConfigError: naming the offending `task.*` key and what it expects.
    """
    return ClassificationTask(kind, classes, class_weights, label_smoothing, threshold)


def class_weights_from_counts(targets: np.ndarray, kind: str, num_classes: int) -> list[float]:
    """'Balanced' class weights from the training targets (config `class_weights: balanced`).

    Binary and multiclass: n / (K * count_k), as sklearn's compute_class_weight("balanced").
    Multilabel: negatives_k / positives_k, because there the weights are BCE pos_weights and
    that ratio makes the positives and the negatives of each label weigh the same; missing
    (NaN) entries are neither.

    Args:
        targets: binary (N,) 0/1; multiclass (N,) class indices; multilabel (N, K) 0/1, NaN
            = not measured.
        kind: "binary", "multiclass" or "multilabel".
        num_classes: K (2 for binary).

    Returns:
        One weight per class.

    Raises:
        DataError: if a class (multilabel: a label's positives or negatives) never occurs.
    """
    targets = np.asarray(targets)
    if kind == "multilabel":
        targets = targets.reshape(len(targets), -1)
        observed = ~np.isnan(targets) if targets.dtype.kind == "f" else np.ones(targets.shape, bool)
        pos = np.where(observed, targets, 0).astype(np.int64).sum(axis=0)
        neg = observed.sum(axis=0) - pos
        counts = np.minimum(pos, neg)
    else:
        if targets.dtype.kind == "f" and np.isnan(targets).any():
            raise DataError(f"class_weights: balanced: {kind} targets contain NaN (missing "
                            "labels); only multilabel targets may be missing")
        targets = targets.astype(np.int64).reshape(-1)
        counts = np.bincount(targets, minlength=num_classes)[:num_classes]
    missing = np.flatnonzero(counts == 0)
    if len(missing):
        raise DataError(f"class_weights: balanced: class {int(missing[0])} has no training "
                        "examples (multilabel: no positives or no negatives); "
                        "set task.class_weights explicitly")
    if kind == "multilabel":
        return [float(w) for w in neg / pos]
    return [float(len(targets) / (num_classes * c)) for c in counts]


def auroc(targets: np.ndarray, scores: np.ndarray,
          observed: np.ndarray | None = None) -> np.ndarray:
    """AUROC along the last axis: Mann-Whitney U with tied scores given average ranks.

    Args:
        targets: (..., N) booleans, True = positive.
        scores: (..., N) finite scores, higher = more positive.
        observed: (..., N) booleans, False = leave the case out (a missing label); None = all.

    Returns:
        (...) AUROC values; NaN where one class is absent.
    """
    n = targets.shape[-1]
    if observed is not None:
        # Left-out cases rank last (inf), so the observed ones get ranks 1..n_observed.
        targets, scores = targets & observed, np.where(observed, scores, np.inf)
        n = observed.sum(axis=-1)
    n_pos = targets.sum(axis=-1)
    n_neg = n - n_pos
    u = (rankdata(scores, axis=-1) * targets).sum(axis=-1) - n_pos * (n_pos + 1) / 2.0
    return _ratio(u, n_pos * n_neg)


def average_precision(targets: np.ndarray, scores: np.ndarray,
                      observed: np.ndarray | None = None) -> np.ndarray:
    """Average precision along the last axis, equal to sklearn's average_precision_score.

    AP = sum over distinct thresholds of (recall step) * precision. Tied scores form one
    threshold, so each positive is credited with the precision at the end of its tie group.

    Args:
        targets: (..., N) booleans, True = positive.
        scores: (..., N) finite scores, higher = more positive.
        observed: (..., N) booleans, False = leave the case out (a missing label); None = all.

    Returns:
        (...) AP values; NaN where there are no positives.
    """
    if observed is not None:
        # Left-out cases sort after every observed one (-inf) and are never positive, so
        # they change neither the precision at an observed case nor the credited sum.
        targets, scores = targets & observed, np.where(observed, scores, -np.inf)
    n = scores.shape[-1]
    order = np.argsort(-scores, axis=-1, kind="stable")
    s = np.take_along_axis(scores, order, axis=-1)
    t = np.take_along_axis(targets, order, axis=-1).astype(np.float64)
    precision = np.cumsum(t, axis=-1) / np.arange(1, n + 1)
    is_end = np.ones(s.shape, dtype=bool)
    is_end[..., :-1] = s[..., :-1] != s[..., 1:]
    # End of each element's tie group = running minimum of end positions, taken from the right.
    end = np.where(is_end, np.arange(n), n - 1)
    end = np.flip(np.minimum.accumulate(np.flip(end, -1), axis=-1), -1)
    credited = (t * np.take_along_axis(precision, end, axis=-1)).sum(axis=-1)
    return _ratio(credited, t.sum(axis=-1))


# Metric kernels. y, pred, observed (bool) and score are (B, C, N): resamples, classes, cases.
# y is False where observed is (a missing multilabel target); every count is over observed.


def _class_stats(y: np.ndarray, pred: np.ndarray, score: np.ndarray,
                 observed: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest support and metrics per resample and class, each (B, C)."""
    y, neg = y & observed, ~y & observed
    tp, fp = (y & pred).sum(-1), (neg & pred).sum(-1)
    fn, tn = (y & ~pred).sum(-1), (neg & ~pred).sum(-1)
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "support": tp + fn, "accuracy": _ratio(tp + tn, observed.sum(-1)),
        "sensitivity": sensitivity, "specificity": specificity,
        "balanced_accuracy": (sensitivity + specificity) / 2.0,
        "precision": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "auroc": auroc(y, score, observed), "auprc": average_precision(y, score, observed),
    }


def _summary(kind: str, y: np.ndarray, pred: np.ndarray, score: np.ndarray,
             observed: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Every metric in METRICS per resample, each (B,)."""
    stats = _class_stats(y, pred, score, observed)
    out = {"ece": _ece(*_calibration_view(kind, y, pred, score, observed), n_bins)}
    # Mean squared error of the observed entries: sum / count is bit-identical to .mean().
    brier = _ratio(np.where(observed, (score - y) ** 2, 0.0).sum(axis=(1, 2)),
                   observed.sum(axis=(1, 2)))
    if kind == "binary":
        out.update({m: stats[m][:, 0] for m in METRICS if m in stats})
        out["brier"] = brier
        return out
    out.update({m: _nanmean(stats[m]) for m in ("auroc", "auprc", "f1", "sensitivity",
                                                "specificity", "npv")})
    never_predicted = np.isnan(stats["precision"]) & (stats["support"] > 0)
    out["precision"] = _nanmean(np.where(never_predicted, 0.0, stats["precision"]))
    if kind == "multiclass":
        out["accuracy"] = (y & pred).sum(axis=(1, 2)) / y.shape[-1]
        out["balanced_accuracy"] = out["sensitivity"]  # mean recall of the classes present
        out["brier"] = ((score - y) ** 2).sum(axis=1).mean(axis=-1)
    else:  # multilabel: label-wise (Hamming) accuracy, everything macro over labels
        out["accuracy"] = _nanmean(stats["accuracy"])
        out["balanced_accuracy"] = _nanmean(stats["balanced_accuracy"])
        out["brier"] = brier
    return out


def _calibration_view(kind: str, y: np.ndarray, pred: np.ndarray, score: np.ndarray,
                      observed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confidence, outcome, observed), each (B, M): what the ECE compares.

    Binary: P(positive) vs positive; multiclass: top-class probability vs correct;
    multilabel: every observed label's probability vs that label, pooled.
    """
    if kind == "multiclass":
        return score.max(axis=1), (y & pred).any(axis=1), observed.all(axis=1)
    return score.reshape(len(y), -1), y.reshape(len(y), -1), observed.reshape(len(y), -1)


def _bin_sums(conf: np.ndarray, hit: np.ndarray, observed: np.ndarray,
              n_bins: int) -> list[np.ndarray]:
    """Per resample and equal-width bin: [count, sum of confidence, sum of outcome], (B, bins),
    over the observed entries."""
    b = len(conf)
    # NaN confidences (a diverged model) land in bin 0 and make the ECE NaN, without a warning.
    bins = np.clip(np.nan_to_num(conf * n_bins), 0, n_bins - 1).astype(np.int64)
    flat = (bins + n_bins * np.arange(b)[:, None]).ravel()
    weight = observed.ravel().astype(np.float64)
    return [np.bincount(flat, weights=w, minlength=b * n_bins).reshape(b, n_bins)
            for w in (weight, conf.ravel() * weight, hit.ravel() * weight)]


def _ece(conf: np.ndarray, hit: np.ndarray, observed: np.ndarray, n_bins: int) -> np.ndarray:
    """Expected calibration error, sum_b (n_b / n) |mean conf_b - mean outcome_b|: (B,)."""
    _, conf_sum, hit_sum = _bin_sums(conf, hit, observed, n_bins)
    return _ratio(np.abs(conf_sum - hit_sum).sum(axis=1), observed.sum(axis=1))


def _calibration(conf: np.ndarray, hit: np.ndarray, observed: np.ndarray, n_bins: int) -> dict:
    """Reliability diagram of one sample; empty bins have NaN confidence and frequency."""
    count, conf_sum, hit_sum = (s[0] for s in _bin_sums(conf, hit, observed, n_bins))
    return {"bin_confidence": _ratio(conf_sum, count).tolist(),
            "bin_frequency": _ratio(hit_sum, count).tolist(),
            "bin_count": count.astype(int).tolist(),
            "ece": float(_ece(conf, hit, observed, n_bins)[0])}










def _confusion(y: np.ndarray, pred: np.ndarray, k: int) -> list[list[int]]:
    """k x k counts, rows = true, columns = predicted (k = 2: [[TN, FP], [FN, TP]])."""
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k).tolist()


def _downsample(**curve: np.ndarray) -> dict[str, list[float]]:
    """At most MAX_CURVE_POINTS evenly spaced points of a curve, keeping both ends."""
    n = len(next(iter(curve.values())))
    keep = np.unique(np.linspace(0, n - 1, min(n, MAX_CURVE_POINTS)).round().astype(int))
    return {name: values[keep].astype(float).tolist() for name, values in curve.items()}


def _squeeze_binary(logits: torch.Tensor) -> torch.Tensor:
    """(N, 1) -> (N,); other shapes unchanged (the loss rejects wrong ones)."""
    return logits[:, 0] if logits.ndim == 2 and logits.shape[1] == 1 else logits




def _check_weights(weights: object, k: int) -> list[float]:
    """Validate task.class_weights: k finite numbers > 0."""
    if not isinstance(weights, (list, tuple)) or len(weights) != k:
        got = len(weights) if isinstance(weights, (list, tuple)) else repr(weights)
        raise ConfigError(f"task.class_weights: expected {k} values (one per class), got {got}")
    values = [_as_float(w, "task.class_weights") for w in weights]
    if not all(np.isfinite(w) and w > 0 for w in values):
        raise ConfigError(f"task.class_weights: every weight must be finite and > 0, got {values}")
    return values
