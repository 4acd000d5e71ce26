"""Adversarial debiasing (Zhang, Lemoine & Mitchell 2018; Ganin et al. 2016's gradient reversal).

An adversary head reads the model's representation, the input of its last `nn.Linear` (found by a
forward pre-hook: no model needs to know), and predicts the sample's group. It sits behind a
gradient reversal layer: the adversary learns to predict the group, while the encoder receives
minus `weight` times that gradient and so learns a representation the group cannot be read from.
Nothing here knows the modality or the task.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class GradReverse(torch.autograd.Function):
    """Identity forward; the gradient times `-scale` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """`x` unchanged, its gradient reversed and scaled by `scale` (lambda)."""
    return GradReverse.apply(x, scale)


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The model's last `nn.Linear` in registration order (the output layer of the usual heads)."""
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            found = module
    return found


class Adversary(nn.Module):
    """The group predictor: representation -> (reversed gradient) -> hidden -> group logits.

    `attach(model)` hooks the model's last Linear; after a forward pass, `loss(groups)` is the
    adversary's cross-entropy on that batch's representation, and `correct`/`seen` count its hits."""

    def __init__(self, in_features: int, n_groups: int, hidden: int, weight: float):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, n_groups))
        self.weight = float(weight)
        self.representation: torch.Tensor | None = None
        self.correct = self.seen = 0

    def attach(self, model: nn.Module) -> None:
        """Keep the input of the model's last Linear at every forward pass (training mode only)."""
        layer = last_linear(model)
        if layer is None:  # checked by the caller too; kept for direct use
            raise ValueError("the model has no nn.Linear layer to read a representation from")

        def keep(module: nn.Module, args: tuple[Any, ...]) -> None:
            self.representation = args[0] if module.training else None

        layer.register_forward_pre_hook(keep)

    def loss(self, groups: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the adversary on the last training batch (gradient reversed into the model)."""
        rep = self.representation
        if rep is None:
            raise RuntimeError("the adversary saw no representation: the model's last Linear did not run")
        logits = self.head(grad_reverse(rep.flatten(1).float(), self.weight))
        with torch.no_grad():
            self.correct += int((logits.argmax(1) == groups).sum())
            self.seen += len(groups)
        self.representation = None
        return nn.functional.cross_entropy(logits, groups)

    def accuracy(self, reset: bool = True) -> float:
        """Its accuracy on the training batches since the last reset."""
        value = self.correct / self.seen if self.seen else float("nan")
        if reset:
            self.correct = self.seen = 0
        return value


def representations(trainer: Any, data: Any) -> np.ndarray:
    """The input of the model's last Linear for every sample of `data`, in order (eval mode)."""
    kept: list[torch.Tensor] = []
    layer = last_linear(trainer.model)
    handle = layer.register_forward_pre_hook(lambda m, args: kept.append(args[0].detach().float().flatten(1).cpu()))
    try:
        trainer.predict(data)
    finally:
        handle.remove()
    return torch.cat(kept).numpy()


def probe(trainer: Any, train_groups: np.ndarray, val_groups: np.ndarray) -> dict[str, float] | None:
    """A fresh linear probe of the group on the final representation: fitted on the training split,
    scored on validation. Stricter than the adversary's own accuracy, which the encoder was trained
    to defeat; None when either split lacks two groups."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = val_groups >= 0  # validation groups absent from training are left out
    if len(np.unique(train_groups)) < 2 or len(np.unique(val_groups[keep])) < 2:
        return None
    x_train = representations(trainer, trainer.train_data)
    x_val = representations(trainer, trainer.val_data)[keep]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, train_groups)
    shares = np.bincount(val_groups[keep]) / keep.sum()
    return {"accuracy": round(float(model.score(x_val, val_groups[keep])), 4), "chance": round(float(shares.max()), 4)}
