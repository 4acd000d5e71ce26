"""Helpers shared by every modality's explanations (each modality explains its own inputs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from biomx.errors import BiomxError


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the model in eval mode, then restore every submodule's own training flag."""
    was_training = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        # Per module, not model.train(flag): frozen eval-mode parts must stay that way.
        for module, training in was_training.items():
            module.training = training


def output_column(outputs: torch.Tensor, target: int, n: int, items: str) -> torch.Tensor:
    """Column `target` of a model's (n, K) outputs as float; BiomxError for a bad shape or target.

    `items` names what the n rows are ("sequences", "molecules") in the message.
    """
    if outputs.dim() != 2 or outputs.shape[0] != n:
        raise BiomxError(f"the model must return (N, K) outputs, got shape {tuple(outputs.shape)} "
                         f"for {n} {items}")  # fmt: skip
    k = outputs.shape[1]
    if not 0 <= target < k:
        hint = "; a binary model has only 0" if k == 1 else ""
        raise BiomxError(f"target {target} is out of range for a model with {k} outputs "
                         f"(valid: 0..{k - 1}{hint})")  # fmt: skip
    return outputs[:, target].float()


__all__ = ["eval_mode", "output_column"]
