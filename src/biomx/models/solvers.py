"""Models fitted by a solver in one call (`protocols.FittedModel`): the shared base class and a
support vector machine on a MinMax / Tanimoto kernel over Morgan fingerprints.

Every fitted quantity lives in a registered buffer, so `state_dict()` is plain tensors (saved as
safetensors, never pickle) and `forward` is pure torch: scikit-learn or LightGBM are imported
inside `fit` only. The buffers' shapes depend on the data, so loading a fitted state into a
freshly built (unfitted) module resizes them to the incoming tensors first. An unfitted module
returns zeros.

Outputs are raw outputs as the task reads them: fitted values (one column per target) for
"values" targets; for "classes", class log-probabilities, or with one output (binary) the
log-odds log(p1 / (1 - p1)); probabilities are clipped to [1e-6, 1 - 1e-6].
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from torch import Tensor, nn

from biomx.models.bounds import Between, OutDim

Features = Annotated[int, Between(0, 1_000_000)]
PROB_CLIP = 1e-6
CHUNK = 1024  # rows of a batch per kernel / traversal step (bounded memory)
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
CV_FOLDS = 5
KERNELS = ("minmax", "tanimoto")

# How `forward` turns the fitted scores into outputs (held in the `mode` buffer)
VALUES, PROBABILITIES, LOGITS = 0, 1, 2


def features_of(batch: Any) -> Tensor:
    """The molecule-level vectors of a batch (`batch.features`), or the batch itself if a Tensor."""
    return batch if isinstance(batch, Tensor) else batch.features


def solver_problem(task: Any, targets: Tensor, out_dim: int) -> tuple[str, np.ndarray, int]:
    """(kind, targets as numpy, number of classes) from `task.solver_targets`; classes: the class
    count is out_dim (2 when out_dim is 1, binary)."""
    kind, y = task.solver_targets(targets.detach().cpu())
    if kind == "classes":
        return kind, np.asarray(y, dtype=np.int64), max(out_dim, 2)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if y.shape[1] != out_dim:
        raise ValueError(f"the model has out_dim {out_dim} but the task gives {y.shape[1]} target(s)")
    return kind, y, 0


def probabilities_to_outputs(p: Tensor, out_dim: int) -> Tensor:
    """(N, n_classes) probabilities -> class log-probabilities, or the log-odds of class 1 when
    out_dim is 1; clipped to [1e-6, 1 - 1e-6] (and renormalised across classes)."""
    p = p.double().clamp(PROB_CLIP, 1 - PROB_CLIP)  # float64: 1 - 1e-6 is not a float32
    if out_dim == 1:
        p1 = p[:, 1]
        return torch.log(p1 / (1 - p1))[:, None].float()
    return torch.log(p / p.sum(dim=1, keepdim=True)).float()


class SolverModule(nn.Module):
    """Base of the solver-fitted models: buffers for every fitted quantity, resized on load.

    Subclasses register their buffers with `self.register_buffer` in `__init__` (empty shapes
    while unfitted); `mode` (values / probabilities / logits) says how scores become outputs."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.register_buffer("mode", torch.tensor(VALUES, dtype=torch.int64))
        self.register_buffer("fitted", torch.tensor(False))
        self._fitted = False  # a Python copy of `fitted`: forward never syncs a device to read it

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Data-dependent shapes: take each incoming buffer's shape and dtype before copying.
        for name, buffer in self._buffers.items():
            incoming = state_dict.get(prefix + name)
            if buffer is not None and incoming is not None and incoming.shape != buffer.shape:
                self._buffers[name] = torch.empty(incoming.shape, dtype=incoming.dtype, device=buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._fitted = bool(self.fitted)

    def _set(self, **tensors: Any) -> None:
        """Replace buffers with fitted values (numpy or tensors), on the module's device."""
        device = self.fitted.device
        for name, value in tensors.items():
            old = self._buffers[name]
            self._buffers[name] = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value,
                                                  dtype=old.dtype).to(device).contiguous()  # fmt: skip

    def _mark_fitted(self, mode: int) -> None:
        self.mode.fill_(mode)
        self.fitted.fill_(True)
        self._fitted = True

    def scores(self, x: Tensor) -> Tensor:
        """(N, scores) fitted scores of the feature rows `x` (a fitted module only)."""
        raise NotImplementedError

    def forward(self, batch: Any) -> Tensor:
        x = features_of(batch)
        if not self._fitted:
            return x.new_zeros((x.shape[0], self.out_dim), dtype=torch.float32)
        s = torch.cat([self.scores(x[i:i + CHUNK]) for i in range(0, x.shape[0], CHUNK)]) if len(x) else \
            x.new_zeros((0, self.out_dim), dtype=torch.float32)  # fmt: skip
        mode = int(self.mode)
        if mode == PROBABILITIES:
            return probabilities_to_outputs(s, self.out_dim)
        if mode == LOGITS and self.out_dim > 1:
            return torch.log_softmax(s, dim=1)
        return s


# ---------------------------------------------------------------------------------- kernels


def minmax_kernel(a: Tensor, b: Tensor, binary: bool = False) -> Tensor:
    """MinMax similarity sum(min) / sum(max) of count rows `a` (N, D) and `b` (M, D); with
    `binary`, Tanimoto on the bits (a.b / (|a| + |b| - a.b)). Values are non-negative integer
    counts. Two empty fingerprints have similarity 1 (identical), an empty and a non-empty 0.

    sum_k min(a_k, b_k) = sum_{t=1..max} [a >= t] . [b >= t]: a few float matmuls, far faster
    than a pairwise L1 distance."""
    a, b = a.float().round().clamp(min=0), b.float().round().clamp(min=0)
    if binary:
        a, b = (a > 0).float(), (b > 0).float()
    size_a, size_b = a.sum(dim=1), b.sum(dim=1)
    top = int(min(a.max().item() if a.numel() else 0, b.max().item() if b.numel() else 0))
    both = a.new_zeros((a.shape[0], b.shape[0]))
    for t in range(1, top + 1):
        if t > 1:  # only the columns some row of each side still reaches (few, past t = 2)
            columns = ((a >= t).any(dim=0) & (b >= t).any(dim=0)).nonzero()[:, 0]
            if len(columns) == 0:
                break
            a, b = a[:, columns], b[:, columns]
        both += (a >= t).float() @ (b >= t).float().T
    union = size_a[:, None] + size_b[None, :] - both
    return torch.where(union > 0, both / union.clamp(min=1), torch.ones_like(both))


# ---------------------------------------------------------------------------------- the SVM


def _choose_c(kernel: np.ndarray, y: np.ndarray, epsilon: float, seed: int) -> float:
    """The C of the grid with the least 5-fold cross-validated squared error of an SVR."""
    from sklearn.model_selection import KFold
    from sklearn.svm import SVR

    folds = list(KFold(min(CV_FOLDS, len(y)), shuffle=True, random_state=seed).split(y))
    errors = []
    for c in C_GRID:
        error = 0.0
        for train, test in folds:
            model = SVR(kernel="precomputed", C=c, epsilon=epsilon).fit(kernel[np.ix_(train, train)], y[train])
            error += float(((model.predict(kernel[np.ix_(test, train)]) - y[test]) ** 2).sum())
        errors.append(error)
    return C_GRID[int(np.argmin(errors))]


def _platt(decision: np.ndarray, positive: np.ndarray) -> tuple[float, float, float]:
    """Platt scaling: a, b of P(positive) = sigmoid(a f + b) fitted on decision values, and the
    log-loss of those probabilities."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e6).fit(decision[:, None], positive)
    p = np.clip(model.predict_proba(decision[:, None])[:, 1], PROB_CLIP, 1 - PROB_CLIP)
    loss = -float(np.mean(positive * np.log(p) + (1 - positive) * np.log(1 - p)))
    return float(model.coef_[0, 0]), float(model.intercept_[0]), loss


def _oof_decisions(kernel: np.ndarray, positive: np.ndarray, c: float, seed: int) -> np.ndarray:
    """Out-of-fold SVC decision values (stratified folds) for Platt scaling."""
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import SVC

    splits = min(CV_FOLDS, int(np.bincount(positive, minlength=2).min()))
    decision = np.zeros(len(positive))
    for train, test in StratifiedKFold(splits, shuffle=True, random_state=seed).split(positive, positive):
        model = SVC(kernel="precomputed", C=c).fit(kernel[np.ix_(train, train)], positive[train])
        decision[test] = model.decision_function(kernel[np.ix_(test, train)])
    return decision


class KernelSVM(SolverModule):
    """SVR (values: one per target) or one-vs-rest SVC with Platt scaling (classes) on a MinMax
    (Morgan counts) or Tanimoto (bits) kernel over the first `fingerprint_dim` feature columns.

    C = 0 chooses C per target / class from a grid by 5-fold cross-validation (the kernel matrix
    is computed once). Buffers: the support vectors (union over targets / classes), their dual
    coefficients (zero where a row is no support vector of that target), the intercepts and the
    Platt coefficients. Scores = K(x, support) @ coef + intercept."""

    def __init__(self, feature_dim: int, out_dim: int, fingerprint_dim: int, kernel: str, c: float,
                 epsilon: float) -> None:  # fmt: skip
        super().__init__(out_dim)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
        if fingerprint_dim <= 0:  # at build time: one line before any run file is written
            raise ValueError("svm needs Morgan fingerprints: set data.molecule.features: [morgan]")
        self.feature_dim, self.fingerprint_dim, self.c, self.epsilon = feature_dim, fingerprint_dim, c, epsilon
        self.register_buffer("binary", torch.tensor(kernel == "tanimoto"))
        self.register_buffer("support", torch.zeros(0, fingerprint_dim))
        self.register_buffer("coef", torch.zeros(0, out_dim, dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros(out_dim, dtype=torch.float64))
        self.register_buffer("platt", torch.zeros(2, 0, dtype=torch.float64))  # (a, b) per class head

    def _kernel(self, a: Tensor, b: Tensor) -> Tensor:
        return minmax_kernel(a[:, : self.fingerprint_dim], b, binary=bool(self.binary))

    def scores(self, x: Tensor) -> Tensor:
        f = self._kernel(x, self.support).double() @ self.coef + self.intercept
        if int(self.mode) != PROBABILITIES:
            return f.float()
        p = torch.sigmoid(self.platt[0] * f + self.platt[1])
        if p.shape[1] == 1:  # two classes: one head for class 1
            return torch.cat([1 - p, p], dim=1).float()
        return (p / p.sum(dim=1, keepdim=True).clamp(min=1e-12)).float()

    def fit(self, x: Any, targets: Tensor, task: Any, *, val: Any = None, seed: int = 0) -> dict[str, Any]:
        """Fit on the whole training split (`val` is not needed: C is chosen by cross-validation)."""
        if self.fingerprint_dim <= 0:
            raise ValueError("svm needs Morgan fingerprints: set data.molecule.features: [morgan]")
        fingerprints = features_of(x)[:, : self.fingerprint_dim].detach().float()  # the kernel on x's device
        kind, y, n_classes = solver_problem(task, targets, self.out_dim)
        kernel = self._kernel(fingerprints, fingerprints).double().cpu().numpy()
        heads = self._fit_values(kernel, y, seed) if kind == "values" else self._fit_classes(kernel, y, n_classes, seed)
        used = sorted(set().union(*(set(h["rows"].tolist()) for h in heads)))
        position = {row: i for i, row in enumerate(used)}
        coef = np.zeros((len(used), len(heads)))
        for k, head in enumerate(heads):
            coef[[position[r] for r in head["rows"]], k] = head["dual"]
        self._set(support=fingerprints[torch.as_tensor(used, dtype=torch.long, device=fingerprints.device)], coef=coef, intercept=[h["intercept"] for h in heads],
                  platt=np.array([[h.get("a", 1.0) for h in heads], [h.get("b", 0.0) for h in heads]]))  # fmt: skip
        self._mark_fitted(VALUES if kind == "values" else PROBABILITIES)
        chosen = sorted({h["C"] for h in heads})
        return {"C": chosen[0] if len(chosen) == 1 else chosen, "support_vectors": len(used)}

    def _fit_values(self, kernel: np.ndarray, y: np.ndarray, seed: int) -> list[dict[str, Any]]:
        """One SVR per target on its observed rows."""
        from sklearn.svm import SVR

        heads = []
        for k in range(y.shape[1]):
            rows = np.flatnonzero(~np.isnan(y[:, k]))
            if len(rows) < 2:
                raise ValueError(f"target {k} has {len(rows)} observed training row(s); an SVR needs 2 or more")
            sub, yk = kernel[np.ix_(rows, rows)], y[rows, k]
            c = self.c or _choose_c(sub, yk, self.epsilon, seed)
            model = SVR(kernel="precomputed", C=c, epsilon=self.epsilon).fit(sub, yk)
            heads.append({"rows": rows[model.support_], "dual": model.dual_coef_[0],
                          "intercept": float(model.intercept_[0]), "C": c})  # fmt: skip
        return heads

    def _fit_classes(self, kernel: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> list[dict[str, Any]]:
        """Two classes: one SVC for class 1; more: one-vs-rest SVCs. Each head's C minimises the
        log-loss of Platt-scaled out-of-fold decision values; Platt's a, b come from those."""
        from sklearn.svm import SVC

        counts = np.bincount(y, minlength=n_classes)
        classes = [1] if n_classes == 2 else list(range(n_classes))
        heads = []
        for cls in classes:
            positive = (y == cls).astype(np.int64)
            if min(positive.sum(), len(y) - positive.sum()) < 2:
                raise ValueError(f"class {cls} has {counts[cls]} of {len(y)} training rows; the svm needs "
                                 "at least 2 in and 2 out of each class")  # fmt: skip
            best = None
            for c in (self.c,) if self.c else C_GRID:
                a, b, loss = _platt(_oof_decisions(kernel, positive, c, seed), positive)
                if best is None or loss < best[0]:
                    best = (loss, c, a, b)
            _, c, a, b = best
            model = SVC(kernel="precomputed", C=c).fit(kernel, positive)
            dual, intercept = model.dual_coef_[0], float(model.intercept_[0])
            if model.classes_[1] != 1:  # decision > 0 must mean the positive class
                dual, intercept = -dual, -intercept
            heads.append({"rows": model.support_, "dual": dual, "intercept": intercept, "C": c, "a": a, "b": b})
        return heads


def svm(
    feature_dim: Features = 0,
    out_dim: OutDim = 1,
    fingerprint_dim: Features = 0,
    kernel: str = "minmax",
    C: Annotated[float, Between(0.0, 1e6)] = 0.0,  # noqa: N803 (the name every SVM text uses)
    epsilon: Annotated[float, Between(0.0, 10.0)] = 0.1,
) -> nn.Module:
    """Kernel SVM on Morgan fingerprints (see `KernelSVM`): kernel "minmax" (counts) or
    "tanimoto" (bits); C = 0 chooses C by 5-fold cross-validation; epsilon is the SVR's
    insensitive zone, in standardised target units."""
    return KernelSVM(feature_dim, out_dim, fingerprint_dim, kernel, C, epsilon)
